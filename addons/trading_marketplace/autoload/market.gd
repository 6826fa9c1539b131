extends Node
## The game's market, as an autoload named `Market` (enabling the plugin
## adds it; disabling the plugin removes it).
##
## The player's save (LocalPlayerData) and the marketplace
## (TradingMarketplace) live here for the whole game: a trade started in a
## shop settles even when the player leaves the shop scene, and every scene
## reads the same credits and cargo through `Market.data` and
## `Market.market`. Await requests here, or in scenes with
## `give_up_after()`; a scene that connects signals never waits on a freed
## node.

## The player's credits, items and trade journal.
@onready var data: LocalPlayerData = $PlayerData
## The marketplace.
@onready var market: TradingMarketplace = $Marketplace


const Messages := preload("res://addons/trading_marketplace/translations/messages.gd")


func _enter_tree() -> void:
	# Every error code's message, in English and German (tr("ERR_<CODE>")).
	Messages.install()


## What to tell the player about a failed result: the translation of its
## code (`ERR_<CODE>`; English and German ship with the addon). `""` when ok.
func message_for(result: MarketResult) -> String:
	return "" if result.ok else tr(Messages.key_for(result.code))


## Calls `callback(result)` once `request` completes — unless the object
## the callback belongs to was freed meanwhile (a shop scene the player
## closed). The wait lives here, in the autoload, which outlives every
## scene: a scene never awaits, and its trade settles all the same.
func on_done(request: MarketRequest, callback: Callable) -> void:
	var result: MarketResult = request.result if request.done else await request.completed
	if callback.is_valid():
		callback.call(result)
