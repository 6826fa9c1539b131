extends Control
## The shop: a client of the `Market` autoload (autoload/market.tscn).
##
## Browse what other pilots sell, buy (the price is held at once and the
## Buy button shows the purchase pending until the server answers), sell
## from the cargo hold (the fee the market keeps is quoted as you set the
## price), collect sales proceeds, place buy orders ("10 fuel rods at up to
## 25 cr each") that fill while you are away, and collect what they bought.
## The market is live: a listing another pilot buys leaves the list at
## once, a repriced one changes in place, the selected item's price chart
## follows its trades, and what happened while you were away is told once
## after login ("While you were away"). Credits only come in through
## explicit, labelled game actions ("mission reward") and sales — never
## because the player is broke.
##
## Start the server first (`cargo xtask demo` does, and keeps it running),
## then run this scene. MARKET_SERVER_URL overrides the server address;
## MARKET_DEMO_SAVE another save file, for a second pilot side by side
## (`MARKET_DEMO_SAVE=user://second.json godot --path godot`): buy in one
## window and watch the row leave the other.

## Display names and colours of the game's items.
const ITEMS := {
	"plasma_cutter": ["Plasma Cutter", Color("#ff8a65")],
	"shield_cell": ["Shield Cell", Color("#4fc3f7")],
	"warp_coil": ["Warp Coil", Color("#b39ddb")],
	"scrap_metal": ["Scrap Metal", Color("#90a4ae")],
	"nav_chip": ["Nav Chip", Color("#81c784")],
	"fuel_rod": ["Fuel Rod", Color("#ffd54f")],
}
const SALVAGE := ["scrap_metal", "nav_chip", "shield_cell", "fuel_rod"]
const MISSION_REWARD := 250
## Listings per page ("More" asks for the next).
const PAGE_SIZE := 12

const ROW := Color("#1b2231")
const TEXT := Color("#e6e9ef")
const MUTED := Color("#8b95a7")
const HOLD := Color("#ffb74d")
const GOOD := Color("#81c784")

var data: LocalPlayerData
var market: TradingMarketplace

# The layout is the scene (shop.tscn, styled by shop_theme.tres): a designer
# edits it in the editor; this script fills it in.
@onready var credits_label: Label = %Credits
@onready var held_label: Label = %Held
@onready var status_label: Label = %Status
@onready var message_label: Label = %Message
@onready var notice: PanelContainer = %Notice
@onready var notice_label: Label = %NoticeLabel
@onready var listings_box: VBoxContainer = %Listings
@onready var more_button: Button = %More
@onready var cargo_box: VBoxContainer = %Cargo
@onready var orders_box: VBoxContainer = %Orders
@onready var order_item: OptionButton = %OrderItem
@onready var order_quantity: SpinBox = %OrderQuantity
@onready var order_price: SpinBox = %OrderPrice
@onready var fee_label: Label = %Fees
@onready var live_label: Label = %Live
@onready var away_panel: PanelContainer = %AwayPanel
@onready var away_box: VBoxContainer = %AwayBox
@onready var chart: Control = %Chart
## The cursor of the next page ("": the last page is shown).
var next_cursor := ""
## The item the chart shows ("" : none yet).
var chart_item := ""
## What is on screen, by listing id: kept up to date by the live market.
var shown := {}
## The latest refresh: an older page arriving late is dropped.
var latest_page := -1


func _ready() -> void:
	data = Market.data
	market = Market.market
	_wire_up()
	data.credits_changed.connect(func(_available, _held): show_credits())
	data.inventory_changed.connect(func(_item, _count): show_cargo())
	data.save_failed.connect(func(message): say("Could not save the game: " + message, HOLD))
	data.recovered_from_backup.connect(func(_message): say("The save was damaged; the previous one was loaded.", HOLD))
	market.request_retrying.connect(func(_id, _attempt, reason): status_label.text = "Connection trouble (%s) — retrying" % reason.replace("_", " "))
	market.trade_stalled.connect(func(_id, _trade): show_notice())
	market.busy_changed.connect(func(busy): if not busy: show_notice())
	# The live market: hints for the screen (a purchase still settles only
	# on its own answer).
	market.market_listing_changed.connect(_on_listing_changed)
	market.market_reload_needed.connect(refresh)
	market.market_live_changed.connect(_on_live_changed)
	market.market_trade.connect(func(item_id, _q, _p): if item_id == chart_item: show_chart(item_id))
	market.notification_received.connect(_on_notification)
	market.deliveries_waiting.connect(func(count): away_line(0, "%d deliver%s waiting — collected for you" % [count, "y" if count == 1 else "ies"]))
	show_credits()
	show_cargo()
	show_notice()
	status_label.text = "Connecting to %s …" % market.server_url
	# No `await` in this scene: the autoload waits (Market.on_done) and
	# calls back only while this scene still exists — leaving the shop
	# mid-trade is safe, and the trade settles all the same.
	Market.on_done(market.login(), _on_logged_in)


