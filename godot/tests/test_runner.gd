extends Node
## The addon's check suite, against a running marketplace server.
##
## Headless:  godot --headless --path godot res://tests/test_runner.tscn
## In the editor: open this scene and press F6.
## The server is MARKET_SERVER_URL from the environment (default
## http://127.0.0.1:8080). Exits with 0 when every check passed, 1 otherwise.

var server_url := "http://127.0.0.1:8080"
## The same server behind a proxy that delays every purchase (set by the
## headless harness); "" when not available.
var slow_url := ""
var checks := 0
var failures := 0
var run_id := ""
## label -> Array of [signal_name, args...]
var seen := {}


func _ready() -> void:
	var env := OS.get_environment("MARKET_SERVER_URL")
	if env != "":
		server_url = env
	slow_url = OS.get_environment("MARKET_SLOW_URL")
	# The checks themselves run while the tree is paused.
	process_mode = Node.PROCESS_MODE_ALWAYS
	run_id = "%d_%d" % [Time.get_unix_time_from_system(), randi() % 100000]
	print("Trading marketplace checks against ", server_url)
	await run_all()
	print("%d checks, %d failed" % [checks, failures])
	if failures > 0:
		for label in seen:
			print("  events of ", label, ": ", seen[label])
	if failures == 0:
		print("ALL CHECKS PASSED")
	# A clean quit: the nodes leave the tree, stop their runtimes and save.
	for child in get_children():
		child.queue_free()
	await get_tree().process_frame
	get_tree().quit(0 if failures == 0 else 1)


func check(condition: bool, what: String) -> void:
	checks += 1
	if condition:
		print("  ok    ", what)
	else:
		failures += 1
		printerr("  FAIL  ", what)


func until(condition: Callable, timeout_sec := 15.0) -> bool:
	var deadline := Time.get_ticks_msec() + int(timeout_sec * 1000.0)
	while Time.get_ticks_msec() < deadline:
		if condition.call():
			return true
		await get_tree().process_frame
	return condition.call()


func events(label: String, signal_name: String) -> Array:
	var out := []
	for e in seen.get(label, []):
		if e[0] == signal_name:
			out.append(e.slice(1))
	return out


func record(label: String, entry: Array) -> void:
	if not seen.has(label):
		seen[label] = []
	seen[label].append(entry)


func save_file(label: String) -> String:
	return "user://checks_%s/%s.json" % [run_id, label]


func make_player(label: String, credits: int, parent: Node = self, url: String = "") -> Dictionary:
	var data := LocalPlayerData.new()
	data.name = label + "_data"
	data.save_path = save_file(label)
	parent.add_child(data)
	var market := TradingMarketplace.new()
	market.name = label + "_market"
	market.server_url = server_url if url == "" else url
	market.max_requests_per_second = 0.0
	market.request_timeout_sec = 5.0
	parent.add_child(market)
	market.player_data = data
	market.logged_in.connect(func(id, player_id): record(label, ["logged_in", id, player_id]))
	market.listings_updated.connect(func(id, listings, next_cursor): record(label, ["listings_updated", id, listings, next_cursor]))
	market.listing_created.connect(func(id, listing): record(label, ["listing_created", id, listing]))
	market.purchase_succeeded.connect(func(id, purchase): record(label, ["purchase_succeeded", id, purchase]))
	market.purchase_failed.connect(func(id, listing_id, code, message, current_price): record(label, ["purchase_failed", id, listing_id, code, message, current_price]))
	market.proceeds_claimed.connect(func(id, amount): record(label, ["proceeds_claimed", id, amount]))
	market.claim_finished.connect(func(id, sales, amount): record(label, ["claim_finished", id, sales, amount]))
	market.request_failed.connect(func(id, code, message): record(label, ["request_failed", id, code, message]))
	market.busy_changed.connect(func(busy): record(label, ["busy_changed", busy]))
	market.trade_stalled.connect(func(id, trade): record(label, ["trade_stalled", id, trade]))
	market.market_account_updated.connect(func(id, account): record(label, ["market_account_updated", id, account]))
	data.hold_released.connect(func(hold_id, reason): record(label, ["hold_released", hold_id, reason]))
	data.credits_changed.connect(func(available, held): record(label, ["credits_changed", available, held]))
	data.load_failed.connect(func(message): record(label, ["load_failed", message]))
	data.saved.connect(func(): record(label, ["saved"]))
	if credits > 0:
		data.add_credits(credits)
	return {"label": label, "data": data, "market": market}


