extends Node
## The game's market, as an autoload (Project Settings → Autoload → "Market").
##
## The recommended set-up: the player's save (LocalPlayerData) and the
## marketplace (TradingMarketplace) live here for the whole game, so a trade
## started in the shop settles even if the player leaves the shop scene, and
## every scene reads the same credits and cargo. Scenes use
## `Market.data` and `Market.market`; none of them owns a marketplace node.

@onready var data: LocalPlayerData = $PlayerData
@onready var market: TradingMarketplace = $Marketplace


func _enter_tree() -> void:
	# Every error code's message, in English and German (tr("ERR_<CODE>")).
	preload("res://addons/trading_marketplace/translations/messages.gd").install()


func _ready() -> void:
	# A server address from the environment wins (the demo server may be on
	# another port); otherwise the project's `trading_marketplace/server_url`
	# (its `.debug` override when run from the editor).
	var url := OS.get_environment("MARKET_SERVER_URL")
	if url != "":
		market.server_url = url
	# The player's language is the system's; MARKET_DEMO_LOCALE=de shows
	# the German messages that ship with the addon.
	var locale := OS.get_environment("MARKET_DEMO_LOCALE")
	if locale != "":
		TranslationServer.set_locale(locale)
	# A second pilot on the same machine (two windows side by side).
	var save := OS.get_environment("MARKET_DEMO_SAVE")
	if save != "":
		var refused := data.change_save_path(save)
		if refused != "":
			push_error("MARKET_DEMO_SAVE: " + refused)


## What to tell the player about a result: the translation of its code
## (`ERR_<CODE>` in the addon's translations; English and German ship
## with it, add a locale by adding a Translation with the same keys).
func message_for(result: MarketResult) -> String:
	return tr("ERR_" + result.code.to_upper()) if not result.ok else ""


## Calls `callback(result)` once `request` completes — unless the object
## the callback belongs to was freed meanwhile (a shop scene the player
## closed). The wait lives here, in the autoload, which outlives every
## scene: a scene never awaits, and its trade settles all the same.
func on_done(request: MarketRequest, callback: Callable) -> void:
	var result: MarketResult = request.result if request.done else await request.completed
	if callback.is_valid():
		callback.call(result)
