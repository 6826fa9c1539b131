@tool
extends EditorPlugin
## The classes come from the GDExtension and register themselves; the plugin
## only tells the user where to start. It adds nothing to the project, so
## there is nothing to remove when it is disabled.


func _enter_tree() -> void:
	print_verbose("Trading Marketplace: add a LocalPlayerData and a TradingMarketplace node, then set player_data.")


func _exit_tree() -> void:
	pass