func run_all() -> void:
	var seller := make_player("seller", 0)
	var alice := make_player("alice", 1000)
	var bob := make_player("bob", 1000)

	# Login
	for p in [seller, alice, bob]:
		p.market.login("dev-%s-%s" % [p.label, run_id], p.label)
	var all_in := await until(func(): return events("seller", "logged_in").size() == 1 and events("alice", "logged_in").size() == 1 and events("bob", "logged_in").size() == 1)
	check(all_in, "three players log in")
	check(alice.data.get_player_id() > 0 and alice.data.get_player_id() != bob.data.get_player_id(), "each player has its own server id")
	check(alice.market.is_logged_in(), "is_logged_in() after logged_in")

	# Listing
	seller.data.add_item("relic", 3)
	var listing_request: int = seller.market.create_listing("relic", 1, 100).id
	check(seller.data.get_item_count("relic") == 2, "create_listing escrows the item at once")
	await until(func(): return events("seller", "listing_created").size() == 1)
	var created := events("seller", "listing_created")
	check(created.size() == 1 and created[0][0] == listing_request, "listing_created carries the request id")
	if created.size() != 1:
		return
	var listing: MarketListing = created[0][1]
	check(listing["item_id"] == "relic" and listing["price"] == 100 and listing["status"] == "active", "the listing has the server's fields")

	# Browse
	alice.market.refresh_listings({"item_id": "relic"})
	await until(func(): return events("alice", "listings_updated").size() >= 1)
	var pages := events("alice", "listings_updated")
	var ids := []
	if pages.size() > 0:
		for l in pages[0][1]:
			ids.append(l["id"])
	check(ids.has(listing["id"]), "refresh_listings finds the new listing")

	# Buy: the hold is placed at once, committed on success
	var buy_request: int = alice.market.buy_listing(listing["id"], 100).id
	check(alice.data.get_credits() == 900 and alice.data.get_held_credits() == 100, "buy_listing holds the price at once")
	check(alice.market.is_purchase_pending(listing["id"]), "is_purchase_pending while waiting")
	alice.market.buy_listing(listing["id"], 100)
	await until(func(): return events("alice", "purchase_succeeded").size() == 1)
	var bought := events("alice", "purchase_succeeded")
	check(bought.size() == 1 and bought[0][0] == buy_request, "purchase_succeeded for the request")
	var refused := events("alice", "purchase_failed")
	check(refused.size() == 1 and refused[0][2] == "purchase_in_progress", "a second buy of the same listing is refused locally")
	check(alice.data.get_credits() == 900 and alice.data.get_held_credits() == 0, "the hold was spent")
	check(alice.data.get_item_count("relic") == 1, "the item arrived")

	# The race: two buyers, one listing, the same frame
	seller.market.create_listing("relic", 1, 150)
	await until(func(): return events("seller", "listing_created").size() == 2)
	var contested: MarketListing = events("seller", "listing_created")[1][1]
	alice.market.buy_listing(contested["id"], 150)
	bob.market.buy_listing(contested["id"], 150)
	await until(func(): return events("alice", "purchase_succeeded").size() + events("bob", "purchase_succeeded").size() + events("alice", "purchase_failed").size() + events("bob", "purchase_failed").size() >= 4)
	var wins: int = events("alice", "purchase_succeeded").size() + events("bob", "purchase_succeeded").size()
	check(wins == 2, "exactly one of the two racing buyers won (one win before, one now)")
	var loser: Dictionary = bob if events("bob", "purchase_succeeded").size() == 0 else alice
	var lost := []
	for f in events(loser.label, "purchase_failed"):
		if f[1] == contested["id"]:
			lost.append(f)
	check(lost.size() == 1 and lost[0][2] == "already_sold", "the loser gets purchase_failed with already_sold")
	check(lost.size() == 1 and lost[0][3] == "Item sold to another player", "with a message for the player")
	check(loser.data.get_held_credits() == 0, "the loser's hold was released")
	check(events(loser.label, "hold_released").size() >= 1, "hold_released was emitted")
	var loser_expected := 900 if loser == alice else 1000
	check(loser.data.get_credits() == loser_expected, "the loser's credits are whole again")

	# Local refusals come back as signals with stable codes
	var poor: int = bob.market.buy_listing(contested["id"] + 1000, 1000000).id
	await until(func(): return events("bob", "purchase_failed").any(func(f): return f[0] == poor))
	var poor_fail := events("bob", "purchase_failed").filter(func(f): return f[0] == poor)
	check(poor_fail.size() == 1 and poor_fail[0][2] == "insufficient_credits", "insufficient_credits refused locally")
	var bad: int = bob.market.refresh_listings({"colour": "red"}).id
	await until(func(): return events("bob", "request_failed").any(func(f): return f[0] == bad))
	check(events("bob", "request_failed").any(func(f): return f[0] == bad and f[1] == "invalid_argument"), "a bad filter is refused with invalid_argument")

	# Claim proceeds
	var claim: MarketResult = await seller.market.claim_proceeds().completed
	var total := 0
	for c in events("seller", "proceeds_claimed"):
		total += c[1]
	check(total == 250 and seller.data.get_credits() == 250, "the seller claims both sales once")
	check(claim.ok and claim.sales == 2 and claim.amount == 250, "an awaited claim_proceeds ends with both sales and their total (%s)" % claim)
	var finished := events("seller", "claim_finished")
	check(finished.size() == 1 and finished[0][1] == 2 and finished[0][2] == 250, "claim_finished after the proceeds_claimed signals")

	# Conservation across the three players
	var credits := 0
	for p in [seller, alice, bob]:
		credits += p.data.get_credits() + p.data.get_held_credits()
	check(credits == 2000, "credits conserved across players")
	var relics := 0
	for p in [seller, alice, bob]:
		relics += p.data.get_item_count("relic")
	check(relics == 3, "items conserved across players")

	# Settings change live: nothing restarts, requests keep working
	var logins_before := events("alice", "logged_in").size()
	alice.market.max_requests_per_second = 50.0
	alice.market.max_concurrent_requests = 4
	var after_change: int = alice.market.refresh_listings({}).id
	await until(func(): return events("alice", "listings_updated").size() >= 2)
	check(events("alice", "listings_updated").size() >= 2, "requests keep working after a setting changed")
	check(events("alice", "logged_in").size() == logins_before, "no restart, no second login")
	check(not events("alice", "request_failed").any(func(f): return f[0] == after_change), "the request after the change succeeded")
	check(after_change > buy_request, "request ids keep growing")

	# A NaN setting is refused with a warning, never a panic
	alice.market.request_timeout_sec = NAN
	check(is_finite(alice.market.request_timeout_sec) and alice.market.request_timeout_sec > 0.0, "a NaN timeout becomes a usable one")
	alice.market.max_concurrent_requests = -5
	check(alice.market.max_concurrent_requests == 1, "a negative concurrency is clamped")
	var after_nan: int = alice.market.refresh_listings({}).id
	await until(func(): return events("alice", "listings_updated").size() >= 3)
	check(not events("alice", "request_failed").any(func(f): return f[0] == after_nan), "requests work after a NaN setting")
	alice.market.max_concurrent_requests = 16

	await check_awaitable_requests(seller, alice)
	await check_typed_surface(seller, alice)
	await check_giving_up(seller, alice)
	check_player_data_codes_and_warnings()
	await check_freeing_from_a_handler()
	await check_sample_shop(seller)
	check_inspector(alice)
	await check_paused_tree(seller, alice)
	await check_reentrant_handlers(seller, alice)
	await check_second_node_on_one_save(alice)
	await check_save_slot_chosen_in_parent_ready()
	await check_request_survives_slot_switch()
	await check_cancelled_read_across_slot_switch()
	await check_save_folder_gone()
	await check_damaged_save_reported_to_ready_connection()
	await check_scene_change_with_trade_in_flight(seller)
	await check_server_grants()
	await check_trade_waits_for_its_market()
	await check_orders_partial_fills_expiry_and_deliveries()
	await check_live_market()
	await check_identity()

	# The nodes go, the save stays: a new node on the same file carries on
	var alice_credits: int = alice.data.get_credits()
	var alice_relics: int = alice.data.get_item_count("relic")
	var alice_id: int = alice.data.get_player_id()
	check(alice.data.flush() == "", "flush writes the save")
	alice.market.queue_free()
	alice.data.queue_free()
	await get_tree().process_frame
	var reloaded := LocalPlayerData.new()
	reloaded.save_path = save_file("alice")
	add_child(reloaded)
	check(reloaded.is_loaded(), "a new node opens the same save after the old one left")
	check(reloaded.get_credits() == alice_credits, "with the same credits")
	check(reloaded.get_item_count("relic") == alice_relics, "and the same items")
	check(reloaded.get_player_id() == alice_id, "and the same player id")
	check(reloaded.validate_inventory().is_empty(), "alice's data validates")
	for p in [seller, bob]:
		check(p.data.validate_inventory().is_empty(), "%s's data validates" % p.label)
	reloaded.queue_free()


func check_awaitable_requests(seller: Dictionary, alice: Dictionary) -> void:
	# login() with no arguments: the identity in the save.
	var again: MarketResult = await alice.market.login().completed
	check(again.ok and again.player_id == alice.data.get_player_id(), "login() without arguments logs in as the saved player")
	# Two listings to page through and buy.
	seller.data.add_item("await_token", 2)
	var made: MarketResult = await seller.market.create_listing("await_token", 1, 20).completed
	check(made.ok and made.listing.item_id == "await_token", "an awaited create_listing gives the listing")
	var made2: MarketResult = await seller.market.create_listing("await_token", 1, 50).completed
	# A page, awaited; the node's signal carries the same request id and cursor.
	var page_request: MarketRequest = alice.market.refresh_listings({"item_id": "await_token", "limit": 1})
	check(not page_request.done, "a request is not done when it is made")
	var page: MarketResult = await page_request.completed
	check(page.ok and page.listings.size() == 1 and page.next_cursor != "", "an awaited page has its listings and next cursor")
	check(page_request.done and page_request.is_ok() and page_request.result == page, "the request keeps its result")
	var signalled := events("alice", "listings_updated").filter(func(e): return e[0] == page_request.id)
	check(signalled.size() == 1 and signalled[0][2] == page.next_cursor, "listings_updated carries the request id and the cursor")
	var rest: MarketResult = await alice.market.refresh_listings({"item_id": "await_token", "cursor": page.next_cursor}).completed
	check(rest.ok and rest.listings.size() == 1 and rest.listings[0].id == made2.listing.id, "the next cursor gives the next page")
	check(page.listings[0].seller_name == "seller", "browsing gives the seller's name")
	# A purchase, awaited.
	var bought: MarketResult = await alice.market.buy_listing(made.listing.id, 20).completed
	check(bought.ok and bought.purchase.listing_id == made.listing.id, "an awaited purchase gives the purchase")
	# A price that changed: the current price is data.
	var stale: MarketResult = await alice.market.buy_listing(made2.listing.id, 40).completed
	check(not stale.ok and stale.code == "price_changed" and stale.current_price == 50, "price_changed gives the current price (%s)" % stale)
	var failed := events("alice", "purchase_failed").filter(func(e): return e[1] == made2.listing.id)
	check(failed.size() == 1 and failed[0][4] == 50, "purchase_failed carries current_price too")
	check(alice.data.get_held_credits() == 0, "and the hold is back")
	# A local refusal completes on a later frame, so an await gets there first.
	var broke: MarketResult = await alice.market.buy_listing(made2.listing.id, 100000000).completed
	check(not broke.ok and broke.code == "insufficient_credits", "an awaited local refusal completes with its code")
	var nowhere := TradingMarketplace.new()
	add_child(nowhere)
	var orphan: MarketResult = await nowhere.refresh_listings({}).completed
	check(not orphan.ok and orphan.code == "invalid_argument", "a node without player_data completes its requests with an error")
	check(nowhere.get_setup_warnings().size() == 1, "and reports the missing player_data as a set-up warning")
	nowhere.queue_free()


