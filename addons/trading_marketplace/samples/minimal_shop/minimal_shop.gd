extends Control
## A minimal shop: browse, page, buy. Copy this folder into your game.
##
## It owns a LocalPlayerData and a TradingMarketplace so that it runs on its
## own (open the scene, press F6). In a game, use the `Market` autoload's
## nodes instead (enabling the plugin adds it): trades settle while some
## TradingMarketplace exists, so with the sample's own nodes a trade left
## when the scene closes waits (journaled, its credits held) until the
## next one does. The scene only connects signals and matches request ids —
## it never awaits, so nothing resumes on a freed scene.
## Messages are translation keys (`ERR_<CODE>` for every error code), so the
## player reads them in their language.

## The server; "" keeps the project setting `trading_marketplace/server_url`.
@export var server_url := ""
## The save this sample plays on.
@export var save_path := "user://minimal_shop.json"
## Credits a brand-new save starts with (a sample convenience: a game earns them).
@export var starting_credits := 100
## Only items whose id starts with this (or whose catalog name holds it); "": all.
@export var search := ""
## Listings per page.
@export_range(1, 100) var page_size := 20

const Messages := preload("res://addons/trading_marketplace/translations/messages.gd")
const ROW := preload("res://addons/trading_marketplace/samples/minimal_shop/listing_row.tscn")

@onready var data: LocalPlayerData = $Data
@onready var market: TradingMarketplace = $Market
@onready var listings_box: VBoxContainer = %Listings
@onready var status_label: Label = %Status
@onready var credits_label: Label = %Credits
@onready var more_button: Button = %More

## Listing id → its row on screen.
var rows := {}
## The translation key of the message shown last (`ERR_<CODE>`, `PURCHASE_DONE`, …).
var status_key := ""
var _page_request := -1
var _cursor := ""


func _ready() -> void:
	# The messages of every code (the addon's autoload does this too).
	Messages.install()
	data.save_path = save_path
	if server_url != "":
		market.server_url = server_url
	data.credits_changed.connect(_on_credits_changed)
	market.logged_in.connect(func(_request_id: int, _player_id: int) -> void: refresh())
	market.listings_updated.connect(_on_listings_updated)
	market.purchase_succeeded.connect(_on_purchase_succeeded)
	market.purchase_failed.connect(_on_purchase_failed)
	market.request_failed.connect(func(_request_id: int, code: String, _message: String) -> void: _show(Messages.key_for(code)))
	market.market_listing_changed.connect(_on_listing_changed)
	%Refresh.pressed.connect(refresh)
	more_button.pressed.connect(next_page)
	_show("LOADING")
	if data.get_player_id() < 0 and data.get_credits() == 0 and starting_credits > 0:
		data.add_credits(starting_credits)
	_on_credits_changed(data.get_credits(), data.get_held_credits())
	market.login()


## The first page again.
func refresh() -> void:
	for row in rows.values():
		row.queue_free()
	rows.clear()
	_cursor = ""
	_page_request = market.refresh_listings(_filter()).id


## The next page, added below.
func next_page() -> void:
	if _cursor != "":
		var filter := _filter()
		filter.cursor = _cursor
		_page_request = market.refresh_listings(filter).id


## Buys one unit at the price the player saw.
func buy(listing: MarketListing) -> void:
	var row = rows.get(listing.id)
	if row != null:
		row.set_busy(true)
	market.buy_listing(listing.id, listing.price, 1)


func _filter() -> Dictionary:
	var filter := {"limit": page_size}
	if search != "":
		filter.search = search
	return filter


func _on_listings_updated(request_id: int, listings: Array[MarketListing], next_cursor: String) -> void:
	if request_id != _page_request:
		return # an older page: a newer one was asked for
	for listing in listings:
		if rows.has(listing.id):
			continue
		var row := ROW.instantiate()
		listings_box.add_child(row)
		row.show_listing(listing)
		row.buy_pressed.connect(buy)
		rows[listing.id] = row
	_cursor = next_cursor
	more_button.disabled = next_cursor == ""
	_show("" if not listings.is_empty() or not rows.is_empty() else "ERR_NOT_FOUND")


func _on_purchase_succeeded(_request_id: int, purchase: MarketPurchase) -> void:
	_show("PURCHASE_DONE")
	var row = rows.get(purchase.listing_id)
	if row != null:
		row.set_busy(false)


func _on_purchase_failed(_request_id: int, listing_id: int, code: String, _message: String, _current_price: int) -> void:
	_show(Messages.key_for(code))
	var row = rows.get(listing_id)
	if row != null:
		row.set_busy(false)


## The live market: rows follow what others do, without a refresh.
func _on_listing_changed(_change: String, listing: MarketListing) -> void:
	var row = rows.get(listing.id)
	if row == null:
		return
	if listing.status != "active":
		rows.erase(listing.id)
		row.queue_free()
	else:
		row.show_listing(listing)


func _on_credits_changed(available: int, _held: int) -> void:
	credits_label.text = tr("CREDITS") % available


func _show(key: String) -> void:
	status_key = key
	status_label.text = tr(key) if key != "" else ""
