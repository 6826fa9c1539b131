extends Node
## A parent that picks its save slot in its own `_ready`, the way a game
## does, and connects to the data node's load signals there.

var slot_path := ""
var recovered: Array = []
var load_failures: Array = []


func _ready() -> void:
	var data: LocalPlayerData = $Data
	data.save_path = slot_path
	data.recovered_from_backup.connect(func(message): recovered.append(message))
	data.load_failed.connect(func(message): load_failures.append(message))