func _on_logged_in(login: MarketResult) -> void:
	if not login.ok:
		status_label.text = "Offline — %s" % Market.message_for(login)
		return
	status_label.text = "Online as %s" % login.player_name
	# While you were away: what buy orders bought, what expired listings
	# brought back — into the save, once.
	collect_deliveries(true, func() -> void:
		refresh(func() -> void:
			show_chart("scrap_metal")
			show_orders()
			if OS.get_environment("MARKET_DEMO_SHOWCASE") == "1":
				showcase()))


# --- The scene's controls ----------------------------------------------------

## Connects the scene's buttons and fills what comes from the game's data.
func _wire_up() -> void:
	%Refresh.pressed.connect(refresh)
	more_button.pressed.connect(more)
	%CollectProceeds.pressed.connect(_on_collect.bind(%CollectProceeds))
	%PlaceOrder.pressed.connect(_on_place_order.bind(%PlaceOrder))
	%CollectDeliveries.pressed.connect(func(): collect_deliveries(false))
	%Mission.text = "Mission reward: courier run  +%d cr" % MISSION_REWARD
	%Mission.pressed.connect(_on_mission_reward)
	%Salvage.pressed.connect(_on_salvage)
	order_item.clear()
	for item_id in ITEMS:
		order_item.add_item(item_name(item_id))
		order_item.set_item_metadata(order_item.item_count - 1, item_id)


func label(text: String, size := 15, color := TEXT) -> Label:
	var l := Label.new()
	l.text = text
	l.add_theme_font_size_override("font_size", size)
	l.add_theme_color_override("font_color", color)
	return l


## A row of fixed-width columns: item (wide), seller, price (right), action.
func columns(cells: Array, color: Color, size: int) -> HBoxContainer:
	var row := HBoxContainer.new()
	row.add_theme_constant_override("separation", 12)
	var widths := [0, 150, 90, 110]
	for i in cells.size():
		var cell = cells[i]
		if cell is String:
			cell = label(cell, size, color)
		if widths[i] == 0:
			cell.size_flags_horizontal = Control.SIZE_EXPAND_FILL
		else:
			cell.custom_minimum_size.x = widths[i]
		if i == 2 and cell is Label:
			cell.horizontal_alignment = HORIZONTAL_ALIGNMENT_RIGHT
		row.add_child(cell)
	return row


# --- What is on screen ------------------------------------------------------

func item_name(item_id: String) -> String:
	return ITEMS[item_id][0] if ITEMS.has(item_id) else item_id.capitalize()


func item_colour(item_id: String) -> Color:
	return ITEMS[item_id][1] if ITEMS.has(item_id) else MUTED


func cr(amount: int) -> String:
	var digits := str(abs(amount))
	var out := ""
	while digits.length() > 3:
		out = "," + digits.right(3) + out
		digits = digits.left(digits.length() - 3)
	return ("-" if amount < 0 else "") + digits + out + " cr"


func say(text: String, color := TEXT) -> void:
	message_label.text = text
	message_label.add_theme_color_override("font_color", color)
	print(text)


func show_credits() -> void:
	credits_label.text = cr(data.get_credits())
	var held: int = data.get_held_credits()
	held_label.text = "%s on hold for purchases in progress" % cr(held) if held > 0 else "nothing on hold"
	held_label.add_theme_color_override("font_color", HOLD if held > 0 else MUTED)


func show_notice() -> void:
	var stalled: Array = market.get_pending_trades().filter(func(t): return t.attempts > 0)
	notice.visible = not stalled.is_empty()
	if notice.visible:
		notice_label.text = "%d trade(s) waiting for the market's answer — retrying. Your credits and items are held, not lost; they settle when the connection is back." % stalled.size()


