extends Node
## What the marketplace costs the main thread, measured inside Godot.
##
## Run by `cargo bench -p marketplace-e2e --bench godot_frame_budget` (and
## `cargo xtask bench` when GDRUST_GODOT_BIN is set), which starts a server,
## a proxy adding 20 ms to every exchange, seeds the listings and writes the
## plan this scene reads from MARKET_BENCH_PLAN (a JSON file):
## `{"url": proxy, "cases": [{"name", "client", "listings": [[id, price]…],
## "inventory": items, "rounds": batches}]}`.
##
## Clients: "one_http" (one HTTPRequest node, one purchase at a time — the
## old GDScript client), "pool32" (32 HTTPRequest nodes), "addon"
## (TradingMarketplace, every purchase at once). For each case it prints
## one line `BENCH {json}`: wall time, frames, the main thread's process
## time per frame in total, p99 and worst. The game runs at 144 fps at most,
## like a game with a frame cap.
##
## A frame's process time is measured from a probe node that processes
## first (lowest `process_priority`) to the end of the calls deferred by one
## that processes last: every node's `_process`, HTTPRequest's polling and
## its deferred completions, the addon's frame work, the signal handlers and
## coroutines they resume. The work a client does to start its requests (in
## the frame the run begins) is added to that frame. (`Performance.TIME_PROCESS` cannot be
## used: Godot updates it once a second with the worst frame of that second.)

var url := ""
var samples: Array[float] = []
var measuring := false
var frame_started := 0
var cases_run := 0
## Work done outside the probes' window (starting requests, before the
## frame's first `_process`), added to the next frame recorded.
var unrecorded_usec := 0


## Processes first in every frame: notes when the process step began.
class FirstProbe extends Node:
	var bench: Node

	func _process(_delta: float) -> void:
		bench.frame_started = Time.get_ticks_usec()


## Processes last in every frame and records the frame's length once the
## calls deferred during it have run too: HTTPRequest reports a finished
## request through a deferred call, so a GDScript client's handling of the
## answer (and its next request) happens there, after every `_process`.
class LastProbe extends Node:
	var bench: Node

	func _process(_delta: float) -> void:
		if bench.measuring and bench.frame_started > 0:
			record.call_deferred(bench.frame_started)

	func record(started: int) -> void:
		var spent: int = Time.get_ticks_usec() - started + bench.unrecorded_usec
		bench.unrecorded_usec = 0
		bench.samples.append(spent / 1e6)


func _ready() -> void:
	Engine.max_fps = 144
	process_mode = Node.PROCESS_MODE_ALWAYS
	var plan_path := OS.get_environment("MARKET_BENCH_PLAN")
	var plan = JSON.parse_string(FileAccess.get_file_as_string(plan_path))
	if plan == null:
		printerr("BENCH-ERROR cannot read the plan at ", plan_path)
		get_tree().quit(2)
		return
	url = plan.url
	var first := FirstProbe.new()
	first.bench = self
	first.process_priority = -1000000
	first.process_mode = Node.PROCESS_MODE_ALWAYS
	var last := LastProbe.new()
	last.bench = self
	last.process_priority = 1000000
	last.process_mode = Node.PROCESS_MODE_ALWAYS
	add_child(first)
	add_child(last)
	for case in plan.cases:
		var result: Dictionary = await run_case(case)
		print("BENCH ", JSON.stringify(result))
	print("BENCH-DONE")
	get_tree().quit(0)