## Every answer is a typed object: a typed variable catches a misspelt
## property when the script is parsed, and arrays say what they hold.
func check_typed_surface(seller: Dictionary, alice: Dictionary) -> void:
	seller.data.add_item("typed_token", 2)
	var made: MarketResult = await seller.market.create_listing("typed_token", 2, 30).completed
	check(made is MarketResult and made.listing is MarketListing and made.kind == "create_listing", "create_listing completes with a MarketResult holding a MarketListing")
	var page: MarketResult = await alice.market.refresh_listings({"item_id": "typed_token"}).completed
	check(page.listings.is_typed() and page.listings.get_typed_class_name() == &"MarketListing", "a page is an Array[MarketListing] (%s)" % page.listings.get_typed_class_name())
	check(page.listings.size() == 1 and page.listings[0].quantity_remaining == 2 and page.listings[0].expires_at >= 0, "with typed fields")
	check(not page.has_next_page() and page.purchase == null and page.order == null, "what a result does not carry is null, and the last page has no next")
	var typed_signal := events("alice", "listings_updated").filter(func(e): return e[0] == page.request_id)
	check(typed_signal.size() == 1 and typed_signal[0][1] == page.listings, "the node's signal carries the very same objects")
	var bought: MarketResult = await alice.market.buy_listing(made.listing.id, 30, 1).completed
	check(bought.ok and bought.purchase is MarketPurchase and bought.purchase.quantity == 1 and bought.purchase.unit_price == 30 and bought.is_definitive(), "a purchase is a MarketPurchase")
	var account: MarketAccount = alice.data.get_market_account()
	check(account is MarketAccount and account.mode != "", "get_market_account() is a MarketAccount")
	var trades: Array[MarketPendingTrade] = alice.market.get_pending_trades()
	check(trades.is_typed() and trades.get_typed_class_name() == &"MarketPendingTrade", "get_pending_trades() is an Array[MarketPendingTrade]")
	var method_types := {}
	var probe := TradingMarketplace.new()
	for m in probe.get_method_list():
		method_types[m.name] = m.return
	probe.free()
	check(method_types.get_pending_trades.hint_string == "MarketPendingTrade" and method_types.buy_listing.class_name == &"MarketRequest", "the editor knows the return types (%s)" % method_types.get_pending_trades)
	# The script editor's checks: a typed variable knows its properties.
	var good := GDScript.new()
	good.source_code = "extends RefCounted\nfunc f(r: MarketResult) -> String:\n\treturn r.purchase.item_id + str(r.listings[0].price)\n"
	check(good.reload() == OK, "a script reading typed results parses")
	# What the script editor completes from: typed properties in ClassDB.
	var props := {}
	for prop in ClassDB.class_get_property_list("MarketResult", true):
		props[prop.name] = prop
	check(props.has("purchase") and props.purchase.class_name == &"MarketPurchase" and props.listings.hint_string == "MarketListing" and props.current_price.type == TYPE_INT, "MarketResult's properties are typed for completion (%s)" % props.get("purchase", {}))
	var read_only := GDScript.new()
	read_only.source_code = "extends RefCounted\nfunc f(l: MarketListing) -> void:\n\tl.price = 1\n"
	check(read_only.reload() != OK, "results are read-only")


## Giving up on a wait never undoes a trade (I4); cancelling a read drops it.
func check_giving_up(seller: Dictionary, alice: Dictionary) -> void:
	# A read, cancelled: "cancelled" at once, and no signal for it later.
	var listed_before := events("alice", "listings_updated").size()
	var read: MarketRequest = alice.market.refresh_listings({})
	check(read.can_cancel() and read.cancel(), "a read can be cancelled")
	check(not read.can_cancel() and not read.cancel(), "once")
	var cancelled: MarketResult = await read.completed
	check(cancelled.code == "cancelled" and cancelled.is_definitive(), "a cancelled read completes with cancelled")
	for i in 30:
		await get_tree().process_frame
	check(events("alice", "listings_updated").size() == listed_before, "and its answer is dropped (no listings_updated)")
	# A trade cannot be cancelled; giving up on its wait leaves it going.
	seller.data.add_item("patience_token", 1)
	var made: MarketResult = await seller.market.create_listing("patience_token", 1, 11).completed
	var credits_before: int = alice.data.get_credits()
	var buy: MarketRequest = alice.market.buy_listing(made.listing.id, 11)
	check(not buy.can_cancel() and not buy.cancel(), "a trade cannot be cancelled")
	var gave_up: MarketResult = await buy.give_up_after(0.0).completed
	check(gave_up.code == "still_pending" and not gave_up.is_definitive(), "giving up on a trade's wait completes with still_pending, not definitive")
	check(buy.done and buy.result == gave_up, "the request is done for the game")
	check(await until(func(): return events("alice", "purchase_succeeded").any(func(e): return e[0] == buy.id)), "the trade still happened: purchase_succeeded carries its id")
	check(alice.data.get_credits() == credits_before - 11 and alice.data.get_held_credits() == 0 and alice.data.get_item_count("patience_token") == 1, "credits spent once, item in the save, nothing held")
	# A request refused before it was sent keeps its refusal.
	var refused: MarketResult = await alice.market.buy_listing(made.listing.id, 100000000).give_up_after(0.0).completed
	check(refused.code == "insufficient_credits", "giving up on a refused request keeps its refusal (%s)" % refused.code)
	# A login cannot be cancelled either, and giving up on it leaves it going.
	var relogin: MarketRequest = alice.market.login()
	check(not relogin.can_cancel(), "a login cannot be cancelled")
	var logins_before := events("alice", "logged_in").size()
	var login_wait: MarketResult = await relogin.give_up_after(0.0).completed
	check(login_wait.code == "still_pending", "giving up on a login's wait: still_pending")
	check(await until(func(): return events("alice", "logged_in").size() > logins_before), "and the login still happens (logged_in)")
	# A wait given up on after its answer came changes nothing.
	var quick: MarketRequest = alice.market.refresh_market_account()
	var quick_result: MarketResult = await quick.completed
	quick.give_up_after(0.0)
	for i in 3:
		await get_tree().process_frame
	check(quick.result == quick_result and quick_result.code != "cancelled", "giving up after the answer came changes nothing")
	# Game life: a paused tree (a pause menu) still cancels and gives up.
	get_tree().paused = true
	var paused_read: MarketRequest = alice.market.refresh_listings({})
	paused_read.cancel()
	var paused_cancel: MarketResult = await paused_read.completed
	var paused_wait: MarketResult = await alice.market.refresh_market_account().give_up_after(0.0).completed
	get_tree().paused = false
	check(paused_cancel.code == "cancelled" and paused_wait.code == "cancelled", "with the tree paused, cancel and give_up_after still end the wait")
	# Game life: the scene that asked is gone before the answer (a scene
	# change mid-trade): Market.on_done calls no freed object, the trade settles.
	seller.data.add_item("leaving_token", 1)
	var lot: MarketResult = await seller.market.create_listing("leaving_token", 1, 4).completed
	var scene_script := GDScript.new()
	scene_script.source_code = "extends Node\nsignal told\nfunc on_result(_r) -> void:\n\ttold.emit()\n"
	scene_script.reload()
	var scene := Node.new()
	scene.set_script(scene_script)
	add_child(scene)
	var told := [0]
	scene.told.connect(func(): told[0] += 1)
	var stays := Node.new()
	stays.set_script(scene_script)
	add_child(stays)
	var stays_told := [0]
	stays.told.connect(func(): stays_told[0] += 1)
	var market_autoload: Node = get_node("/root/Market")
	var bought: MarketRequest = alice.market.buy_listing(lot.listing.id, 4)
	market_autoload.on_done(bought, Callable(scene, "on_result"))
	market_autoload.on_done(bought, Callable(stays, "on_result"))
	scene.free()
	check(await until(func(): return alice.data.get_item_count("leaving_token") == 1), "the scene left mid-trade: the purchase settles all the same")
	for i in 3:
		await get_tree().process_frame
	check(told[0] == 0 and stays_told[0] == 1, "and on_done calls back the scene that stayed, nothing on the freed one")
	stays.queue_free()