func show_cargo() -> void:
	for child in cargo_box.get_children():
		child.queue_free()
	var inventory: Dictionary = data.get_inventory()
	if inventory.is_empty():
		cargo_box.add_child(label("Empty hold. Salvage or buy something.", 14, MUTED))
	for item_id in inventory:
		var row := HBoxContainer.new()
		row.add_theme_constant_override("separation", 8)
		row.add_child(swatch(item_id))
		var name_label := label("%s  ×%d" % [item_name(item_id), inventory[item_id]])
		name_label.size_flags_horizontal = Control.SIZE_EXPAND_FILL
		row.add_child(name_label)
		var price := SpinBox.new()
		price.min_value = 1
		price.max_value = 100000
		price.value = 100
		price.suffix = "cr"
		price.custom_minimum_size.x = 96
		price.value_changed.connect(func(value): quote(int(value)))
		row.add_child(price)
		var sell := Button.new()
		sell.text = "Sell 1"
		sell.pressed.connect(_on_sell.bind(item_id, price, sell))
		row.add_child(sell)
		cargo_box.add_child(row)


func swatch(item_id: String) -> ColorRect:
	var s := ColorRect.new()
	s.color = item_colour(item_id)
	s.custom_minimum_size = Vector2(10, 10)
	s.size_flags_vertical = Control.SIZE_SHRINK_CENTER
	return s


## The first page of the market again; `then` runs once it is shown.
func refresh(then := Callable()) -> void:
	_load_page("", then)


## The next page, added below what is shown.
func more() -> void:
	if next_cursor != "":
		_load_page(next_cursor, Callable())


func _load_page(cursor: String, then: Callable) -> void:
	var filter := {"limit": PAGE_SIZE}
	if cursor != "":
		filter.cursor = cursor
	var request: MarketRequest = market.refresh_listings(filter)
	latest_page = request.id
	Market.on_done(request, func(page: MarketResult) -> void:
		if page.request_id != latest_page:
			return  # a newer page is on its way
		if not page.ok:
			say("Could not load the market: " + Market.message_for(page), HOLD)
			return
		if cursor == "":
			shown.clear()
		for listing in page.listings:
			shown[listing.id] = listing
		next_cursor = page.next_cursor
		more_button.visible = page.has_next_page()
		show_listings(shown.values())
		if then.is_valid():
			then.call())


## A listing changed on the market (another pilot bought or repriced it,
## or a new one was listed): the list follows without a refresh.
func _on_listing_changed(change: String, listing: MarketListing) -> void:
	if listing.status != "active":
		if not shown.erase(listing.id):
			return
	elif shown.has(listing.id) or change == "created":
		shown[listing.id] = listing
	else:
		return
	show_listings(shown.values())


func _on_live_changed(live: bool, reason: String) -> void:
	# Plain words: the default font has no ● or ○ (the picture showed a box).
	live_label.text = "live" if live else "reconnecting (%s)" % reason.replace("_", " ")
	live_label.add_theme_color_override("font_color", GOOD if live else HOLD)


## One line of the "While you were away" panel per notification.
func _on_notification(n: MarketNotification) -> void:
	var what := item_name(n.item_id)
	# The same id again carries larger totals (more of it filled): its line
	# is replaced, not added to.
	match n.kind:
		"sold":
			away_line(n.id, "Sold %d %s for %s — collect your proceeds" % [n.quantity, what, cr(n.credits)])
		"order_filled":
			away_line(n.id, "Your buy order got %d %s for %s" % [n.quantity, what, cr(n.credits)])
			collect_deliveries(true)
		"listing_expired":
			away_line(n.id, "Your %s listing expired; %d back in deliveries" % [what, n.quantity])
			collect_deliveries(true)
		"order_expired":
			away_line(n.id, "Your buy order for %s expired; %s back" % [what, cr(n.credits)])
			collect_deliveries(true)
		_:
			away_line(n.id, "%s: %s" % [n.kind, what])


## Notification id → its line in the "While you were away" panel.
var away_lines := {}


func away_line(id: int, text: String) -> void:
	if away_lines.has(id) and is_instance_valid(away_lines[id]):
		away_lines[id].text = "• " + text
	else:
		away_lines[id] = label("• " + text, 14, TEXT)
		away_box.add_child(away_lines[id])
	away_panel.visible = true


## The price chart of `item_id`: its hourly candles.
func show_chart(item_id: String) -> void:
	chart_item = item_id
	Market.on_done(market.get_price_history(item_id, "hour"), func(result: MarketResult) -> void:
		if result.ok and item_id == chart_item and is_instance_valid(chart):
			chart.show_history(item_name(item_id), result.history.candles))


