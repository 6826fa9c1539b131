//! The chaos simulation.
//!
//! N players trade at random — list, buy (sometimes at a stale price),
//! reprice, cancel, browse, claim — against a real server through the fault
//! proxy, which loses answers after the server committed, resets
//! connections, answers 500 and adds delays. Players crash (only what is on
//! disk survives; the journal is replayed on restart) and the server is
//! restarted mid-run. Game life happens too: settings change mid-trade,
//! players stop polling for a while (a long pause, a hitch), quit cleanly
//! and come back, their disks fail for a while, and a proxy in front of the
//! server answers with its own HTML error pages. A fixed seed reproduces the
//! same sequence of player actions (timing, and so the faults' victims, vary).
//!
//! Cheaters — modified clients speaking raw HTTP straight to the server —
//! play alongside: they buy without paying, list items they never had,
//! withdraw more than they hold, claim others' proceeds and push deposits
//! past the cap. Every such attempt must be refused; what the policy allows
//! them (deposits within the cap) stays in their market accounts.
//!
//! At the end, with the faults off and every player settled, it checks:
//! - **I1** every unit sold at most once: a listing's (and a buy order's)
//!   fills and what remains make up its quantity, sold ⇔ nothing remains,
//!   no fill above its order's price or after an expiry;
//! - **I2** credits (available + held, plus unclaimed proceeds) and items
//!   (inventories + escrow + active listings) equal what the players started with;
//! - **I3** every acknowledged purchase, sale and claim is on the server and in
//!   the player's data after all the crashes: each player's credits and items
//!   equal what the server's records say they must be;
//! - **I4** every released purchase hold had a definitive answer, and the
//!   server has no purchase by that player of that listing;
//! - **I5** every save file loads as a whole, without falling back to its backup;
//! - **I6** the server's books balance from its ledger alone (accounts,
//!   stashes, escrow and proceeds = deposits + grants − withdrawals).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use fault_proxy::Fault;
use marketplace_client::persist;
use marketplace_client::SessionEvent;
use marketplace_server::Config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::world::{fresh_postgres_database, sim_client_config, Market, SimPlayer};

#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub players: usize,
    pub ops: usize,
    pub seed: u64,
    /// `None`: a temporary SQLite file. `Some(postgres://…/postgres)`: a
    /// fresh database on that cluster.
    pub postgres_admin_url: Option<String>,
    /// Probability that a request meets a fault.
    pub fault_rate: f64,
    /// A random player crashes every this many operations (0 = never).
    pub crash_every: usize,
    /// How many times the server is restarted during the run.
    pub server_restarts: usize,
    /// A game-life event (settings change, pause, failing disk, clean
    /// reopen) happens every this many operations (0 = never).
    pub life_every: usize,
    /// Modified clients sending raw HTTP next to the honest players.
    pub cheaters: usize,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            players: 8,
            ops: 400,
            seed: 7,
            postgres_admin_url: None,
            fault_rate: 0.15,
            crash_every: 40,
            server_restarts: 2,
            life_every: 10,
            cheaters: 2,
        }
    }
}

const ITEMS: [(&str, i64); 3] = [("ore", 6), ("gem", 3), ("fuel", 4)];
const START_CREDITS: i64 = 2_000;

/// The invariant report.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub failures: Vec<String>,
    pub stats: BTreeMap<&'static str, i64>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    fn check(&mut self, name: &str, ok: bool, detail: String) {
        let line = format!("{} {name}: {detail}", if ok { "PASS" } else { "FAIL" });
        if !ok {
            self.failures.push(line.clone());
        }
        self.lines.push(line);
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "chaos run:")?;
        for (k, v) in &self.stats {
            writeln!(f, "  {k:<28} {v}")?;
        }
        writeln!(f, "invariants:")?;
        for line in &self.lines {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "{}",
            if self.ok() {
                "ALL INVARIANTS HOLD"
            } else {
                "INVARIANTS VIOLATED"
            }
        )
    }
}

/// What a player was told, kept across its crashes.
#[derive(Default)]
struct Told {
    /// listing id → purchase id, from `PurchaseSucceeded`.
    bought: Vec<(i64, i64)>,
    /// Purchase holds released: listing id, code, definitive, and the
    /// idempotency key of the attempt that was released.
    released: Vec<(i64, String, bool, Option<String>)>,
    claimed: Vec<i64>,
    /// Buy orders placed since the last look.
    placed: Vec<i64>,
    /// What a save restored from its backup had spent again before the
    /// market reported the lost trade (its shortfall), per item (`None`:
    /// credits): the game's to settle, reported to it — the market created
    /// nothing (its deposits were within the caps and its books balance).
    spent_twice: BTreeMap<Option<String>, i64>,
    /// Request id → idempotency key of every purchase attempt, also of
    /// those re-sent by a restarted session under new request ids.
    keys: HashMap<u64, String>,
}

impl Told {
    /// Learns the keys of the trades a (re)started session re-sends.
    fn learn_keys(&mut self, p: &SimPlayer) {
        for t in p.session.pending_trades(&p.store) {
            self.keys.insert(t.request_id.0, t.key);
        }
    }
}

/// A client that only watches the change stream, through the same faulty
/// proxy as the players, its connection cut now and then: at the end it
/// must have seen every public event once, in order.
struct StreamWatcher {
    client: marketplace_client::MarketClient,
    /// `seq` of every public event, in the order they came.
    seen: Vec<i64>,
    /// Where the stream started: the head of its first `ready`.
    from: Option<i64>,
    reloads: usize,
    notices: Vec<marketplace_client::client::StreamNotice>,
}

impl StreamWatcher {
    fn start(
        config: &marketplace_client::client::ClientConfig,
        device: &str,
    ) -> Result<StreamWatcher, String> {
        let client =
            marketplace_client::MarketClient::start(config.clone()).map_err(|e| e.to_string())?;
        client.set_credentials(device, "watcher");
        client
            .submit(marketplace_client::Command::Login(
                marketplace_client::client::Credentials::device(device, "watcher"),
            ))
            .map_err(|e| e.to_string())?;
        client.open_stream(Default::default(), false);
        Ok(StreamWatcher {
            client,
            seen: Vec::new(),
            from: None,
            reloads: 0,
            notices: Vec::new(),
        })
    }

