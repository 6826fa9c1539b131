extends Node
## The addon's check suite, against a running marketplace server.
##
## Headless:  godot --headless --path godot res://tests/test_runner.tscn
## In the editor: open this scene and press F6.
## The server is MARKET_SERVER_URL from the environment (default
## http://127.0.0.1:8080). Exits with 0 when every check passed, 1 otherwise.

var server_url := "http://127.0.0.1:8080"
var checks := 0
var failures := 0
var run_id := ""
## label -> Array of [signal_name, args...]
var seen := {}


func _ready() -> void:
	var env := OS.get_environment("MARKET_SERVER_URL")
	if env != "":
		server_url = env
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


func make_player(label: String, credits: int) -> Dictionary:
	var data := LocalPlayerData.new()
	data.name = label + "_data"
	data.save_path = "user://checks_%s/%s.json" % [run_id, label]
	add_child(data)
	var market := TradingMarketplace.new()
	market.name = label + "_market"
	market.server_url = server_url
	market.max_requests_per_second = 0.0
	market.request_timeout_sec = 5.0
	add_child(market)
	market.player_data = market.get_path_to(data)
	market.logged_in.connect(func(player_id): record(label, ["logged_in", player_id]))
	market.listings_updated.connect(func(listings): record(label, ["listings_updated", listings]))
	market.listing_created.connect(func(id, listing): record(label, ["listing_created", id, listing]))
	market.purchase_succeeded.connect(func(id, purchase): record(label, ["purchase_succeeded", id, purchase]))
	market.purchase_failed.connect(func(id, listing_id, code, message): record(label, ["purchase_failed", id, listing_id, code, message]))
	market.proceeds_claimed.connect(func(id, amount): record(label, ["proceeds_claimed", id, amount]))
	market.request_failed.connect(func(id, code, message): record(label, ["request_failed", id, code, message]))
	market.busy_changed.connect(func(busy): record(label, ["busy_changed", busy]))
	data.hold_released.connect(func(hold_id, reason): record(label, ["hold_released", hold_id, reason]))
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
	var listing_request: int = seller.market.create_listing("relic", 1, 100)
	check(seller.data.get_item_count("relic") == 2, "create_listing escrows the item at once")
	await until(func(): return events("seller", "listing_created").size() == 1)
	var created := events("seller", "listing_created")
	check(created.size() == 1 and created[0][0] == listing_request, "listing_created carries the request id")
	if created.size() != 1:
		return
	var listing: Dictionary = created[0][1]
	check(listing["item_id"] == "relic" and listing["price"] == 100 and listing["status"] == "active", "the listing has the server's fields")

	# Browse
	alice.market.refresh_listings({"item_id": "relic"})
	await until(func(): return events("alice", "listings_updated").size() >= 1)
	var pages := events("alice", "listings_updated")
	var ids := []
	if pages.size() > 0:
		for l in pages[0][0]:
			ids.append(l["id"])
	check(ids.has(listing["id"]), "refresh_listings finds the new listing")

	# Buy: the hold is placed at once, committed on success
	var buy_request: int = alice.market.buy_listing(listing["id"], 100)
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
	var contested: Dictionary = events("seller", "listing_created")[1][1]
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
	var poor: int = bob.market.buy_listing(contested["id"] + 1000, 1000000)
	await until(func(): return events("bob", "purchase_failed").any(func(f): return f[0] == poor))
	var poor_fail := events("bob", "purchase_failed").filter(func(f): return f[0] == poor)
	check(poor_fail.size() == 1 and poor_fail[0][2] == "insufficient_credits", "insufficient_credits refused locally")
	var bad: int = bob.market.refresh_listings({"colour": "red"})
	await until(func(): return events("bob", "request_failed").any(func(f): return f[0] == bad))
	check(events("bob", "request_failed").any(func(f): return f[0] == bad and f[1] == "invalid_argument"), "a bad filter is refused with invalid_argument")

	# Claim proceeds
	seller.market.claim_proceeds()
	await until(func(): return events("seller", "proceeds_claimed").size() >= 2)
	var total := 0
	for c in events("seller", "proceeds_claimed"):
		total += c[1]
	check(total == 250 and seller.data.get_credits() == 250, "the seller claims both sales once")

	# Conservation across the three players
	var credits := 0
	for p in [seller, alice, bob]:
		credits += p.data.get_credits() + p.data.get_held_credits()
	check(credits == 2000, "credits conserved across players")
	var relics := 0
	for p in [seller, alice, bob]:
		relics += p.data.get_item_count("relic")
	check(relics == 3, "items conserved across players")

	# Changing a setting restarts the client; a logged-in session logs in again
	var logins_before := events("alice", "logged_in").size()
	alice.market.max_requests_per_second = 50.0
	var after_change: int = alice.market.refresh_listings({})
	await until(func(): return events("alice", "logged_in").size() > logins_before and events("alice", "listings_updated").size() >= 2)
	check(events("alice", "logged_in").size() > logins_before, "a changed setting restarts the client and logs in again")
	check(not events("alice", "request_failed").any(func(f): return f[0] == after_change), "requests keep working after the restart")

	# Save and reload
	check(alice.data.flush(), "flush writes the save")
	var reloaded := LocalPlayerData.new()
	reloaded.save_path = alice.data.save_path
	add_child(reloaded)
	check(reloaded.get_credits() == alice.data.get_credits(), "a reloaded LocalPlayerData has the same credits")
	check(reloaded.get_item_count("relic") == alice.data.get_item_count("relic"), "and the same items")
	check(reloaded.get_player_id() == alice.data.get_player_id(), "and the same player id")
	for p in [seller, alice, bob]:
		check(p.data.validate_inventory(), "%s's data validates" % p.label)
	reloaded.queue_free()
