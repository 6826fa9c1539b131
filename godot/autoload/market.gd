extends "res://addons/trading_marketplace/autoload/market.gd"
## The demo's `Market` autoload: the addon's (`data`, `market`, `on_done`,
## `message_for`, the translations), set up from the environment for the
## demo server and a second pilot.


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