func show_listings(listings: Array) -> void:
	for child in listings_box.get_children():
		child.queue_free()
	if listings.is_empty():
		listings_box.add_child(label("Nothing for sale right now. Sell something from your cargo.", 14, MUTED))
	for listing in listings:
		var mine: bool = listing.seller_id == data.get_player_id()
		var item := HBoxContainer.new()
		item.add_theme_constant_override("separation", 8)
		item.add_child(swatch(listing.item_id))
		var name_button := LinkButton.new()
		name_button.text = item_name(listing.item_id)
		name_button.underline = LinkButton.UNDERLINE_MODE_ON_HOVER
		name_button.tooltip_text = "Show its price history"
		name_button.pressed.connect(show_chart.bind(listing.item_id))
		item.add_child(name_button)
		if listing.quantity_remaining > 1:
			item.add_child(label("×%d" % listing.quantity_remaining, 15, MUTED))
		var seller: String = "You" if mine else (listing.seller_name if listing.seller_name != "" else "Pilot #%d" % listing.seller_id)
		var action := Button.new()
		if mine:
			action.text = "Withdraw"
			action.pressed.connect(_on_withdraw.bind(listing, action))
		elif market.is_purchase_pending(listing.id):
			action.text = "Buying…"
			action.disabled = true
		else:
			action.text = "Buy"
			action.disabled = data.get_credits() < listing.price * listing.quantity_remaining
			action.tooltip_text = "Not enough credits" if action.disabled else ""
			action.pressed.connect(_on_buy.bind(listing, action))
		var price_text: String = cr(listing.price) + (" each" if listing.quantity_remaining > 1 else "")
		var row := columns([item, label(seller, 14, MUTED), label(price_text, 15, GOOD), action], TEXT, 15)
		var background := PanelContainer.new()
		var style := StyleBoxFlat.new()
		style.bg_color = ROW
		style.set_corner_radius_all(6)
		style.content_margin_left = 12
		style.content_margin_right = 8
		style.content_margin_top = 6
		style.content_margin_bottom = 6
		background.add_theme_stylebox_override("panel", style)
		background.add_child(row)
		listings_box.add_child(background)


# --- Actions ----------------------------------------------------------------

## A few moves for the README's screenshot (MARKET_DEMO_SHOWCASE=1): a
## mission reward, salvage, a listing, and a purchase left pending on screen.
func showcase() -> void:
	if data.get_credits() == 0:
		for i in 4:
			_on_mission_reward()
		data.add_item("scrap_metal", 2)
		data.add_item("nav_chip", 1)
	Market.on_done(market.create_listing("scrap_metal", 1, 30), func(listed: MarketResult) -> void:
		refresh(func() -> void:
			for row in listings_box.get_children():
				var buttons := row.find_children("*", "Button", true, false)
				if not buttons.is_empty() and buttons[0].text == "Buy":
					buttons[0].emit_signal("pressed")
					break
			say("Listed %s for %s" % [item_name("scrap_metal"), cr(30)] if listed.ok else Market.message_for(listed), GOOD)
			# A buy order on the panel, and what it bought collected.
			order_quantity.value = 3
			order_price.value = 40
			_on_place_order(Button.new(), func() -> void:
				collect_deliveries(false, func() -> void:
					quote(30, func() -> void:
						if OS.get_environment("MARKET_DEMO_QUIT") == "1":
							print("showcase done: ", message_label.text, " | ", fee_label.text)
							get_tree().quit())))))


func _on_buy(listing: MarketListing, button: Button) -> void:
	# The price is held at once; the button shows the purchase pending until
	# the server's definitive answer.
	button.disabled = true
	button.text = "Buying…"
	# All that remains of the lot, at the unit price shown.
	Market.on_done(market.buy_listing(listing.id, listing.price, listing.quantity_remaining), func(result: MarketResult) -> void:
		if result.ok:
			say("Bought %d %s for %s" % [result.purchase.quantity, item_name(listing.item_id), cr(result.purchase.price)], GOOD)
		elif result.code == "price_changed":
			say("%s (%s)" % [Market.message_for(result), cr(result.current_price)], HOLD)
		else:
			say(Market.message_for(result), HOLD)  # in the player's language
		refresh())


func _on_withdraw(listing: MarketListing, button: Button) -> void:
	button.disabled = true
	button.text = "Withdrawing…"
	Market.on_done(market.cancel_listing(listing.id), func(result: MarketResult) -> void:
		say("%s is back in your cargo" % item_name(listing.item_id) if result.ok else Market.message_for(result))
		refresh())


func _on_sell(item_id: String, price: SpinBox, button: Button) -> void:
	button.disabled = true
	Market.on_done(market.create_listing(item_id, 1, int(price.value)), func(result: MarketResult) -> void:
		if result.ok:
			say("Listed %s for %s" % [item_name(item_id), cr(int(price.value))], GOOD)
			refresh()
		else:
			say(Market.message_for(result), HOLD)
		if is_instance_valid(button):
			button.disabled = false)


