extends Control
## A small price chart: one item's hourly candles (from
## `TradingMarketplace.get_price_history`) as a close-price line over
## volume bars, with the last price written in the corner.

const LINE := Color("#4fc3f7")
const BARS := Color("#26324a")
const MUTED := Color("#8b95a7")

var candles: Array = []
var title := ""


func show_history(item_name: String, history: Array) -> void:
	title = item_name
	candles = history
	queue_redraw()


func _draw() -> void:
	var font := get_theme_default_font()
	var w := size.x
	var h := size.y
	draw_rect(Rect2(Vector2.ZERO, size), Color("#10151f"))
	if candles.is_empty():
		draw_string(font, Vector2(8, h / 2), "%s: no trades yet" % title if title != "" else "Select an item to see its prices", HORIZONTAL_ALIGNMENT_LEFT, -1, 12, MUTED)
		return
	var lo: float = candles[0].low
	var hi: float = candles[0].high
	var most: int = 1
	for c in candles:
		lo = min(lo, c.low)
		hi = max(hi, c.high)
		most = max(most, c.volume)
	if hi <= lo:
		hi = lo + 1.0
	var n := candles.size()
	var step: float = w / float(max(n, 1))
	var top := 18.0
	var chart_h := h - top - 4.0
	var points := PackedVector2Array()
	for i in n:
		var c: MarketCandle = candles[i]
		var x: float = step * (i + 0.5)
		var bar: float = chart_h * 0.3 * float(c.volume) / float(most)
		draw_rect(Rect2(x - step * 0.35, h - bar, step * 0.7, bar), BARS)
		var y: float = top + chart_h * (1.0 - (float(c.close) - lo) / (hi - lo))
		points.append(Vector2(x, y))
	if points.size() == 1:
		draw_circle(points[0], 3.0, LINE)
	else:
		draw_polyline(points, LINE, 2.0, true)
	var last: Dictionary = candles[-1]
	draw_string(font, Vector2(6, 13), "%s · last %d cr · %d–%d" % [title, last.close, int(lo), int(hi)], HORIZONTAL_ALIGNMENT_LEFT, -1, 12, MUTED)
