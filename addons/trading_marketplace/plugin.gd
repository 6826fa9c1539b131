@tool
extends EditorPlugin
## The classes come from the GDExtension and register themselves. Enabling
## the plugin adds one project setting, `trading_marketplace/server_url`,
## the default of every TradingMarketplace's `server_url` (add
## `server_url.debug` / `server_url.release` overrides with the settings
## dialog's feature tags). Disabling it leaves the setting: it is the
## project's configuration, not the plugin's.

const SERVER_URL := "trading_marketplace/server_url"
const DEFAULT_URL := "http://127.0.0.1:8080"


func _enable_plugin() -> void:
	if not ProjectSettings.has_setting(SERVER_URL):
		ProjectSettings.set_setting(SERVER_URL, DEFAULT_URL)
		ProjectSettings.save()
	_describe_setting()


func _enter_tree() -> void:
	_describe_setting()
	print_verbose("Trading Marketplace: add a LocalPlayerData and a TradingMarketplace node, then set player_data.")


func _exit_tree() -> void:
	pass


## How the setting shows in Project Settings (not saved in project.godot).
func _describe_setting() -> void:
	if not ProjectSettings.has_setting(SERVER_URL):
		return
	ProjectSettings.set_initial_value(SERVER_URL, DEFAULT_URL)
	ProjectSettings.set_as_basic(SERVER_URL, true)
	ProjectSettings.add_property_info({
		"name": SERVER_URL,
		"type": TYPE_STRING,
		"hint": PROPERTY_HINT_NONE,
		"hint_string": "http(s):// address of the marketplace server",
	})