## A handler may queue_free() the node that emitted, and a script resuming
## from `await` may free it, without crashing the game: the nodes hold no
## borrow of themselves while signals go out. (`free()` inside the node's
## own call is refused by debug builds of Godot, as for its own nodes —
## "locked object"; release builds free it and the node stops there.)
func check_freeing_from_a_handler() -> void:
	var p := make_player("freer", 100)
	var refused: MarketResult = await p.market.cancel_listing(-1).completed
	_free_now(p.market)  # refused or done: either way the game goes on
	check(refused.code == "invalid_argument", "free() right where an await resumed does not crash the game")
	if is_instance_valid(p.market):
		p.market.queue_free()
	var again := make_player("freer_1", 0)
	var second: MarketResult = await again.market.cancel_listing(-1).completed
	again.market.queue_free()
	await get_tree().process_frame
	check(second.code == "invalid_argument" and not is_instance_valid(again.market), "queue_free() right where an await resumed frees it")
	var d := LocalPlayerData.new()
	d.save_path = save_file("freer_data")
	add_child(d)
	d.credits_changed.connect(func(_available, _held): d.queue_free())
	d.add_credits(5)
	check(await until(func(): return not is_instance_valid(d)), "queue_free() of LocalPlayerData from its own signal frees it")
	var other := make_player("freer_2", 0)
	other.market.request_failed.connect(func(_id, _code, _message): other.market.queue_free())
	other.market.cancel_listing(-1)
	other.market.cancel_listing(-2)
	check(await until(func(): return not is_instance_valid(other.market)), "queue_free() of TradingMarketplace from its own signal, with more to tell, frees it")
	for i in 3:
		await get_tree().process_frame
	for player in [p, again, other]:
		player.data.queue_free()


## Frees `node` now, in a function of its own: where Godot refuses (a
## locked object), the error ends only this call.
func _free_now(node: Object) -> void:
	node.free()


## LocalPlayerData: every method that can fail returns a code ("" = done).
func check_player_data_codes_and_warnings() -> void:
	var data := LocalPlayerData.new()
	data.save_path = save_file("codes")
	add_child(data)
	check(data.add_credits(10) == "" and data.add_credits(-11) == "insufficient_credits", "add_credits returns \"\" or a code")
	check(data.add_item("ore", 1) == "" and data.add_item("", 1) == "invalid_argument" and data.remove_item("ore", 2) == "insufficient_items", "add_item and remove_item return codes")
	var hold := data.reserve_credits(4)
	check(hold is MarketHold and hold.code == "" and hold.id > 0 and data.get_held_credits() == 4, "reserve_credits gives a MarketHold")
	var refused := data.reserve_credits(1000)
	check(refused.code == "insufficient_credits" and refused.id == 0, "a refused hold carries its code")
	check(data.commit_credits_hold(hold.id) == "" and data.commit_credits_hold(hold.id) == "invalid_argument", "commit_credits_hold returns codes")
	check(data.release_credits_hold(-5) == "invalid_argument", "release_credits_hold refuses a bad id with a code")
	check(data.flush() == "" and data.validate_inventory().is_empty(), "flush returns \"\" and validate_inventory no problems")
	check(data.get_setup_warnings().is_empty(), "a good save_path has no warnings")
	var bad := LocalPlayerData.new()
	bad.save_path = "res://save.json"
	check(bad.get_setup_warnings().size() == 1 and bad.get_setup_warnings()[0].contains("read-only"), "a res:// save_path is warned about in the editor (%s)" % bad.get_setup_warnings())
	check(bad.add_credits(1) == "save_unavailable" and bad.get_market_account() == null, "a save that cannot load answers save_unavailable")
	bad.free()
	data.queue_free()


## The sample shop shipped in the addon runs against the server.
func check_sample_shop(seller: Dictionary) -> void:
	var scene: PackedScene = load("res://addons/trading_marketplace/samples/minimal_shop/minimal_shop.tscn")
	check(scene != null, "the sample shop scene loads")
	if scene == null:
		return
	var item := "sample_%s" % run_id
	seller.data.add_item(item, 1)
	var made: MarketResult = await seller.market.create_listing(item, 1, 5).completed
	var shop := scene.instantiate()
	shop.server_url = server_url
	shop.save_path = save_file("sample_shop")
	shop.starting_credits = 50
	shop.search = item
	add_child(shop)
	check(await until(func(): return shop.rows.has(made.listing.id)), "the sample shop lists what is for sale")
	var shown: MarketListing = shop.rows[made.listing.id].listing
	shop.buy(shown)
	check(await until(func(): return shop.status_key == "PURCHASE_DONE"), "and buys through it (%s)" % shop.status_key)
	check(shop.data.get_item_count(item) == 1 and shop.data.get_credits() == 45, "the item is in the sample's save")
	shop.buy(shown)
	check(await until(func(): return shop.status_key == "ERR_ALREADY_SOLD"), "a second buy shows the already_sold message key (%s)" % shop.status_key)
	check(TranslationServer.get_loaded_locales().has("de") and tr("ERR_ALREADY_SOLD") != "ERR_ALREADY_SOLD", "the addon's translations are loaded: every code has a message (%s)" % tr("ERR_ALREADY_SOLD"))
	shop.queue_free()


func check_inspector(alice: Dictionary) -> void:
	check(alice.market.player_data == alice.data, "player_data is the LocalPlayerData node itself")
	var hints := {}
	for property in alice.market.get_property_list():
		hints[property.name] = property
	check(hints.player_data.hint == PROPERTY_HINT_NODE_TYPE and hints.player_data.hint_string == "LocalPlayerData", "player_data picks LocalPlayerData nodes in the inspector")
	for name in ["max_concurrent_requests", "request_timeout_sec", "max_requests_per_second", "max_frame_time_msec", "stall_after_sec"]:
		check(hints[name].hint == PROPERTY_HINT_RANGE, "%s has a range in the inspector" % name)
	check(alice.market.get_setup_warnings().is_empty(), "a set-up market has no warnings")
	var odd := TradingMarketplace.new()
	odd.server_url = "ftp://example.com"
	var warnings: PackedStringArray = odd.get_setup_warnings()
	check(warnings.size() == 2 and warnings[1].contains("http"), "a non-http server_url is warned about (%s)" % warnings)
	odd.free()
	# The server address comes from Project Settings, the build's feature
	# override first: this debug run gets server_url.debug, not the base.
	var fresh := TradingMarketplace.new()
	check(ProjectSettings.get_setting("trading_marketplace/server_url") == "https://market.example.com" and fresh.server_url == "http://127.0.0.1:8080", "server_url defaults to the project setting's .debug override (%s)" % fresh.server_url)
	check(fresh.stall_after_sec == 90.0 and fresh.request_timeout_sec == 10.0, "the node's other defaults come from Project Settings too, overrides first (stall_after_sec %s)" % fresh.stall_after_sec)
	fresh.free()


