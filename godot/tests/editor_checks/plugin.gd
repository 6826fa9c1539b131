@tool
extends EditorPlugin
## The addon's editor-side checks, in a real (headless) Godot editor:
## enabling the plugin adds the `Market` autoload and the server setting,
## disabling it removes the autoload and keeps the setting, a game's own
## `Market` autoload is never touched, and the nodes warn in the editor
## without opening a file. Run by `tests/tests/it/godot_editor.rs`, which
## copies this folder to `addons/editor_checks/` and enables it alone.
## Prints one line per check and "EDITOR CHECKS PASSED"; quits 0 or 1.

const ADDON := "trading_marketplace"
const AUTOLOAD := "autoload/Market"
const SCENE := "*res://addons/trading_marketplace/autoload/market.tscn"

var checks := 0
var failures := 0


func check(condition: bool, what: String) -> void:
	checks += 1
	if condition:
		print("  ok    ", what)
	else:
		failures += 1
		printerr("  FAIL  ", what)


func _enter_tree() -> void:
	_run.call_deferred()


func _on_disk() -> String:
	return FileAccess.get_file_as_string("res://project.godot")


func _run() -> void:
	# Let the editor finish starting (its first file scan).
	for i in 10:
		await get_tree().process_frame
	check(not EditorInterface.is_plugin_enabled(ADDON) and not ProjectSettings.has_setting(AUTOLOAD), "the project starts without the addon's plugin or autoload")

	EditorInterface.set_plugin_enabled(ADDON, true)
	check(EditorInterface.is_plugin_enabled(ADDON), "the plugin enables")
	check(ProjectSettings.get_setting(AUTOLOAD, "") == SCENE, "enabling it adds the Market autoload (%s)" % ProjectSettings.get_setting(AUTOLOAD, ""))
	check(_on_disk().contains('Market="%s"' % SCENE), "saved in project.godot")
	check(ProjectSettings.has_setting("trading_marketplace/server_url"), "and the server_url setting")
	check(ProjectSettings.has_setting("trading_marketplace/request_timeout_sec") and ProjectSettings.get_setting("trading_marketplace/request_timeout_sec") == 10.0, "the node's defaults show in Project Settings")
	check(not _on_disk().contains("request_timeout_sec"), "and are not written to project.godot until changed")

	EditorInterface.set_plugin_enabled(ADDON, false)
	check(not ProjectSettings.has_setting(AUTOLOAD), "disabling it removes the autoload")
	check(not _on_disk().contains('Market="%s"' % SCENE), "from project.godot too")
	check(ProjectSettings.has_setting("trading_marketplace/server_url"), "the server address stays (the project's configuration)")

	# A game's own autoload named Market is left alone both ways.
	ProjectSettings.set_setting(AUTOLOAD, "*res://tests/slot_parent.gd")
	ProjectSettings.save()
	EditorInterface.set_plugin_enabled(ADDON, true)
	check(ProjectSettings.get_setting(AUTOLOAD, "") == "*res://tests/slot_parent.gd", "a game's own Market autoload is not replaced")
	EditorInterface.set_plugin_enabled(ADDON, false)
	check(ProjectSettings.get_setting(AUTOLOAD, "") == "*res://tests/slot_parent.gd", "nor removed")
	ProjectSettings.set_setting(AUTOLOAD, null)
	ProjectSettings.save()

	# The nodes in the editor: warnings, and no file opened.
	var data := LocalPlayerData.new()
	data.save_path = "res://save.json"
	check(data.save_path == "res://save.json", "the editor keeps a save_path it warns about")
	check(data.get_setup_warnings().size() == 1 and data.get_setup_warnings()[0].contains("read-only"), "LocalPlayerData warns about a res:// save_path (%s)" % data.get_setup_warnings())
	check(not data.is_loaded() and data.add_credits(5) == "save_unavailable", "and opens no file in the editor")
	var market := TradingMarketplace.new()
	add_child(market)
	check(market.get_setup_warnings().size() == 1, "TradingMarketplace warns while player_data is empty")
	var refused: MarketResult = await market.refresh_listings({}).completed
	check(not refused.ok and refused.code == "invalid_argument", "and trades nothing in the editor")
	market.queue_free()  # not free(): this coroutine resumed inside its frame
	data.free()

	print("%d editor checks, %d failed" % [checks, failures])
	if failures == 0:
		print("EDITOR CHECKS PASSED")
	get_tree().quit(0 if failures == 0 else 1)