    fn poll(&mut self) {
        let mut events = Vec::new();
        self.client.poll(&mut events, usize::MAX);
        self.client.poll_stream(&mut self.notices, usize::MAX);
        for notice in self.notices.drain(..) {
            match notice {
                marketplace_client::client::StreamNotice::Event(e)
                    if e.change.item_id().is_some() =>
                {
                    self.seen.push(e.seq)
                }
                marketplace_client::client::StreamNotice::Reload => self.reloads += 1,
                marketplace_client::client::StreamNotice::Live { head } => {
                    self.from.get_or_insert(head);
                }
                _ => {}
            }
        }
    }

    /// Waits for the stream to catch up with the table, then compares.
    /// Polls until the stream went live (its position fixed), so that the
    /// run has something to miss.
    fn until_live(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.from.is_none() {
            if Instant::now() > deadline {
                return Err("the watcher's stream never went live".into());
            }
            self.poll();
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Waits for the stream to catch up with the table, then compares:
    /// every public event after the stream's start, once, in order.
    fn check(&mut self, market: &Market, report: &mut Report) -> Result<(), String> {
        let from = self.from.unwrap_or(0);
        let last = market.query_i64(
            "SELECT COALESCE(MAX(seq), 0) FROM stream_events WHERE recipient_id IS NULL",
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.seen.last().copied().unwrap_or(from) < last && Instant::now() < deadline {
            self.poll();
            std::thread::sleep(Duration::from_millis(5));
        }
        let count = market.query_i64_bind(
            "SELECT COUNT(*) FROM stream_events WHERE recipient_id IS NULL AND seq > $1",
            &[from],
        )?;
        let sum = market.query_i64_bind(
            "SELECT CAST(COALESCE(SUM(seq), 0) AS BIGINT) FROM stream_events WHERE recipient_id IS NULL AND seq > $1",
            &[from],
        )?;
        let in_order = self.seen.windows(2).all(|w| w[0] < w[1]);
        let seen_sum: i64 = self.seen.iter().sum();
        // (Nothing is pruned during a run.)
        let gapless =
            market.query_i64("SELECT COALESCE(MAX(seq), 0) - COUNT(*) FROM stream_events")? == 0;
        report.check(
            "stream: every public event once, in order",
            in_order && self.seen.len() as i64 == count && seen_sum == sum && self.reloads == 1,
            format!(
                "{} of {count} public events after the stream's start (seq {from}) seen through cuts, restarts and faults, in order: {in_order}; told to reload {} time(s) (1: the start)",
                self.seen.len(),
                self.reloads
            ),
        );
        report.check(
            "stream: numbered without a gap",
            gapless,
            "the outbox's sequence numbers have no hole (commit order)".to_string(),
        );
        Ok(())
    }
}

pub fn run(cfg: &ChaosConfig) -> Result<Report, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let database = match &cfg.postgres_admin_url {
        Some(admin) => fresh_postgres_database(
            admin,
            &format!("chaos_{}_{}", cfg.seed, rand::random::<u32>()),
        )?,
        None => format!("sqlite://{}/market.sqlite", dir.path().display()),
    };
    let mut config = Config::for_tests(database);
    config.rate_limit_per_sec = 0.0;
    // The currency sink on: 2 % sales tax and a listing fee of at least 1
    // per fill, kept from the sellers' proceeds.
    config.sales_tax_bp = 200;
    config.listing_fee_bp = 50;
    config.listing_fee_min = 1;
    let mut market = Market::start(config)?;
    let client_config = sim_client_config(&market.url());
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut report = Report::default();
    let started = Instant::now();

    // Players start with credits and items.
    let mut players = Vec::new();
    for i in 0..cfg.players {
        let label = format!("p{i}");
        let mut p = SimPlayer::open(
            &label,
            &dir.path().join(format!("{label}.json")),
            client_config.clone(),
        )?;
        p.store
            .set_identity(
                &format!("chaos-{}-{i}-{}", cfg.seed, rand::random::<u32>()),
                &label,
            )
            .map_err(|e| e.to_string())?;
        p.store
            .add_credits(START_CREDITS)
            .map_err(|e| e.to_string())?;
        for (item, n) in ITEMS {
            p.store.add_item(item, n).map_err(|e| e.to_string())?;
        }
        // The starting grant is on disk before anything can crash: what the
        // game never saved, a crash may take back, and the books below
        // count the grant as given.
        p.store
            .flush(Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        p.login().map_err(|e| e.to_string())?;
        players.push(p);
    }
    let logged_in = crate::world::pump_until(&mut players, Duration::from_secs(30), |ps| {
        ps.iter().all(|p| p.player_id().is_some())
    });
    if !logged_in {
        return Err("players could not log in".into());
    }
    // A few players watch the whole market live; the rest only their own
    // (notifications): every session is live, through the faults.
    for (i, p) in players.iter_mut().enumerate() {
        if i >= 3 {
            p.session
                .watch(Vec::new(), true)
                .map_err(|e| e.to_string())?;
        }
    }
    let mut watcher = StreamWatcher::start(
        &client_config,
        &format!("chaos-watch-{}-{}", cfg.seed, rand::random::<u32>()),
    )?;
    watcher.until_live()?;

    // Faults on.
    let r = cfg.fault_rate;
    market
        .proxy
        .fault_randomly("/v1/", Fault::LoseResponse, r * 0.4);
    market
        .proxy
        .fault_randomly("/v1/", Fault::Answer500, r * 0.2);
    market.proxy.fault_randomly("/v1/", Fault::Reset, r * 0.15);
    market
        .proxy
        .fault_randomly("/v1/", Fault::Delay(Duration::from_millis(15)), r * 0.15);
    // A CDN's own error pages, after the server answered.
    market
        .proxy
        .fault_randomly("/v1/", Fault::ProxyPage(403), r * 0.05);
    market
        .proxy
        .fault_randomly("/v1/", Fault::ProxyPage(404), r * 0.05);
    // Players not polling (a pause, a loading screen) until this operation;
    // disks failing until this operation.
    let mut paused_until = vec![0usize; cfg.players];
    let mut disk_fails_until = vec![0usize; cfg.players];

    let mut cheaters = Vec::new();
    for i in 0..cfg.cheaters {
        cheaters.push(Cheater::login(
            &market,
            &format!("cheater-{}-{i}-{}", cfg.seed, rand::random::<u32>()),
        )?);
    }
    let mut told: Vec<Told> = (0..cfg.players).map(|_| Told::default()).collect();
    // Each player's buy orders as placed (to cancel some).
    let mut orders: Vec<std::collections::BTreeSet<i64>> =
        (0..cfg.players).map(|_| Default::default()).collect();
    // What players have seen on the market: listing id → (price, seller id).
    let mut known: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let mut stats: HashMap<&'static str, i64> = HashMap::new();
    let restart_at: Vec<usize> = (1..=cfg.server_restarts)
        .map(|k| k * cfg.ops / (cfg.server_restarts + 1))
        .collect();

    for op in 0..cfg.ops {
        watcher.poll();
        if op % 97 == 50 {
            // The network drops every open stream mid-way.
            market.proxy.cut_streams();
            *stats.entry("stream cuts").or_default() += 1;
        }
        if restart_at.contains(&op) {
            market.restart_server()?;
            *stats.entry("server restarts").or_default() += 1;
        }
        if cfg.crash_every > 0 && op > 0 && op % cfg.crash_every == 0 {
            let victim = rng.gen_range(0..players.len());
            // Some crashes also damage the main save file: the player comes
            // back from the backup, one write older, and the session must
            // find on the server what the save lost.
            let damage = rng.gen_bool(0.3);
            if crash(&mut players, victim, &client_config, damage)? {
                *stats
                    .entry("life: damaged save (backup loaded)")
                    .or_default() += 1;
            }
            told[victim].learn_keys(&players[victim]);
            players[victim]
                .disk
                .set_failing(op < disk_fails_until[victim]);
            *stats.entry("player crashes").or_default() += 1;
        }
        for (k, p) in players.iter_mut().enumerate() {
            if disk_fails_until[k] == op {
                p.disk.set_failing(false);
            }
        }
        if cfg.life_every > 0 && op > 0 && op % cfg.life_every == 0 {
            let k = rng.gen_range(0..players.len());
            match rng.gen_range(0..4) {
                0 => {
                    // Settings changed mid-trade (same server).
                    let mut c = client_config.clone();
                    c.max_concurrent_requests = rng.gen_range(1..=16);
                    c.request_timeout = Duration::from_millis(rng.gen_range(800..3000));
                    let p = &mut players[k];
                    p.session
                        .set_config(&p.store, c)
                        .map_err(|e| e.to_string())?;
                    *stats.entry("life: settings changed").or_default() += 1;
                }
                1 => {
                    paused_until[k] = op + rng.gen_range(5..30);
                    *stats.entry("life: long pauses").or_default() += 1;
                }
                2 => {
                    disk_fails_until[k] = op + rng.gen_range(5..30);
                    players[k].disk.set_failing(true);
                    *stats.entry("life: disk failing").or_default() += 1;
                }
                _ => {
                    if !players[k].disk.is_failing() {
                        reopen(&mut players, k, &client_config)?;
                        told[k].learn_keys(&players[k]);
                        *stats.entry("life: quit and reopen").or_default() += 1;
                    }
                }
            }
        }
        if !cheaters.is_empty() && rng.gen_bool(0.1) {
            let k = rng.gen_range(0..cheaters.len());
            cheaters[k].cheat(&market, &mut rng, &known, &mut stats, &mut report)?;
            continue;
        }
        let i = rng.gen_range(0..players.len());
        let me = players[i].player_id().unwrap_or(0);
        let roll = rng.gen_range(0..100);
        let p = &mut players[i];
        let result = if roll < 35 {
            // Buy something seen on the market, sometimes at a stale price.
            let candidates: Vec<(i64, i64)> = known
                .iter()
                .filter(|(_, (_, seller))| *seller != me)
                .map(|(id, (price, _))| (*id, *price))
                .collect();
            if candidates.is_empty() {
                p.session.browse(Default::default()).map(drop)
            } else {
                let (id, price) = candidates[rng.gen_range(0..candidates.len())];
                let price = if rng.gen_bool(0.1) { price + 1 } else { price };
                *stats.entry("buys attempted").or_default() += 1;
                let sent = p.session.buy(&mut p.store, id, price);
                if let Ok(request) = sent {
                    // The newest journal entry is this attempt.
                    if let Some(op) = p.store.state().journal.values().next_back() {
                        told[i].keys.insert(request.0, op.key.clone());
                    }
                }
                sent.map(drop)
            }
        } else if roll < 60 {
            let owned: Vec<(String, i64)> = p
                .store
                .state()
                .inventory
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            if owned.is_empty() {
                Ok(())
            } else {
                let (item, have) = owned[rng.gen_range(0..owned.len())].clone();
                let qty = rng.gen_range(1..=have.min(3));
                // Some listings are short-lived: the clock moves past them.
                let duration = rng.gen_bool(0.2).then(|| rng.gen_range(30..300));
                *stats.entry("listings attempted").or_default() += 1;
                p.session
                    .create_listing_for(&mut p.store, &item, qty, rng.gen_range(10..300), duration)
                    .map(drop)
            }
        } else if roll < 75 {
            let mine: Vec<i64> = known
                .iter()
                .filter(|(_, (_, s))| *s == me)
                .map(|(id, _)| *id)
                .collect();
            if mine.is_empty() {
                Ok(())
            } else {
                let id = mine[rng.gen_range(0..mine.len())];
                if rng.gen_bool(0.5) {
                    p.session
                        .reprice_listing(&mut p.store, id, rng.gen_range(10..300))
                        .map(drop)
                } else {
                    p.session.cancel_listing(&mut p.store, id).map(drop)
                }
            }
        } else if roll < 88 {
            p.session
                .browse(marketplace_client::client::BrowseQuery {
                    limit: Some(200),
                    ..Default::default()
                })
                .map(drop)
        } else if roll < 92 {
            p.session.claim_proceeds().map(drop)
        } else if roll < 96 {
            // A buy order: matched at once against resting listings, the
            // rest fills while the player does other things.
            let (item, _) = ITEMS[rng.gen_range(0..ITEMS.len())];
            let qty = rng.gen_range(1..=3);
            let min_fill = rng.gen_bool(0.2).then_some(qty);
            let duration = rng.gen_bool(0.5).then(|| rng.gen_range(30..600));
            *stats.entry("buy orders attempted").or_default() += 1;
            p.session
                .place_buy_order(
                    &mut p.store,
                    item,
                    qty,
                    rng.gen_range(10..300),
                    min_fill,
                    duration,
                )
                .map(drop)
        } else if roll < 98 {
            match orders[i].iter().next().copied() {
                Some(order) => {
                    orders[i].remove(&order);
                    p.session.cancel_order(&mut p.store, order).map(drop)
                }
                None => Ok(()),
            }
        } else {
            p.session.collect_deliveries().map(drop)
        };
        if cfg.ops >= 50 && op % 50 == 25 {
            // Time passes: short-lived listings and orders expire (nothing
            // fills them from now on), and the sweep sends back what they
            // hold — sometimes before, sometimes after their owners act.
            if let Some(server) = market.server.as_ref() {
                server.clock().advance(120);
                if rng.gen_bool(0.7) {
                    market.rt.block_on(server.sweep_now())?;
                }
                *stats.entry("clock moved (expiry)").or_default() += 1;
            }
        }
        if let Err(e) = result {
            *stats.entry("refused locally").or_default() += 1;
            let _ = e;
        }
        let awake: Vec<bool> = paused_until.iter().map(|u| *u <= op).collect();
        frame_all(&mut players, &awake, &mut told, &mut known, &mut stats);
        for (k, t) in told.iter_mut().enumerate() {
            orders[k].extend(t.placed.drain(..));
        }
        // Back-pressure: keep the backlog bounded so the run measures faults,
        // not an ever-growing queue. (Paused players and players whose disk
        // fails hold their trades back on purpose; they do not count.)
        let counted = |players: &[SimPlayer]| {
            players
                .iter()
                .enumerate()
                .filter(|(k, p)| awake[*k] && !p.disk.is_failing())
                .map(|(_, p)| p.session.pending_count())
                .sum::<usize>()
        };
        while counted(&players) > 4 * players.len() {
            std::thread::sleep(Duration::from_millis(1));
            frame_all(&mut players, &awake, &mut told, &mut known, &mut stats);
        }
    }

    // Faults off, pauses over, disks healed; everyone settles.
    market.proxy.clear();
    for p in &players {
        p.disk.set_failing(false);
    }
    let awake = vec![true; players.len()];
    let deadline = Instant::now() + Duration::from_secs(120);
    while !players.iter().all(SimPlayer::is_settled) {
        if Instant::now() > deadline {
            let stuck: Vec<_> = players
                .iter()
                .filter(|p| !p.is_settled())
                .map(|p| {
                    format!(
                        "{} (journal {:?}, {} requests pending)",
                        p.label,
                        p.store.state().journal,
                        p.session.pending_count()
                    )
                })
                .collect();
            return Err(format!("players did not settle: {stuck:?}"));
        }
        frame_all(&mut players, &awake, &mut told, &mut known, &mut stats);
        std::thread::sleep(Duration::from_millis(1));
    }
    // Everyone collects what waits for them, then settles again.
    for p in &mut players {
        p.session.collect_deliveries().map_err(|e| e.to_string())?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !players.iter().all(SimPlayer::is_settled) {
        if Instant::now() > deadline {
            return Err("players did not settle after collecting".into());
        }
        frame_all(&mut players, &awake, &mut told, &mut known, &mut stats);
        std::thread::sleep(Duration::from_millis(1));
    }
    for p in &mut players {
        p.store
            .flush(Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
    }

    let cheater_ids: Vec<i64> = cheaters.iter().map(|c| c.id).collect();
    check_invariants(&market, &players, &cheater_ids, &told, cfg, &mut report)?;
    watcher.check(&market, &mut report)?;
    if cfg.cheaters > 0 {
        let get = |k| stats.get(k).copied().unwrap_or(0);
        let tried = get("cheats attempted");
        let refused = get("cheats refused");
        let deposits = get("cheater deposits within the cap");
        let bought = get("cheater purchases paid from capped deposits");
        let ordered = get("cheater orders and own deliveries from capped deposits");
        report.check(
            "cheaters refused",
            tried == refused + deposits + bought + ordered,
            format!("{tried} attempts by {} modified clients: {refused} refused; allowed: {deposits} deposits within the cap, {bought} purchases and {ordered} orders or own deliveries paid from them", cfg.cheaters),
        );
    }
    let faults = market
        .proxy
        .stats
        .faults
        .load(std::sync::atomic::Ordering::Relaxed) as i64;
    stats.insert("faults injected", faults);
    stats.insert("operations", cfg.ops as i64);
    stats.insert("players", cfg.players as i64);
    stats.insert("seconds", started.elapsed().as_secs() as i64);
    report.stats = stats.into_iter().collect();
    if let Some(server) = market.server.take() {
        market.rt.block_on(server.shutdown());
    }
    Ok(report)
}

fn frame_all(
    players: &mut [SimPlayer],
    awake: &[bool],
    told: &mut [Told],
    known: &mut BTreeMap<i64, (i64, i64)>,
    stats: &mut HashMap<&'static str, i64>,
) {
    for (i, p) in players.iter_mut().enumerate() {
        if !awake[i] {
            continue;
        }
        let new: Vec<SessionEvent> = p.frame().to_vec();
        p.events.clear();
        for e in new {
            match e {
                SessionEvent::ListingsUpdated { page, .. } => {
                    known.clear();
                    for l in page.listings {
                        known.insert(l.id, (l.price, l.seller_id));
                    }
                }
                SessionEvent::ListingCreated { listing, .. }
                | SessionEvent::ListingRepriced { listing, .. } => {
                    known.insert(listing.id, (listing.price, listing.seller_id));
                }
                SessionEvent::ListingCancelled { listing, .. } => {
                    known.remove(&listing.id);
                    *stats.entry("listings cancelled").or_default() += 1;
                }
                SessionEvent::PurchaseSucceeded { purchase, .. } => {
                    known.remove(&purchase.listing_id);
                    told[i].bought.push((purchase.listing_id, purchase.id));
                    *stats.entry("purchases committed").or_default() += 1;
                }
                SessionEvent::PurchaseFailed {
                    request_id,
                    listing_id,
                    error,
                } => {
                    known.remove(&listing_id);
                    let key = told[i].keys.get(&request_id.0).cloned();
                    told[i].released.push((
                        listing_id,
                        error.code.as_str().to_string(),
                        error.is_definitive(),
                        key,
                    ));
                    *stats.entry("purchase holds released").or_default() += 1;
                }
                SessionEvent::ProceedsClaimed {
                    sale_id, amount, ..
                } if amount > 0 => {
                    told[i].claimed.push(sale_id);
                    *stats.entry("proceeds claimed").or_default() += 1;
                }
                SessionEvent::RequestRetrying { .. } => {
                    *stats.entry("retries (ambiguous answers)").or_default() += 1;
                }
                SessionEvent::TradeRecovered {
                    credits,
                    items,
                    shortfall,
                    ..
                } => {
                    *stats.entry("trades recovered from the server").or_default() += 1;
                    // What the restored save had spent again before the
                    // market told it: attributed as the store takes it,
                    // credits first, then items in order.
                    let mut left = shortfall;
                    let mut parts = vec![(None, credits)];
                    parts.extend(items.into_iter().map(|(i, n)| (Some(i), n)));
                    for (kind, n) in parts {
                        let short = left.min((-n).max(0));
                        if short > 0 {
                            *told[i].spent_twice.entry(kind).or_default() += short;
                            left -= short;
                        }
                    }
                }
                SessionEvent::OrderPlaced { order, fills, .. } => {
                    told[i].placed.push(order.id);
                    *stats.entry("buy orders placed").or_default() += 1;
                    *stats.entry("fills made by placing orders").or_default() += fills.len() as i64;
                }
                SessionEvent::OrderCancelled { .. } => {
                    *stats.entry("buy orders cancelled").or_default() += 1;
                }
                SessionEvent::DeliveriesCollected { deliveries, .. } => {
                    *stats.entry("deliveries collected").or_default() += deliveries.len() as i64;
                }
                _ => {}
            }
        }
    }
}

/// A clean quit and restart: the session shuts down (answers that arrive in
/// the grace period are settled and saved, the rest stays journaled) and
/// the player comes back from its file.
fn reopen(
    players: &mut [SimPlayer],
    i: usize,
    config: &marketplace_client::client::ClientConfig,
) -> Result<(), String> {
    let path = players[i].path.clone();
    let label = players[i].label.clone();
    let placeholder = SimPlayer::open(
        &format!("{label}-tmp"),
        &path.with_extension("reopening"),
        config.clone(),
    )?;
    let SimPlayer {
        mut store, session, ..
    } = std::mem::replace(&mut players[i], placeholder);
    // Events of the last answers are not reported (notifications are at
    // most once); their effects are saved.
    let _ = session.shutdown(&mut store, Duration::from_millis(50));
    drop(store);
    let mut p = SimPlayer::open(&label, &path, config.clone())?;
    p.login().map_err(|e| e.to_string())?;
    players[i] = p;
    Ok(())
}

/// Simulates a crash: only what is on disk survives. The player restarts
/// from its file and its session re-sends the journal.
fn crash(
    players: &mut [SimPlayer],
    i: usize,
    config: &marketplace_client::client::ClientConfig,
    damage_main: bool,
) -> Result<bool, String> {
    let path = players[i].path.clone();
    let label = players[i].label.clone();
    // Everything of the save on disk at the instant of the crash: the
    // document, its log, and the backup with its own log.
    let backup_path = persist::backup_path(&path);
    let files = [
        path.clone(),
        persist::log_path(&path),
        backup_path.clone(),
        persist::log_path(&backup_path),
    ];
    // Read until two reads agree: the writer thread may be between the
    // steps of a save, and a crash leaves files as they were at one instant.
    let read_all =
        || -> Vec<Option<Vec<u8>>> { files.iter().map(|f| std::fs::read(f).ok()).collect() };
    let mut at_crash = read_all();
    for _ in 0..50 {
        let again = read_all();
        if again == at_crash {
            break;
        }
        at_crash = again;
        std::thread::sleep(Duration::from_millis(1));
    }
    // Replace the player (dropping the old one stops its threads) and put the
    // files back as they were at the instant of the crash.
    let placeholder = SimPlayer::open(
        &format!("{label}-tmp"),
        &path.with_extension("crashing"),
        config.clone(),
    )?;
    drop(std::mem::replace(&mut players[i], placeholder));
    for (file, bytes) in files.iter().zip(&at_crash) {
        match bytes {
            Some(bytes) => std::fs::write(file, bytes).map_err(|e| e.to_string())?,
            None => {
                let _ = std::fs::remove_file(file);
            }
        }
    }
    // The backup can stand in only if it has met the market (a sync mark):
    // a backup older than the save's first login has nothing to compare
    // with (documented) and is not what this run tests.
    let damaged = damage_main && at_crash[2].as_deref().is_some_and(backup_knows_the_market);
    if damaged {
        // The main file is replaced by a damaged one. (Written in place it
        // would also damage the backup whenever the two are one file: a
        // save links the backup to the main file before its rename, and a
        // failing disk can stop it between the two — a state a crash with
        // a torn write can never damage, since the rename is atomic.)
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, b"{\"version\": 5, \"cred").map_err(|e| e.to_string())?;
    }
    let mut p = SimPlayer::open(&label, &path, config.clone())?;
    p.login().map_err(|e| e.to_string())?;
    players[i] = p;
    Ok(damaged)
}

/// True when a save file's document has a sync mark set for a market.
fn backup_knows_the_market(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|doc| {
            doc.get("sync").and_then(|s| s.as_object()).map(|marks| {
                marks.values().any(|m| {
                    m.get("seq")
                        .and_then(|v| v.as_i64())
                        .is_some_and(|seq| seq >= 0)
                })
            })
        })
        .unwrap_or(false)
}

/// A modified client: raw HTTP, no local checks, trying what the market
/// must refuse.
struct Cheater {
    id: i64,
    token: String,
    http: reqwest::Client,
    device: String,
}

impl Cheater {
    fn login(market: &Market, device: &str) -> Result<Cheater, String> {
        let http = reqwest::Client::new();
        let url = market.server_url();
        let (id, token) = market.rt.block_on(async {
            let r = http
                .post(format!("{url}/v1/sessions"))
                .json(&serde_json::json!({"device_id": device, "name": "cheater"}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
            let token = v["token"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("no token: {v}"))?;
            Ok::<_, String>((v["player_id"].as_i64().unwrap_or(0), token))
        })?;
        Ok(Cheater {
            id,
            token,
            http,
            device: device.to_string(),
        })
    }

    /// One attempt. A success of anything that should be refused is a
    /// failure of the run.
    fn cheat(
        &mut self,
        market: &Market,
        rng: &mut StdRng,
        known: &BTreeMap<i64, (i64, i64)>,
        stats: &mut HashMap<&'static str, i64>,
        report: &mut Report,
    ) -> Result<(), String> {
        let listing = known.iter().next().map(|(id, (price, _))| (*id, *price));
        let (path, body, allowed): (String, serde_json::Value, &[u16]) = match rng.gen_range(0..9) {
            // Buying without offering a deposit: only what its capped
            // deposits already paid for can go through.
            0 => match listing {
                Some((id, price)) => (
                    format!("/v1/listings/{id}/purchase"),
                    serde_json::json!({"expected_price": price}),
                    &[200, 409, 404, 403],
                ),
                None => return Ok(()),
            },
            1 => (
                "/v1/listings".into(),
                serde_json::json!({"item_id": "gem", "quantity": 50, "price": 1}),
                &[409],
            ),
            2 => (
                "/v1/me/withdrawals".into(),
                serde_json::json!({"quantity": 1_000_000_000}),
                &[409],
            ),
            3 => (
                format!("/v1/sales/{}/claim", rng.gen_range(1..500)),
                serde_json::json!({}),
                &[403, 404],
            ),
            4 => (
                "/v1/listings".into(),
                serde_json::json!({"item_id": "ore", "quantity": 9_000_000_000i64, "price": 1, "deposit": 9_000_000_000i64}),
                &[400],
            ),
            // Past a listing's quantity: refused whatever it offers.
            5 => match listing {
                Some((id, price)) => (
                    format!("/v1/listings/{id}/purchase"),
                    serde_json::json!({"expected_price": price, "quantity": 1_000, "deposit": price * 1_000}),
                    &[409, 404, 403],
                ),
                None => return Ok(()),
            },
            // Someone's delivery (or its own, twice): only its own, once.
            6 => (
                "/v1/me/deliveries/collect".into(),
                serde_json::json!({"delivery_ids": [rng.gen_range(1..300), rng.gen_range(1..300)]}),
                &[200, 404],
            ),
            // A buy order escrowing less than it costs: only what its capped
            // deposits already hold can pay for it.
            7 => (
                "/v1/orders".into(),
                serde_json::json!({"item_id": "ore", "quantity": 5, "max_price": 100, "deposit": 1}),
                &[201, 409, 403],
            ),
            // Deposits are allowed up to the cap, refused beyond it.
            _ => (
                "/v1/me/deposits".into(),
                serde_json::json!({"quantity": 40_000}),
                &[200, 403],
            ),
        };
        let url = market.server_url();
        let token = self.token.clone();
        let (status, text) = market.rt.block_on(async {
            let r = self
                .http
                .post(format!("{url}{path}"))
                .bearer_auth(token)
                .header(
                    "idempotency-key",
                    format!("cheat-{:016x}", rand::random::<u64>()),
                )
                .json(&body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            Ok::<_, String>((status, r.text().await.unwrap_or_default()))
        })?;
        if status == 401 {
            // The token ran out (the run moves the clock): a cheater logs
            // in again, like anyone.
            *self = Cheater::login(market, &self.device)?;
            *stats.entry("cheater logins renewed").or_default() += 1;
            return Ok(());
        }
        *stats.entry("cheats attempted").or_default() += 1;
        if !allowed.contains(&status) {
            report.check(
                "cheater refused",
                false,
                format!("{path} {body} answered {status}: {text}"),
            );
        } else if status == 200 && path.ends_with("/purchase") {
            *stats
                .entry("cheater purchases paid from capped deposits")
                .or_default() += 1;
        } else if status == 201 || (status == 200 && path.ends_with("/collect")) {
            *stats
                .entry("cheater orders and own deliveries from capped deposits")
                .or_default() += 1;
        } else if status == 200 {
            *stats.entry("cheater deposits within the cap").or_default() += 1;
        } else {
            *stats.entry("cheats refused").or_default() += 1;
        }
        Ok(())
    }
}

fn check_invariants(
    market: &Market,
    players: &[SimPlayer],
    cheaters: &[i64],
    told: &[Told],
    cfg: &ChaosConfig,
    report: &mut Report,
) -> Result<(), String> {
    let q = |sql: &str| market.query_i64(sql);
    let qb = |sql: &str, b: &[i64]| market.query_i64_bind(sql, b);

    // I1, per unit: a listing's fills and what remains (or went back)
    // make up its quantity; sold exactly when nothing remains; the same
    // for buy orders; no fill above its order's price or after either side
    // expired.
    let sold = q("SELECT COUNT(*) FROM listings WHERE status = 'sold'")?;
    let purchases = q("SELECT COUNT(*) FROM purchases")?;
    let overfilled = q("SELECT COUNT(*) FROM listings l WHERE l.quantity <> l.remaining + COALESCE(l.returned, 0) \
         + (SELECT COALESCE(SUM(p.quantity), 0) FROM purchases p WHERE p.listing_id = l.id) \
         AND NOT (l.status = 'cancelled' AND l.returned IS NULL)")?;
    let wrong_status = q(
        "SELECT COUNT(*) FROM listings WHERE (status = 'sold' AND remaining <> 0) \
         OR (status = 'active' AND remaining = 0)",
    )?;
    let orders_overfilled = q(
        "SELECT COUNT(*) FROM orders o WHERE o.quantity <> o.remaining \
         + (SELECT COALESCE(SUM(p.quantity), 0) FROM purchases p WHERE p.order_id = o.id)",
    )?;
    let out_of_price = q("SELECT COUNT(*) FROM purchases p JOIN orders o ON o.id = p.order_id WHERE p.unit_price > o.max_price")?;
    let late = q(
        "SELECT COUNT(*) FROM purchases p JOIN listings l ON l.id = p.listing_id \
         LEFT JOIN orders o ON o.id = p.order_id \
         WHERE (l.expires_at IS NOT NULL AND p.created_at >= l.expires_at) \
         OR (o.expires_at IS NOT NULL AND p.created_at >= o.expires_at)",
    )?;
    report.check(
        "I1 every unit sold at most once",
        overfilled == 0 && wrong_status == 0 && orders_overfilled == 0 && out_of_price == 0 && late == 0,
        format!("{sold} listings sold out, {purchases} fills; {overfilled} listings and {orders_overfilled} orders whose fills do not add up, {wrong_status} with a wrong status, {out_of_price} fills above their order's price, {late} after an expiry"),
    );

    // I2
    let local_credits: i64 = players
        .iter()
        .map(|p| p.store.state().total_credits())
        .sum();
    // Inside the market for players: unclaimed proceeds (less fees), buy
    // orders' escrow, credits waiting to be collected; the fees are the
    // sink.
    let unclaimed = q(
        "SELECT CAST(COALESCE(SUM(price - fee), 0) AS BIGINT) FROM purchases WHERE claimed_at IS NULL",
    )? + q("SELECT CAST(COALESCE(SUM(escrow), 0) AS BIGINT) FROM orders")?
        + q("SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM deliveries WHERE collected_at IS NULL AND item_id IS NULL")?
        + q("SELECT CAST(COALESCE(SUM(fee), 0) AS BIGINT) FROM purchases")?;
    // What the cheaters brought in and took out (capped deposits, and what
    // they bought with them): the closed system is the honest players plus
    // the market, with the cheaters as its only openings.
    let cheats = if cheaters.is_empty() {
        "0".to_string()
    } else {
        cheaters
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let flow = |action: &str, item: Option<&str>| {
        let kind = match item {
            None => "item_id IS NULL".to_string(),
            Some(i) => format!("item_id = '{i}'"),
        };
        q(&format!(
            "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM ledger WHERE action = '{action}' AND {kind} AND player_id IN ({cheats})"
        ))
    };
    let cheat_credits = flow("deposit", None)? - flow("withdraw", None)?;
    let accounts = q("SELECT CAST(COALESCE(SUM(credits), 0) AS BIGINT) FROM accounts")?;
    let start_credits = START_CREDITS * cfg.players as i64;
    let twice = |kind: Option<&str>| -> i64 {
        told.iter()
            .map(|t| {
                t.spent_twice
                    .get(&kind.map(str::to_string))
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    };
    let cheat_credits = cheat_credits + twice(None);
    report.check(
        "I2 credits conserved",
        local_credits + unclaimed + accounts == start_credits + cheat_credits,
        format!("players {local_credits} + proceeds, order escrow, deliveries and fees {unclaimed} + market accounts {accounts} = {} (started with {start_credits}; cheaters within their caps and saves restored from backups that spent again what they had lost: {cheat_credits})", local_credits + unclaimed + accounts),
    );
    let mut items_ok = true;
    let mut detail = Vec::new();
    for (item, per_player) in ITEMS {
        let local: i64 = players
            .iter()
            .map(|p| p.store.state().item_count(item) + p.store.state().escrowed_items(item))
            .sum();
        let listed = market.rt.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::AnyConnection::connect(&market.config.database).await.map_err(|e| e.to_string())?;
            let (n,): (i64,) = sqlx::query_as("SELECT CAST(COALESCE(SUM(remaining), 0) AS BIGINT) FROM listings WHERE status = 'active' AND item_id = $1")
                .bind(item)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let (waiting,): (i64,) = sqlx::query_as("SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM deliveries WHERE collected_at IS NULL AND item_id = $1")
                .bind(item)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let (stashed,): (i64,) = sqlx::query_as("SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM stash WHERE item_id = $1")
                .bind(item)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<i64, String>(n + stashed + waiting)
        })?;
        let start = per_player * cfg.players as i64;
        let cheat_items =
            flow("deposit", Some(item))? - flow("withdraw", Some(item))? + twice(Some(item));
        items_ok &= local + listed == start + cheat_items;
        detail.push(format!(
            "{item}: {local} held + {listed} listed = {} of {start}{}",
            local + listed,
            if cheat_items != 0 {
                format!(" {cheat_items:+} by cheaters and restored saves")
            } else {
                String::new()
            }
        ));
    }
    report.check("I2 items conserved", items_ok, detail.join("; "));

    // I6: the server's books balance, from its ledger alone.
    let audit = market.rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(&market.config.database)
            .await
            .map_err(|e| e.to_string())?;
        marketplace_server::audit_connection(&mut conn)
            .await
            .map_err(|e| e.to_string())
    })?;
    report.check(
        "I6 server books balance",
        audit.ok(),
        if audit.ok() {
            audit.lines.join("; ")
        } else {
            audit
                .mismatches
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        },
    );

    // I3: each player's data equals what the server's records imply, and
    // everything the player was told is on the server.
    let mut mismatches = Vec::new();
    let mut acknowledged = 0;
    for (p, t) in players.iter().zip(told) {
        let Some(id) = p.player_id() else { continue };
        // Everything that crossed between this save and the market is a
        // `deposit` (out of the save) or `withdraw` (into it) row of the
        // player: purchases, sales claimed, orders placed and cancelled,
        // deliveries collected, cancelled and expired listings alike.
        let moved = |action: &str, item: Option<&str>| -> Result<i64, String> {
            let kind = match item {
                None => "item_id IS NULL".to_string(),
                Some(i) => format!("item_id = '{i}'"),
            };
            qb(
                &format!("SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM ledger WHERE player_id = $1 AND action = '{action}' AND {kind}"),
                &[id],
            )
        };
        let twice = |kind: Option<&str>| {
            t.spent_twice
                .get(&kind.map(str::to_string))
                .copied()
                .unwrap_or(0)
        };
        let expected =
            START_CREDITS - moved("deposit", None)? + moved("withdraw", None)? + twice(None);
        if p.store.state().total_credits() != expected {
            mismatches.push(format!(
                "{}: credits {} but the server implies {expected}",
                p.label,
                p.store.state().total_credits()
            ));
        }
        for (item, start) in ITEMS {
            let expected = start - moved("deposit", Some(item))?
                + moved("withdraw", Some(item))?
                + twice(Some(item));
            let have = p.store.state().item_count(item) + p.store.state().escrowed_items(item);
            if have != expected {
                let rows = market.rt.block_on(async {
                    use sqlx::{Connection, Row};
                    let mut conn = sqlx::AnyConnection::connect(&market.config.database).await.map_err(|e| e.to_string())?;
                    let rows = sqlx::query("SELECT id, action, quantity, COALESCE(idempotency_key, '-') AS k, COALESCE(listing_id, 0) AS l, COALESCE(delivery_id, 0) AS d FROM ledger WHERE player_id = $1 AND item_id = $2 ORDER BY id")
                        .bind(id)
                        .bind(item)
                        .fetch_all(&mut conn)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<Vec<String>, String>(rows.iter().map(|r| format!("#{} {} {} key {} listing {} delivery {}",
                        r.get::<i64, _>("id"), r.get::<String, _>("action"), r.get::<i64, _>("quantity"), r.get::<String, _>("k"), r.get::<i64, _>("l"), r.get::<i64, _>("d"))).collect())
                })?;
                mismatches.push(format!(
                    "{}: {have} {item} but the server implies {expected}; its {item} rows: {rows:?}",
                    p.label
                ));
            }
        }
        for (listing, purchase) in &t.bought {
            acknowledged += 1;
            let found = qb("SELECT COUNT(*) FROM purchases WHERE id = $1 AND listing_id = $2 AND buyer_id = $3", &[*purchase, *listing, id])?;
            if found != 1 {
                mismatches.push(format!(
                    "{}: acknowledged purchase {purchase} is not on the server",
                    p.label
                ));
            }
        }
        for sale in &t.claimed {
            acknowledged += 1;
            let found = qb("SELECT COUNT(*) FROM purchases WHERE id = $1 AND seller_id = $2 AND claimed_at IS NOT NULL", &[*sale, id])?;
            if found != 1 {
                mismatches.push(format!(
                    "{}: acknowledged claim of sale {sale} is not on the server",
                    p.label
                ));
            }
        }
    }
    report.check(
        "I3 acknowledged operations durable",
        mismatches.is_empty(),
        if mismatches.is_empty() {
            format!("{acknowledged} acknowledged purchases and claims found; every player's credits and items match what the server's ledger moved in and out of their save")
        } else {
            mismatches.join("; ")
        },
    );

    // I4: a released purchase hold must not hide a purchase the server made:
    // the attempt whose hold was released (known by its idempotency key,
    // also across restarts) has no purchase on the server. A later attempt
    // at a listing the player already bought is refused rightly; the
    // attempt that committed must never be released.
    let mut bad = Vec::new();
    let mut released = 0;
    for (p, t) in players.iter().zip(told) {
        let Some(id) = p.player_id() else { continue };
        for (listing, code, definitive, key) in &t.released {
            released += 1;
            if !definitive {
                bad.push(format!("{}: released on non-definitive {code}", p.label));
            }
            match key {
                Some(key) => {
                    if market.purchases_with_key(id, key)? != 0 {
                        bad.push(format!(
                            "{}: released the hold of attempt {key} at listing {listing}, which the server committed",
                            p.label
                        ));
                    }
                }
                None => bad.push(format!(
                    "{}: released a hold for listing {listing} of an attempt the run cannot name",
                    p.label
                )),
            }
        }
    }
    report.check(
        "I4 no rollback on ambiguity",
        bad.is_empty(),
        if bad.is_empty() {
            format!("{released} purchase holds released, each on a definitive answer, none of them the attempt (named by its idempotency key) the server committed")
        } else {
            bad.join("; ")
        },
    );

    // I5
    let mut broken = Vec::new();
    for p in players {
        match persist::load(&p.path) {
            Ok(loaded) if loaded.recovered_from_backup.is_none() && loaded.state.is_some() => {}
            Ok(loaded) => broken.push(format!("{}: {:?}", p.label, loaded.recovered_from_backup)),
            Err(e) => broken.push(format!("{}: {e}", p.label)),
        }
    }
    report.check(
        "I5 whole save files",
        broken.is_empty(),
        if broken.is_empty() {
            format!(
                "all {} save files load and validate without their backups",
                players.len()
            )
        } else {
            broken.join("; ")
        },
    );
    Ok(())
}