func check_paused_tree(seller: Dictionary, alice: Dictionary) -> void:
	seller.data.add_item("pause_token", 1)
	var created_before := events("seller", "listing_created").size()
	seller.market.create_listing("pause_token", 1, 5)
	await until(func(): return events("seller", "listing_created").size() > created_before)
	var listing: MarketListing = events("seller", "listing_created")[-1][1]
	get_tree().paused = true
	var bought_before := events("alice", "purchase_succeeded").size()
	alice.market.buy_listing(listing["id"], 5)
	await until(func(): return events("alice", "purchase_succeeded").size() > bought_before)
	check(events("alice", "purchase_succeeded").size() > bought_before, "a purchase completes while the tree is paused")
	check(alice.data.get_item_count("pause_token") == 1, "and the item arrives while paused")
	# A buy order placed in a pause menu, filled by a listing, its items
	# collected — all while paused.
	var order: MarketResult = await alice.market.place_buy_order("pause_ore", 1, 9).completed
	check(order.ok and order.order.status == "active", "a buy order is placed while paused")
	seller.data.add_item("pause_ore", 1)
	var sold: MarketResult = await seller.market.create_listing("pause_ore", 1, 9).completed
	check(sold.ok and sold.listing.status == "sold", "a listing sells into it while paused")
	var got: MarketResult = await alice.market.collect_deliveries().completed
	check(got.ok and alice.data.get_item_count("pause_ore") == 1, "and its delivery is collected while paused")
	get_tree().paused = false


func check_reentrant_handlers(seller: Dictionary, alice: Dictionary) -> void:
	# A request_failed handler that asks again: one refusal per frame, never an endless frame.
	var lonely := TradingMarketplace.new()
	add_child(lonely)
	var refusals := [0]
	lonely.request_failed.connect(func(_id, _code, _message):
		refusals[0] += 1
		lonely.refresh_listings({}))
	lonely.refresh_listings({})
	for i in 10:
		await get_tree().process_frame
	check(refusals[0] >= 5 and refusals[0] <= 12, "a handler that keeps refusing gets one refusal per frame (%d in 10 frames)" % refusals[0])
	lonely.queue_free()
	# A hold_committed handler that changes credits: the newest balance is signalled last.
	var bonus := func(_hold_id): alice.data.add_credits(3)
	alice.data.hold_committed.connect(bonus)
	seller.data.add_item("bonus_token", 1)
	var created_before := events("seller", "listing_created").size()
	seller.market.create_listing("bonus_token", 1, 7)
	await until(func(): return events("seller", "listing_created").size() > created_before)
	var listing: MarketListing = events("seller", "listing_created")[-1][1]
	var bought_before := events("alice", "purchase_succeeded").size()
	alice.market.buy_listing(listing["id"], 7)
	await until(func(): return events("alice", "purchase_succeeded").size() > bought_before)
	await get_tree().process_frame
	alice.data.hold_committed.disconnect(bonus)
	var changes := events("alice", "credits_changed")
	check(changes.size() > 0 and changes[-1][0] == alice.data.get_credits() and changes[-1][1] == alice.data.get_held_credits(), "the last credits_changed carries the current balance")


func check_second_node_on_one_save(alice: Dictionary) -> void:
	var twin := LocalPlayerData.new()
	twin.save_path = alice.data.save_path
	var failures := []
	twin.load_failed.connect(func(message): failures.append(message))
	add_child(twin)
	await get_tree().process_frame
	await get_tree().process_frame
	check(not twin.is_loaded(), "a second LocalPlayerData on the same save is refused")
	check(failures.size() == 1, "and told with load_failed")
	check(alice.data.is_loaded() and alice.data.validate_inventory().is_empty(), "the first one is untouched")
	twin.queue_free()


func make_slot_parent(label: String) -> Node:
	var parent := Node.new()
	parent.set_script(load("res://tests/slot_parent.gd"))
	parent.slot_path = save_file(label)
	var data := LocalPlayerData.new()
	data.name = "Data"
	parent.add_child(data)
	return parent


func check_save_slot_chosen_in_parent_ready() -> void:
	var parent := make_slot_parent("slot_2")
	add_child(parent)
	await get_tree().process_frame
	var data: LocalPlayerData = parent.get_node("Data")
	check(data.get_save_file_path().ends_with("slot_2.json"), "save_path set in the parent's _ready is the file used")
	data.add_credits(42)
	check(data.flush() == "", "the slot saves")
	check(FileAccess.file_exists(save_file("slot_2")), "to the slot's file")
	check(not FileAccess.file_exists("user://player_data.json") or FileAccess.get_file_as_string("user://player_data.json").find("42") == -1, "not to the default file")
	# Switching slots later, with nothing pending
	check(data.change_save_path(save_file("slot_3")) == "", "switching to another slot")
	check(data.get_credits() == 0, "the other slot is another player's data")
	check(data.change_save_path("res://nope.json") == "invalid_argument", "res:// is refused")
	parent.queue_free()
	await get_tree().process_frame


func check_request_survives_slot_switch() -> void:
	var p := make_player("switcher", 0)
	var login: MarketResult = await p.market.login("dev-switcher-%s" % run_id, "switcher").completed
	check(login.ok, "a player logs in before switching slots")
	var pending: MarketRequest = p.market.refresh_listings({})
	check(p.data.change_save_path(save_file("switcher_2")) == "", "the save can switch with only a read in flight")
	await until(func(): return pending.done, 5.0)
	check(pending.done, "the read's request still completes after the switch (%s)" % pending.result)
	p.market.queue_free()
	p.data.queue_free()
	await get_tree().process_frame


## A read cancelled, then its save closed: it completes once (cancelled),
## and its answer never becomes a signal.
func check_cancelled_read_across_slot_switch() -> void:
	var p := make_player("canceller", 0)
	var login: MarketResult = await p.market.login("dev-canceller-%s" % run_id, "canceller").completed
	check(login.ok, "a player logs in before cancelling a read")
	var completions := [0]
	var pending: MarketRequest = p.market.refresh_listings({})
	pending.completed.connect(func(_r): completions[0] += 1)
	check(pending.cancel(), "the read is cancelled")
	check(p.data.change_save_path(save_file("canceller_2")) == "", "the save switches with the cancelled read in flight")
	await until(func(): return pending.done, 5.0)
	for i in 30:
		await get_tree().process_frame
	check(pending.done and pending.result.code == "cancelled" and completions[0] == 1, "a cancelled read across a save switch completes once, cancelled (%s, %d)" % [pending.result, completions[0]])
	var heard := events("canceller", "listings_updated").filter(func(e): return e[0] == pending.id)
	check(heard.is_empty(), "its answer is not signalled after the switch")
	var fresh: MarketRequest = p.market.refresh_listings({})
	var fresh_result: MarketResult = await fresh.completed
	var fresh_heard := events("canceller", "listings_updated").filter(func(e): return e[0] == fresh.id)
	check(fresh_result.ok and fresh_heard.size() == 1 and completions[0] == 1, "a read on the new save is answered and signalled once; the cancelled one stays silent (%s)" % fresh_result.message)
	p.market.queue_free()
	p.data.queue_free()
	await get_tree().process_frame


