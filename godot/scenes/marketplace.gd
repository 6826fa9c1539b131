extends Control
## Demo marketplace: browse and buy listings, sell salvage, claim proceeds.
##
## Start the server first (`cargo xtask demo` does, and keeps it running),
## then run this scene. MARKET_SERVER_URL overrides the server address.

const SALVAGE := ["plasma_cutter", "shield_cell", "warp_coil", "scrap_metal", "nav_chip"]

@onready var data: LocalPlayerData = $LocalPlayerData
@onready var market: TradingMarketplace = $TradingMarketplace

var listings_box: VBoxContainer
var inventory_box: VBoxContainer
var credits_label: Label
var status_label: Label
var message_label: Label
var buy_buttons := {}  # listing id -> Button


func _ready() -> void:
	var env := OS.get_environment("MARKET_SERVER_URL")
	if env != "":
		market.server_url = env
	build_ui()
	data.credits_changed.connect(_on_credits_changed)
	data.inventory_changed.connect(func(_item, _count): show_inventory())
	data.save_failed.connect(func(message): say("Could not save: " + message))
	data.recovered_from_backup.connect(func(message): say("Save file damaged; loaded the previous save. " + message))
	market.logged_in.connect(_on_logged_in)
	market.listings_updated.connect(_on_listings_updated)
	market.listing_created.connect(func(_id, listing): say("Listed %s for %d" % [listing["item_id"], listing["price"]]); refresh())
	market.listing_cancelled.connect(func(_id, _listing_id): say("Listing cancelled; items are back"); refresh())
	market.purchase_succeeded.connect(_on_purchase_succeeded)
	market.purchase_failed.connect(_on_purchase_failed)
	market.proceeds_claimed.connect(func(_id, amount): say("Claimed %d credits" % amount) if amount > 0 else say("No proceeds to claim"))
	market.request_failed.connect(func(_id, code, message): say("%s (%s)" % [message, code]))
	market.request_retrying.connect(func(_id, attempt, reason): status_label.text = "Retrying (%s, attempt %d)…" % [reason, attempt])
	market.busy_changed.connect(func(busy): status_label.text = "Working…" if busy else "Idle")
	if data.get_credits() == 0 and data.get_held_credits() == 0 and data.get_inventory().is_empty():
		data.add_credits(1000)  # a new pilot's starting money
	_on_credits_changed(data.get_credits(), data.get_held_credits())
	show_inventory()
	market.login("", "")
	say("Connecting to %s…" % market.server_url)


func build_ui() -> void:
	var root := HBoxContainer.new()
	root.set_anchors_and_offsets_preset(Control.PRESET_FULL_RECT)
	root.add_theme_constant_override("separation", 24)
	add_child(root)
	var left := VBoxContainer.new()
	left.size_flags_horizontal = Control.SIZE_EXPAND_FILL
	root.add_child(left)
	var title := Label.new()
	title.text = "Marketplace"
	left.add_child(title)
	var refresh_button := Button.new()
	refresh_button.text = "Refresh"
	refresh_button.pressed.connect(refresh)
	left.add_child(refresh_button)
	var scroll := ScrollContainer.new()
	scroll.size_flags_vertical = Control.SIZE_EXPAND_FILL
	left.add_child(scroll)
	listings_box = VBoxContainer.new()
	listings_box.size_flags_horizontal = Control.SIZE_EXPAND_FILL
	scroll.add_child(listings_box)

	var right := VBoxContainer.new()
	right.custom_minimum_size = Vector2(360, 0)
	root.add_child(right)
	credits_label = Label.new()
	right.add_child(credits_label)
	status_label = Label.new()
	status_label.text = "Idle"
	right.add_child(status_label)
	message_label = Label.new()
	message_label.autowrap_mode = TextServer.AUTOWRAP_WORD
	right.add_child(message_label)
	for spec in [["Salvage an item", _on_salvage], ["Sell first item for 100", _on_sell], ["Claim proceeds", func(): market.claim_proceeds()]]:
		var b := Button.new()
		b.text = spec[0]
		b.pressed.connect(spec[1])
		right.add_child(b)
	var inv_title := Label.new()
	inv_title.text = "Inventory"
	right.add_child(inv_title)
	inventory_box = VBoxContainer.new()
	right.add_child(inventory_box)


func say(text: String) -> void:
	message_label.text = text
	print(text)


func refresh() -> void:
	market.refresh_listings({})


func _on_logged_in(player_id: int) -> void:
	say("Logged in as %s (player %d)" % [data.get_player_name(), player_id])
	refresh()


func _on_credits_changed(available: int, held: int) -> void:
	credits_label.text = "Credits: %d available + %d held" % [available, held]


func show_inventory() -> void:
	for child in inventory_box.get_children():
		child.queue_free()
	var inventory := data.get_inventory()
	for item in inventory:
		var row := Label.new()
		row.text = "%s × %d" % [item, inventory[item]]
		inventory_box.add_child(row)


func _on_listings_updated(listings: Array) -> void:
	for child in listings_box.get_children():
		child.queue_free()
	buy_buttons.clear()
	if listings.is_empty():
		var empty := Label.new()
		empty.text = "No listings yet — salvage something and sell it."
		listings_box.add_child(empty)
	for listing in listings:
		var row := HBoxContainer.new()
		var label := Label.new()
		label.text = "%s × %d — %d credits (seller %d)" % [listing["item_id"], listing["quantity"], listing["price"], listing["seller_id"]]
		label.size_flags_horizontal = Control.SIZE_EXPAND_FILL
		row.add_child(label)
		var buy := Button.new()
		buy.text = "Buy"
		buy.disabled = market.is_purchase_pending(listing["id"]) or listing["seller_id"] == data.get_player_id()
		buy.pressed.connect(_on_buy.bind(listing["id"], listing["price"]))
		row.add_child(buy)
		buy_buttons[listing["id"]] = buy
		listings_box.add_child(row)


func _on_buy(listing_id: int, price: int) -> void:
	# The credits are held at once; the button stays disabled until the answer.
	var button: Button = buy_buttons.get(listing_id)
	if button:
		button.disabled = true
	market.buy_listing(listing_id, price)


func _on_purchase_succeeded(_id: int, purchase: Dictionary) -> void:
	say("Bought %s for %d credits" % [purchase["item_id"], purchase["price"]])
	refresh()


func _on_purchase_failed(_id: int, listing_id: int, code: String, message: String) -> void:
	match code:
		"already_sold":
			say("Item sold to another player — refresh and try again")
		"price_changed":
			say(message + " — refresh to see the new price")
		_:
			say("%s (%s)" % [message, code])
	var button: Button = buy_buttons.get(listing_id)
	if button:
		button.disabled = false
	refresh()


func _on_salvage() -> void:
	var item: String = SALVAGE[randi() % SALVAGE.size()]
	data.add_item(item, 1)
	say("Salvaged a " + item)


func _on_sell() -> void:
	var inventory := data.get_inventory()
	if inventory.is_empty():
		say("Nothing to sell — salvage something first")
		return
	market.create_listing(inventory.keys()[0], 1, 100)