func _on_collect(button: Button) -> void:
	button.disabled = true
	Market.on_done(market.claim_proceeds(), func(result: MarketResult) -> void:
		button.disabled = false
		if not result.ok:
			say(Market.message_for(result), HOLD)
		elif result.sales == 0:
			say("No sales to collect yet")
		else:
			say("Collected %s from %d sale(s)" % [cr(result.amount), result.sales], GOOD))


## "Sell 1 at P: the buyer pays P, you receive R" — from the server's fees.
func quote(price: int, then := Callable()) -> void:
	Market.on_done(market.quote_fees(1, price), func(result: MarketResult) -> void:
		if result.ok:
			var q: MarketFeeQuote = result.quote
			var kept: int = q.listing_fee + q.sales_tax
			fee_label.text = "Selling 1 at %s: you receive %s%s" % [cr(q.buyer_pays), cr(q.seller_receives), " (the market keeps %s)" % cr(kept) if kept > 0 else " (no fees)"]
		if then.is_valid():
			then.call())


func _on_place_order(button: Button, then := Callable()) -> void:
	var item_id: String = order_item.get_item_metadata(order_item.selected)
	var quantity := int(order_quantity.value)
	var price := int(order_price.value)
	button.disabled = true
	Market.on_done(market.place_buy_order(item_id, quantity, price), func(result: MarketResult) -> void:
		if is_instance_valid(button):
			button.disabled = false
		if not result.ok:
			say(Market.message_for(result), HOLD)
		else:
			var bought := 0
			for fill in result.fills:
				bought += fill.quantity
			if bought > 0:
				say("Order placed: %d %s bought at once, %d waiting" % [bought, item_name(item_id), result.order.quantity_remaining], GOOD)
				collect_deliveries(false)
			else:
				say("Order placed: up to %d %s at %s each" % [quantity, item_name(item_id), cr(price)], GOOD)
			show_orders()
			refresh()
		if then.is_valid():
			then.call())


func show_orders() -> void:
	Market.on_done(market.get_orders("active"), _show_orders)


func _show_orders(result: MarketResult) -> void:
	if not result.ok or not is_instance_valid(orders_box):
		return
	for child in orders_box.get_children():
		child.queue_free()
	for order in result.orders:
		var row := HBoxContainer.new()
		var text := label("%s: %d of %d left at ≤ %s (%s held)" % [item_name(order.item_id), order.quantity_remaining, order.quantity, cr(order.max_price), cr(order.escrow)], 13, MUTED)
		text.size_flags_horizontal = Control.SIZE_EXPAND_FILL
		text.autowrap_mode = TextServer.AUTOWRAP_WORD
		row.add_child(text)
		var cancel := Button.new()
		cancel.text = "Cancel"
		cancel.pressed.connect(_on_cancel_order.bind(order, cancel))
		row.add_child(cancel)
		orders_box.add_child(row)


func _on_cancel_order(order: MarketOrder, button: Button) -> void:
	button.disabled = true
	Market.on_done(market.cancel_order(order.id), func(result: MarketResult) -> void:
		say("Order cancelled: %s back" % cr(result.returned) if result.ok else Market.message_for(result), GOOD if result.ok else HOLD)
		collect_deliveries(false)
		show_orders())


## Brings in what the market kept for the player: items and refunds of buy
## orders, unsold items of expired listings. `quiet`: say nothing when
## there was nothing (at login).
func collect_deliveries(quiet: bool, then := Callable()) -> void:
	Market.on_done(market.collect_deliveries(), func(result: MarketResult) -> void:
		_show_deliveries(result, quiet)
		if then.is_valid():
			then.call())


func _show_deliveries(result: MarketResult, quiet: bool) -> void:
	if not result.ok:
		if not quiet:
			say(Market.message_for(result), HOLD)
		return
	if result.deliveries.is_empty():
		if not quiet:
			say("Nothing waiting")
		return
	var parts := []
	for d in result.deliveries:
		parts.append("%s %s" % [cr(d.quantity) if d.item_id == "" else "%d" % d.quantity, "" if d.item_id == "" else item_name(d.item_id)])
	say(("While you were away: " if quiet else "Delivered: ") + ", ".join(parts), GOOD)
	show_orders()


func _on_mission_reward() -> void:
	data.add_credits(MISSION_REWARD)
	say("Mission complete: +%s reward" % cr(MISSION_REWARD), GOOD)


func _on_salvage() -> void:
	var item_id: String = SALVAGE[randi() % SALVAGE.size()]
	data.add_item(item_id, 1)
	say("Salvaged a %s" % item_name(item_id))
