@tool
extends EditorPlugin
## The classes come from the GDExtension and register themselves. Enabling
## the plugin sets the project up:
## - the autoload `Market` (`autoload/market.tscn`: a LocalPlayerData and a
##   TradingMarketplace that live for the whole game), unless the project
##   already has an autoload of that name;
## - the project setting `trading_marketplace/server_url`, the default of
##   every TradingMarketplace's `server_url` (add `server_url.debug` /
##   `server_url.release` overrides with the settings dialog's feature tags),
##   and the node's other defaults under `trading_marketplace/` (shown in
##   Project Settings with advanced settings on; saved only once changed);
## The autoload installs the addon's translations of every error code
## (`ERR_<CODE>`, English and German; see `translations/messages.gd`).
## Disabling it removes the autoload it added; the server address stays: it
## is the project's configuration, not the plugin's.

const SERVER_URL := "trading_marketplace/server_url"
const DEFAULT_URL := "http://127.0.0.1:8080"
## The node's defaults a project may set: name → [default, range hint].
const NODE_DEFAULTS := {
	"max_concurrent_requests": [16, "1,1024,1"],
	"request_timeout_sec": [10.0, "0.1,600,0.1"],
	"max_requests_per_second": [20.0, "0,1000,0.5,or_greater"],
	"max_events_per_frame": [64, "1,10000,1"],
	"max_frame_time_msec": [1.0, "0.1,100,0.1"],
	"shutdown_grace_sec": [1.0, "0,30,0.1"],
	"stall_after_sec": [60.0, "1,86400,1,or_greater"],
	"live": [true, ""],
}
const AUTOLOAD := "Market"
const AUTOLOAD_SCENE := "res://addons/trading_marketplace/autoload/market.tscn"


func _enable_plugin() -> void:
	if not ProjectSettings.has_setting(SERVER_URL):
		ProjectSettings.set_setting(SERVER_URL, DEFAULT_URL)
	_describe_setting()
	if ProjectSettings.has_setting("autoload/" + AUTOLOAD):
		print("Trading Marketplace: the project already has an autoload named %s; left as it is." % AUTOLOAD)
	else:
		add_autoload_singleton(AUTOLOAD, AUTOLOAD_SCENE)
	ProjectSettings.save()


func _disable_plugin() -> void:
	# Only the autoload this plugin added (same scene), never the game's own.
	if str(ProjectSettings.get_setting("autoload/" + AUTOLOAD, "")).trim_prefix("*") == AUTOLOAD_SCENE:
		remove_autoload_singleton(AUTOLOAD)
	ProjectSettings.save()


func _enter_tree() -> void:
	_describe_setting()


## How the settings show in Project Settings. The node defaults exist with
## their initial values, which project.godot does not store: a project
## saves only what it changes.
func _describe_setting() -> void:
	for name in NODE_DEFAULTS:
		var key: String = "trading_marketplace/" + name
		var default = NODE_DEFAULTS[name][0]
		if not ProjectSettings.has_setting(key):
			ProjectSettings.set_setting(key, default)
		ProjectSettings.set_initial_value(key, default)
		ProjectSettings.add_property_info({
			"name": key,
			"type": typeof(default),
			"hint": PROPERTY_HINT_RANGE if NODE_DEFAULTS[name][1] != "" else PROPERTY_HINT_NONE,
			"hint_string": NODE_DEFAULTS[name][1],
		})
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