## The save's folder disappears under a running game (a removed USB stick,
## a cloud-sync client moving it): flush() says save_failed, nothing in
## memory is lost, and the write goes through once the folder is back.
func check_save_folder_gone() -> void:
	if OS.has_feature("windows"):
		# Windows refuses to move a folder holding the save's open lock file.
		print("  skip  the save folder check: a folder with an open file cannot be moved on Windows")
		return
	var folder := "user://checks_%s/vanishing" % run_id
	DirAccess.make_dir_recursive_absolute(folder)
	var path := folder + "/save.json"
	var data := LocalPlayerData.new()
	data.save_path = path
	add_child(data)
	check(data.add_credits(10) == "" and data.flush() == "", "a save in its own folder is written")
	var moved := folder + "_moved"
	check(DirAccess.rename_absolute(folder, moved) == OK, "the save's folder is moved away")
	check(data.add_credits(5) == "", "a change is taken while the folder is gone")
	check(data.flush() == "save_failed", "flush() answers save_failed when the write cannot happen")
	check(data.get_credits() == 15, "nothing in memory is lost (%d)" % data.get_credits())
	check(DirAccess.rename_absolute(moved, folder) == OK, "the folder comes back")
	check(data.flush() == "", "the next flush writes it")
	data.queue_free()
	await get_tree().process_frame
	var again := LocalPlayerData.new()
	again.save_path = path
	add_child(again)
	check(again.get_credits() == 15 and again.validate_inventory().is_empty(), "the save read back has every credit (%d)" % again.get_credits())
	again.queue_free()
	await get_tree().process_frame


func check_damaged_save_reported_to_ready_connection() -> void:
	# Two good saves (the first becomes the backup), then damage the main file.
	var writer := LocalPlayerData.new()
	writer.save_path = save_file("damaged")
	add_child(writer)
	writer.add_credits(10)
	writer.flush()
	writer.add_credits(5)
	writer.flush()
	writer.queue_free()
	await get_tree().process_frame
	# Quitting would close the file; here the save stays open in this game,
	# so close it by switching the (now node-less) slot away.
	var closer := LocalPlayerData.new()
	closer.save_path = save_file("damaged")
	add_child(closer)
	check(closer.get_credits() == 15, "a node on the same save picks up where the freed one was")
	check(closer.change_save_path(save_file("damaged_closer")) == "", "and can switch it away (closing the file)")
	closer.queue_free()
	await get_tree().process_frame
	var f := FileAccess.open(ProjectSettings.globalize_path(save_file("damaged")), FileAccess.WRITE)
	f.store_string("{\"version\": 2, \"credi")
	f.close()
	var parent := make_slot_parent("damaged")
	add_child(parent)
	await until(func(): return parent.recovered.size() > 0, 3.0)
	check(parent.recovered.size() == 1, "recovered_from_backup reaches a connection made in the parent's _ready")
	check(parent.get_node("Data").get_credits() == 10, "the backup's content was loaded")
	parent.queue_free()
	await get_tree().process_frame


# A purchase answered on market A (the answer lost) is never sent to
# another market: pointed at B, it waits with its hold; pointed back at A
# (another address of the same market), it settles as A's purchase.
func check_trade_waits_for_its_market() -> void:
	var lossy := OS.get_environment("MARKET_LOSSY_URL")
	var other := OS.get_environment("MARKET_GRANTS_URL")
	if lossy == "" or other == "":
		print("  skip  a trade waits for its market (no MARKET_LOSSY_URL)")
		return
	var ab_seller := make_player("ab_seller", 0)
	ab_seller.market.login("dev-ab_seller-%s" % run_id, "ab_seller")
	await until(func(): return events("ab_seller", "logged_in").size() == 1)
	ab_seller.data.add_item("map", 1)
	ab_seller.market.create_listing("map", 1, 30)
	await until(func(): return events("ab_seller", "listing_created").size() == 1)
	var listing: MarketListing = events("ab_seller", "listing_created")[0][1]
	var ab_buyer := make_player("ab_buyer", 100, self, lossy)
	ab_buyer.market.login("dev-ab_buyer-%s" % run_id, "ab_buyer")
	await until(func(): return events("ab_buyer", "logged_in").size() == 1)
	var credits_before: int = ab_buyer.data.get_credits()
	ab_buyer.market.buy_listing(listing.id, 30)
	var retried := await until(func():
		var t: Array = ab_buyer.market.get_pending_trades()
		return t.size() == 1 and t[0].attempts > 0)
	check(retried, "the purchase's answer is lost and it is retried")
	ab_buyer.market.server_url = other
	var waiting := await until(func():
		var t: Array = ab_buyer.market.get_pending_trades()
		return t.size() == 1 and t[0].waiting_for_server != "")
	check(waiting, "pointed at another market, the trade waits for its own (%s)" % str(ab_buyer.market.get_pending_trades()))
	check(events("ab_buyer", "purchase_failed").is_empty() and events("ab_buyer", "hold_released").is_empty(), "nothing released on another market")
	check(ab_buyer.data.get_held_credits() == 30, "the hold stays while it waits")
	ab_buyer.market.server_url = server_url
	var settled := await until(func(): return events("ab_buyer", "purchase_succeeded").size() == 1)
	check(settled, "pointed back at its market, the trade settles there")
	check(ab_buyer.data.get_credits() == credits_before - 30 and ab_buyer.data.get_held_credits() == 0 and ab_buyer.data.get_item_count("map") == 1, "bought once: 30 credits spent, the map")
	for p in [ab_seller, ab_buyer]:
		p.market.queue_free()
		p.data.queue_free()


func check_server_grants() -> void:
	var url := OS.get_environment("MARKET_GRANTS_URL")
	var run := OS.get_environment("MARKET_GRANTS_RUN")
	if url == "":
		print("  skip  server grants (no MARKET_GRANTS_URL)")
		return
	var gs := make_player("g_seller", 0, self, url)
	var ga := make_player("g_alice", 0, self, url)
	var gb := make_player("g_bob", 0, self, url)
	gs.market.login("gs-" + run, "gs")
	ga.market.login("ga-" + run, "ga")
	gb.market.login("gb-" + run, "gb")
	# Logging in to a server-grants market mirrors the account at once.
	await until(func(): return ga.data.get_market_account().credits == 100 and gb.data.get_market_account().credits == 100 and gs.data.get_market_account().stash.get("relic", 0) == 1)
	check(ga.data.get_market_account()["mode"] == "server_grants", "the market's policy is known after login")
	check(ga.data.get_market_account()["credits"] == 100, "granted credits show in get_market_account()")
	gs.market.create_listing("relic", 1, 60)
	await until(func(): return events("g_seller", "listing_created").size() == 1)
	check(events("g_seller", "listing_created").size() == 1, "a granted item is listed from the market account")
	var listing: MarketListing = events("g_seller", "listing_created")[0][1]
	ga.market.buy_listing(listing["id"], 60)
	gb.market.buy_listing(listing["id"], 60)
	check(ga.data.get_market_account()["held_credits"] == 60 and ga.data.get_credits() == 0, "the purchase holds account credits, not the save's")
	await until(func(): return events("g_alice", "purchase_succeeded").size() + events("g_alice", "purchase_failed").size() + events("g_bob", "purchase_succeeded").size() + events("g_bob", "purchase_failed").size() >= 2)
	var winner: Dictionary = ga if events("g_alice", "purchase_succeeded").size() == 1 else gb
	var loser: Dictionary = gb if winner == ga else ga
	check(events(winner.label, "purchase_succeeded").size() == 1 and events(loser.label, "purchase_failed").size() == 1, "one granted buyer wins")
	check(loser.data.get_market_account()["held_credits"] == 0 and loser.data.get_market_account()["available_credits"] == 100, "the loser's hold is released")
	winner.market.refresh_market_account()
	await until(func(): return events(winner.label, "market_account_updated").size() >= 2)
	var server_view: MarketAccount = events(winner.label, "market_account_updated")[-1][1]
	var mirror: MarketAccount = winner.data.get_market_account()
	check(server_view["credits"] == 40 and mirror["credits"] == 40, "get_market_account() matches the server (40 left)")
	check(server_view["stash"].get("relic", 0) == 1 and mirror["stash"].get("relic", 0) == 1, "and the item is in the account")
	for p in [gs, ga, gb]:
		p.market.queue_free()
		p.data.queue_free()
	await get_tree().process_frame