func run_case(case: Dictionary) -> Dictionary:
	var listings: Array = case.listings
	var inventory: int = case.get("inventory", 0)
	var client: String = case.client
	# Player names are short: a number per case and run.
	cases_run += 1
	var buyer := "bench%d_%d" % [cases_run, Time.get_ticks_msec() % 100000]
	var ok := 0
	var issue_usec := 0
	var call_usec: Array[float] = []
	var started := 0
	var finished := 0
	match client:
		"one_http", "pool32":
			var token: String = await http_login(buyer)
			if token.is_empty():
				return {"name": case.name, "error": "login through HTTPRequest failed"}
			var width := 1 if client == "one_http" else 32
			var nodes := []
			for i in width:
				var node := HTTPRequest.new()
				add_child(node)
				nodes.append(node)
			var queue := listings.duplicate()
			var done := [0, 0]  # finished, ok
			await settle(3)
			start_measuring()
			started = Time.get_ticks_usec()
			for node in nodes:
				http_worker(node, token, queue, done)
			issue_usec = Time.get_ticks_usec() - started
			unrecorded_usec += issue_usec
			while done[0] < listings.size():
				await get_tree().process_frame
			finished = Time.get_ticks_usec()
			ok = done[1]
			for node in nodes:
				node.queue_free()
		"addon":
			var data := LocalPlayerData.new()
			data.save_path = "user://bench/%s.json" % buyer
			add_child(data)
			var market := TradingMarketplace.new()
			market.server_url = url
			market.max_requests_per_second = 0.0
			market.player_data = data
			add_child(market)
			var total := 0
			for l in listings:
				total += int(l[1])
			data.add_credits(total)
			for i in inventory:
				data.add_item("cargo_%d" % i, 1)
			var login: MarketResult = await market.login(buyer, buyer).completed
			if not login.ok:
				return {"name": case.name, "error": "login: %s" % login.message}
			await settle(10)
			var done := [0, 0]
			market.purchase_succeeded.connect(func(_id, _p): done[0] += 1; done[1] += 1)
			market.purchase_failed.connect(func(_id, _l, _c, _m, _p): done[0] += 1)
			# `rounds` > 1: the listings are bought in that many batches, one
			# a frame, each timed (the cost of one call, less at the mercy of
			# one noisy frame). Each batch's time goes to the frame it runs
			# in, before that frame's probe starts.
			var rounds: int = clampi(int(case.get("rounds", 1)), 1, maxi(1, listings.size()))
			var per_round := listings.size() / rounds
			start_measuring()
			started = Time.get_ticks_usec()
			for r in rounds:
				var end := listings.size() if r + 1 == rounds else (r + 1) * per_round
				var batch := listings.slice(r * per_round, end)
				var batch_started := Time.get_ticks_usec()
				for l in batch:
					market.buy_listing(int(l[0]), int(l[1]))
				var spent := Time.get_ticks_usec() - batch_started
				call_usec.append(float(spent) / maxi(1, batch.size()))
				issue_usec += spent
				unrecorded_usec += spent
				if r + 1 < rounds:
					await get_tree().process_frame
			var deadline := Time.get_ticks_msec() + 300_000
			while done[0] < listings.size():
				if Time.get_ticks_msec() > deadline:
					measuring = false
					return {"name": case.name, "error": "%d of %d purchases answered in 5 minutes" % [done[0], listings.size()]}
				await get_tree().process_frame
			finished = Time.get_ticks_usec()
			ok = done[1]
			market.queue_free()
			data.queue_free()
	measuring = false
	var sorted := samples.duplicate()
	sorted.sort()
	var total_ms := 0.0
	for s in samples:
		total_ms += s * 1000.0
	var n := sorted.size()
	call_usec.sort()
	return {
		"call_us_min": call_usec[0] if not call_usec.is_empty() else 0.0,
		"call_us_median": call_usec[call_usec.size() / 2] if not call_usec.is_empty() else 0.0,
		"call_rounds": call_usec.size(),
		"name": case.name,
		"client": client,
		"purchases": listings.size(),
		"ok": ok,
		"inventory": inventory,
		"wall_s": (finished - started) / 1e6,
		"frames": n,
		"issue_ms": issue_usec / 1000.0,
		"process_total_ms": total_ms,
		"process_p99_ms": sorted[min(n - 1, int(n * 0.99))] * 1000.0 if n > 0 else 0.0,
		"process_worst_ms": sorted[n - 1] * 1000.0 if n > 0 else 0.0,
		"process_worst_after_first_ms": samples.slice(1).max() * 1000.0 if n > 1 else 0.0,
	}


func start_measuring() -> void:
	samples.clear()
	unrecorded_usec = 0
	measuring = true


## Lets a few frames pass (saves, logins settle) before measuring.
func settle(frames: int) -> void:
	for i in frames:
		await get_tree().process_frame


func http_login(device: String) -> String:
	var node := HTTPRequest.new()
	add_child(node)
	node.request(url + "/v1/sessions", ["Content-Type: application/json"], HTTPClient.METHOD_POST, JSON.stringify({"device_id": device, "name": device}))
	var res: Array = await node.request_completed
	node.queue_free()
	var body = JSON.parse_string(res[3].get_string_from_utf8())
	return body.token if body is Dictionary and body.has("token") else ""


## One HTTPRequest node buying from the shared queue until it is empty, as
## a GDScript client would: a JSON body, the answer parsed.
func http_worker(node: HTTPRequest, token: String, queue: Array, done: Array) -> void:
	while not queue.is_empty():
		var l = queue.pop_back()
		var id := int(l[0])
		var price := int(l[1])
		var headers := [
			"Content-Type: application/json",
			"Authorization: Bearer " + token,
			"Idempotency-Key: bench-%d-%d" % [id, Time.get_ticks_usec()],
		]
		node.request(url + "/v1/listings/%d/purchase" % id, headers, HTTPClient.METHOD_POST, JSON.stringify({"expected_price": price, "deposit": price}))
		var res: Array = await node.request_completed
		var body = JSON.parse_string(res[3].get_string_from_utf8())
		done[0] += 1
		if res[1] >= 200 and res[1] < 300 and body is Dictionary and body.has("purchase"):
			done[1] += 1
		elif done[0] - done[1] == 1:
			printerr("BENCH-WARN first failed purchase: HTTP ", res[1], " ", res[3].get_string_from_utf8().left(200))
