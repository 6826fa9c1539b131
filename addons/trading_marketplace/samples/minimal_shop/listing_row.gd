extends HBoxContainer
## One listing in the minimal shop: what, how many, the unit price, Buy.

## The player pressed Buy.
signal buy_pressed(listing: MarketListing)

## The listing shown.
var listing: MarketListing


func _ready() -> void:
	$Buy.text = tr("BUY")
	$Buy.pressed.connect(func() -> void: buy_pressed.emit(listing))


## Shows `shown` (again, when it changed).
func show_listing(shown: MarketListing) -> void:
	listing = shown
	$Text.text = tr("LISTING_ROW") % [shown.item_id, shown.quantity_remaining, shown.price]


## Disables Buy while a purchase of this row waits for its answer.
func set_busy(busy: bool) -> void:
	$Buy.disabled = busy