func check_scene_change_with_trade_in_flight(seller: Dictionary) -> void:
	if slow_url == "":
		print("  skip  scene change with a trade in flight (no MARKET_SLOW_URL)")
		return
	seller.data.add_item("voyage_token", 1)
	var created_before := events("seller", "listing_created").size()
	seller.market.create_listing("voyage_token", 1, 30)
	await until(func(): return events("seller", "listing_created").size() > created_before)
	var listing: MarketListing = events("seller", "listing_created")[-1][1]
	var shop := Node.new()
	add_child(shop)
	var carol := make_player("carol", 100, shop, slow_url)
	carol.market.login("dev-carol-%s" % run_id, "carol")
	await until(func(): return events("carol", "logged_in").size() == 1)
	var carol_buy: MarketRequest = carol.market.buy_listing(listing["id"], 30)
	for i in 3:
		await get_tree().process_frame
	check(carol.data.get_held_credits() == 30, "the purchase is in flight (held)")
	# The shop scene goes away mid-trade.
	shop.queue_free()
	var worst := 0
	for i in 20:
		var t0 := Time.get_ticks_usec()
		await get_tree().process_frame
		worst = max(worst, Time.get_ticks_usec() - t0)
	check(worst < 50000, "leaving the scene blocks no frame (worst %d µs)" % worst)
	# The next scene opens the same save: the trade settles there.
	var shop2 := Node.new()
	add_child(shop2)
	var carol2 := make_player("carol", 0, shop2)
	await until(func(): return carol2.data.get_item_count("voyage_token") == 1 and carol2.data.get_held_credits() == 0, 15.0)
	check(carol2.data.get_item_count("voyage_token") == 1, "the trade settled after the scene change")
	check(carol2.data.get_credits() == 70 and carol2.data.get_held_credits() == 0, "debited once")
	await until(func(): return carol_buy.done)
	check(carol_buy.is_ok() and carol_buy.result.purchase.listing_id == listing["id"], "the request made by the freed node completed too")
	shop2.queue_free()
	await get_tree().process_frame


## Buy orders, partial fills, expiry and deliveries, as a game uses them:
## an order holds its price at once and rests; a listing sells into it at the
## bid; the items wait as deliveries until collected; a lot is bought in
## parts; a listing past its time is refused and taken back; fees quoted.
func check_orders_partial_fills_expiry_and_deliveries() -> void:
	var item := "ore_" + run_id
	var ob := make_player("order_buyer", 1000)
	var sel := make_player("order_seller", 0)
	sel.data.add_item(item, 6)
	var logins := [await ob.market.login("dev-ob-" + run_id, "ob").completed, await sel.market.login("dev-sel-" + run_id, "sel").completed]
	check(logins[0].ok and logins[1].ok, "order players log in")

	var order_request: MarketRequest = ob.market.place_buy_order(item, 4, 30)
	check(ob.data.get_held_credits() == 120 and ob.data.get_credits() == 880, "place_buy_order holds quantity × max_price at once")
	var placed: MarketResult = await order_request.completed
	check(placed.ok and placed.order.status == "active" and placed.order.quantity_remaining == 4, "the order rests (%s)" % placed)
	check(ob.data.get_held_credits() == 0 and ob.data.get_credits() == 880, "its credits are the order's escrow now")

	var sold: MarketResult = await sel.market.create_listing(item, 3, 25).completed
	check(sold.ok and sold.listing.status == "sold" and sold.listing.quantity_remaining == 0, "a listing below the bid sells into it at once (%s)" % sold)
	var got: MarketResult = await ob.market.collect_deliveries().completed
	check(got.ok and got.deliveries.size() == 1 and ob.data.get_item_count(item) == 3, "the order's items arrive once collected (%s)" % got)
	var again: MarketResult = await ob.market.collect_deliveries().completed
	check(again.ok and again.deliveries.is_empty() and ob.data.get_item_count(item) == 3, "a second collect brings nothing")

	# One unit left on the order at 30; two listed at 20: one fills the
	# order, one rests and is bought directly, in part of a lot.
	var lot: MarketResult = await sel.market.create_listing(item, 2, 20).completed
	check(lot.ok and lot.listing.quantity_remaining == 1, "the rest of the order took one unit of the lot")
	var part: MarketResult = await ob.market.buy_listing(lot.listing.id, 20, 1).completed
	check(part.ok and part.purchase.quantity == 1 and part.purchase.price == 20, "buy_listing with a quantity buys part of a lot (%s)" % part)
	var more: MarketResult = await ob.market.buy_listing(lot.listing.id, 20, 1).completed
	check(not more.ok and more.code == "already_sold", "nothing left to buy: already_sold")
	got = await ob.market.collect_deliveries().completed
	check(got.ok and ob.data.get_item_count(item) == 5, "the order's last unit arrives")
	var orders: MarketResult = await ob.market.get_orders("closed").completed
	check(orders.ok and orders.orders.any(func(o): return o.id == placed.order.id and o.status == "filled"), "get_orders shows the filled order")

	# An order nobody sells into: cancelled, its escrow comes back.
	var idle: MarketResult = await ob.market.place_buy_order(item, 2, 5).completed
	var before: int = ob.data.get_credits()
	var cancelled: MarketResult = await ob.market.cancel_order(idle.order.id).completed
	check(cancelled.ok and cancelled.returned == 10 and ob.data.get_credits() == before + 10, "cancel_order returns the escrow (%s)" % cancelled)

	# A listing past its time: nothing fills it; the seller takes it back.
	var short: MarketResult = await sel.market.create_listing(item, 1, 40, 1).completed
	check(short.ok and short.listing.expires_at > 0, "a listing can ask for a short life")
	await get_tree().create_timer(2.2).timeout
	var late: MarketResult = await ob.market.buy_listing(short.listing.id, 40, 1).completed
	check(not late.ok and late.code == "listing_expired", "an expired listing is refused (%s)" % late)
	var back: MarketResult = await sel.market.cancel_listing(short.listing.id).completed
	check(back.ok and sel.data.get_item_count(item) == 0 + 1, "its seller takes the unsold item back")

	var quote: MarketResult = await sel.market.quote_fees(2, 50).completed
	check(quote.ok and quote.quote.buyer_pays == 100 and quote.quote.seller_receives == 100 - quote.quote.listing_fee - quote.quote.sales_tax, "quote_fees says what the buyer pays and the seller receives")

	# Browsing by price and prefix.
	sel.data.add_item(item, 2)
	await sel.market.create_listing(item, 1, 70).completed
	await sel.market.create_listing(item, 1, 60).completed
	var cheap: MarketResult = await ob.market.refresh_listings({"item_prefix": "ore_" + run_id.left(4), "sort": "price", "max_price": 65}).completed
	check(cheap.ok and cheap.listings.size() >= 1 and cheap.listings.all(func(l): return l.price <= 65), "refresh_listings sorts and filters by price and prefix (%s)" % cheap.message)
	var bad_sort: MarketResult = await ob.market.refresh_listings({"sort": "random"}).completed
	check(not bad_sort.ok and bad_sort.code == "invalid_request", "an unknown sort is refused")
	# A search box: items by id prefix (this server has no catalog, so no names).
	var found: MarketResult = await ob.market.search_items(item.left(item.length() - 1)).completed
	check(found.ok and not found.catalog and found.items.any(func(i): return i.item_id == item and i.name == ""), "search_items finds the item by its id's start (%s)" % found)
	var searched: MarketResult = await ob.market.refresh_listings({"search": item, "sort": "price"}).completed
	check(searched.ok and searched.listings.size() >= 2 and searched.listings.all(func(l): return l.item_id == item), "refresh_listings by search")
	var empty_search: MarketResult = await ob.market.search_items("").completed
	check(not empty_search.ok and empty_search.code == "invalid_argument", "an empty search is refused before it is sent")
	for l in (await sel.market.refresh_listings({"item_id": item}).completed).listings:
		await sel.market.cancel_listing(l.id).completed

	# Market data for the item: the summary, the book's depth, the history.
	var summary: MarketResult = await ob.market.get_market_summary(item).completed
	check(summary.ok and summary.summary.last_price == 20 and summary.summary.trades_24h == 3, "get_market_summary (%s)" % summary)
	var depth: MarketResult = await ob.market.get_depth(item).completed
	check(depth.ok and depth.depth.asks.is_empty() and depth.depth.bids.is_empty(), "get_depth of an empty book")
	var history: MarketResult = await ob.market.get_price_history(item, "hour").completed
	check(history.ok and history.history.candles.size() >= 1 and history.history.candles[-1].volume >= 1, "get_price_history has candles (%s)" % history)

	var claimed: MarketResult = await sel.market.claim_proceeds().completed
	check(claimed.ok, "the seller claims the fills' proceeds")
	var credits: int = ob.data.get_credits() + ob.data.get_held_credits() + sel.data.get_credits() + sel.data.get_held_credits()
	check(credits == 1000, "credits conserved through orders, fills and deliveries (%d)" % credits)
	check(ob.data.get_item_count(item) + sel.data.get_item_count(item) == 6 + 2, "items conserved (6, and 2 listed and taken back while browsing)")
	check(ob.data.validate_inventory().is_empty() and sel.data.validate_inventory().is_empty(), "both saves validate")


## The live market: a second client's purchase removes the row from the
## first client's shop without a refresh; what sold while the seller was
## away arrives once, as one summary, after the next login — never again.
func check_live_market() -> void:
	var item := "live_" + run_id
	var shop := make_player("live_shop", 0)
	var buyer := make_player("live_buyer", 1000)
	shop.data.add_item(item, 1)
	shop.market.watched_items = PackedStringArray([item])
	var rows := {}
	var live := []
	shop.market.market_live_changed.connect(func(up, _reason): live.append(up))
	shop.market.market_listing_changed.connect(func(_change, listing):
		if listing.item_id != item:
			return
		if listing.status == "active":
			rows[listing.id] = listing
		else:
			rows.erase(listing.id))
	var logins := [await shop.market.login("dev-live-shop-" + run_id, "shop").completed, await buyer.market.login("dev-live-buyer-" + run_id, "buyer").completed]
	check(logins[0].ok and logins[1].ok, "live players log in")
	check(await until(func(): return live.has(true), 10.0), "the shop goes live after login (market_live_changed)")
	var listed: MarketResult = await shop.market.create_listing(item, 1, 10).completed
	var page: MarketResult = await shop.market.refresh_listings({"item_id": item}).completed
	for l in page.listings:
		rows[l.id] = l
	check(listed.ok and rows.has(listed.listing.id), "the shop shows its listing")
	var bought: MarketResult = await buyer.market.buy_listing(listed.listing.id, 10).completed
	check(bought.ok, "another client buys it (%s)" % bought)
	check(await until(func(): return not rows.has(listed.listing.id), 10.0), "the row leaves the first client's shop without a refresh")

	# Away: the seller lists three units and leaves (its save closes); the
	# buyer takes two, one at a time.
	var seller := make_player("live_away", 0)
	var notes := []
	seller.market.notification_received.connect(func(n): notes.append(n))
	seller.data.add_item(item, 3)
	var in_: MarketResult = await seller.market.login("dev-live-away-" + run_id, "away").completed
	var lot: MarketResult = await seller.market.create_listing(item, 3, 5).completed
	check(in_.ok and lot.ok, "the seller lists three units")
	var home: String = seller.data.save_path
	check(seller.data.change_save_path(save_file("live_elsewhere")) == "", "the seller leaves (another save)")
	for i in 2:
		var part: MarketResult = await buyer.market.buy_listing(lot.listing.id, 5, 1).completed
		check(part.ok, "a unit sells while the seller is away (%s)" % part)
	check(seller.data.change_save_path(home) == "", "the seller comes back")
	await seller.market.login().completed
	check(await until(func(): return notes.size() >= 1, 10.0), "what sold while away arrives after login")
	await get_tree().create_timer(0.5).timeout
	check(notes.size() == 1 and notes[0].kind == "sold" and notes[0].quantity == 2 and notes[0].fills == 2 and notes[0].credits == 10, "as one summary of two fills (%s)" % [notes])
	# Leave and come back again: nothing new, nothing twice.
	check(seller.data.change_save_path(save_file("live_elsewhere")) == "", "the seller leaves again")
	check(seller.data.change_save_path(home) == "", "and comes back")
	await seller.market.login().completed
	await get_tree().create_timer(1.0).timeout
	check(notes.size() == 1, "the summary is not told twice (%d)" % notes.size())
	for p in [shop, buyer, seller]:
		p.market.queue_free()
		p.data.queue_free()
	await get_tree().process_frame


func check_identity() -> void:
	var token := OS.get_environment("MARKET_IDENTITY_TOKEN")
	if token == "":
		check(false, "the harness passes MARKET_IDENTITY_TOKEN")
		return
	# A player without an account plays on one device, then links the
	# game's account (a token its backend minted).
	var first := make_player("id_first", 0)
	var in_: MarketResult = await first.market.login("dev-" + "%032x" % [randi()], "pilot").completed
	check(in_.ok, "the device player logs in")
	var code: String = first.market.get_recovery_code()
	check(code.length() == 34 and code.count("-") == 6, "a device id the addon made has a recovery code (%s)" % code)
	var linked: MarketResult = await first.market.link_identity(token).completed
	check(linked.ok and linked.identities.identities.size() == 1 and linked.identities.device, "link_identity links the account (%s)" % [linked])
	var listed: MarketResult = await first.market.get_identities().completed
	check(listed.ok and listed.identities.identities[0].subject == OS.get_environment("MARKET_IDENTITY_SUBJECT"), "get_identities names it")
	# A second device logs in by token: the same player.
	var second := make_player("id_second", 0)
	var by_token: MarketResult = await second.market.login_with_token(OS.get_environment("MARKET_IDENTITY_TOKEN_2"), "pilot").completed
	check(by_token.ok and by_token.player_id == in_.player_id, "login_with_token on another device is the same player (%s)" % [by_token])
	check(second.data.get_player_id() == in_.player_id, "and the save knows it")
	# A forged token is refused with a stable code.
	var forged: MarketResult = await second.market.login_with_token(OS.get_environment("MARKET_FORGED_TOKEN")).completed
	check(not forged.ok and forged.code == "identity_refused", "a forged token is refused (%s)" % [forged])
	# A third device types the recovery code.
	var third := make_player("id_third", 0)
	var typo: MarketResult = await third.market.login_with_recovery_code("0000-0000-0000-0000-0000-0000-0001").completed
	check(not typo.ok and typo.code == "invalid_argument", "a mistyped recovery code is refused (%s)" % [typo])
	var recovered: MarketResult = await third.market.login_with_recovery_code(code.to_lower().replace("-", " ")).completed
	check(recovered.ok and recovered.player_id == in_.player_id, "the recovery code logs in as the player (%s)" % [recovered])
	for p in [first, second, third]:
		p.market.queue_free()
		p.data.queue_free()
	await get_tree().process_frame
