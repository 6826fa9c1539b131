//! Prometheus metrics, kept by hand: a few counters and one latency histogram
//! per route do not justify a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    purchases: BTreeMap<&'static str, u64>,
    replays: u64,
    /// The last hour by minute, for the console's charts.
    minutes: std::collections::VecDeque<Minute>,
}

/// One minute of this replica's traffic.
#[derive(Default, Clone, Copy, Debug)]
pub struct Minute {
    /// Unix minute.
    pub minute: i64,
    pub requests: u64,
    /// Answers 500 and above.
    pub errors: u64,
    pub purchases: u64,
    pub latency_sum: f64,
}

impl Inner {
    fn minute(&mut self) -> &mut Minute {
        let now = crate::now_secs() / 60;
        if self.minutes.back().is_none_or(|m| m.minute != now) {
            self.minutes.push_back(Minute {
                minute: now,
                ..Minute::default()
            });
            while self.minutes.len() > 60 {
                self.minutes.pop_front();
            }
        }
        // Pushed above when missing.
        self.minutes.back_mut().unwrap_or_else(|| unreachable!())
    }
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// The method as a label: one of the methods the API knows, else `other`.
/// (A client may send any token as a method; each would be a new series.)
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    /// `route` must be a matched route template or `unmatched`: labels come
    /// from a bounded set only.
    pub fn record_request(
        &self,
        method: &'static str,
        route: &str,
        status: u16,
        elapsed: Duration,
    ) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        *inner
            .requests
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        let h = inner.latency.entry(route.to_string()).or_default();
        let secs = elapsed.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
        let m = inner.minute();
        m.requests += 1;
        m.errors += u64::from(status >= 500);
        m.latency_sum += secs;
    }

    /// `outcome` is `"success"` or an error code.
    pub fn record_purchase(&self, outcome: &'static str) {
        if let Ok(mut inner) = self.inner.lock() {
            *inner.purchases.entry(outcome).or_default() += 1;
            if outcome == "success" {
                inner.minute().purchases += 1;
            }
        }
    }

    pub fn record_replay(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.replays += 1;
        }
    }

    /// The last 60 minutes, oldest first, a zero for a minute without
    /// traffic.
    pub fn last_hour(&self) -> Vec<Minute> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        let now = crate::now_secs() / 60;
        (now - 59..=now)
            .map(|minute| {
                inner
                    .minutes
                    .iter()
                    .find(|m| m.minute == minute)
                    .copied()
                    .unwrap_or(Minute {
                        minute,
                        ..Minute::default()
                    })
            })
            .collect()
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let Ok(inner) = self.inner.lock() else {
            return String::new();
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP market_http_requests_total HTTP requests by route and status."
        );
        let _ = writeln!(out, "# TYPE market_http_requests_total counter");
        for ((method, route, status), n) in &inner.requests {
            let _ = writeln!(
                out,
                "market_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP market_http_request_duration_seconds Request latency by route."
        );
        let _ = writeln!(out, "# TYPE market_http_request_duration_seconds histogram");
        for (route, h) in &inner.latency {
            for (bound, count) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "market_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "market_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "market_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "market_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP market_purchases_total Purchase attempts by outcome."
        );
        let _ = writeln!(out, "# TYPE market_purchases_total counter");
        for (outcome, n) in &inner.purchases {
            let _ = writeln!(out, "market_purchases_total{{outcome=\"{outcome}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP market_idempotent_replays_total Answers served from the idempotency store."
        );
        let _ = writeln!(out, "# TYPE market_idempotent_replays_total counter");
        let _ = writeln!(out, "market_idempotent_replays_total {}", inner.replays);
        out
    }
}

/// The market's books as gauges: where the credits and items inside the
/// market are, and how much came in and went out (I6, checkable from
/// outside without trusting any client).
pub fn render_books(out: &mut String, t: &crate::books::Totals) {
    let _ = writeln!(
        out,
        "# HELP market_book_credits Credits inside the market, by place."
    );
    let _ = writeln!(out, "# TYPE market_book_credits gauge");
    let _ = writeln!(
        out,
        "market_book_credits{{place=\"accounts\"}} {}",
        t.account_credits
    );
    let _ = writeln!(
        out,
        "market_book_credits{{place=\"proceeds\"}} {}",
        t.unclaimed_proceeds
    );
    for (place, n) in [
        ("orders", t.order_escrow_credits),
        ("deliveries", t.delivery_credits),
        ("fees", t.fees),
    ] {
        let _ = writeln!(out, "market_book_credits{{place=\"{place}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP market_book_items Items inside the market, by place."
    );
    let _ = writeln!(out, "# TYPE market_book_items gauge");
    let _ = writeln!(
        out,
        "market_book_items{{place=\"stash\"}} {}",
        t.stash_items
    );
    let _ = writeln!(
        out,
        "market_book_items{{place=\"escrow\"}} {}",
        t.escrow_items
    );
    let _ = writeln!(
        out,
        "market_book_items{{place=\"deliveries\"}} {}",
        t.delivery_items
    );
    let _ = writeln!(out, "# HELP market_book_flow_total Value that entered (deposits, grants) or left (withdrawals) the market.");
    let _ = writeln!(out, "# TYPE market_book_flow_total counter");
    let _ = writeln!(
        out,
        "market_book_flow_total{{kind=\"credits\",direction=\"in\"}} {}",
        t.inflow_credits
    );
    let _ = writeln!(
        out,
        "market_book_flow_total{{kind=\"credits\",direction=\"out\"}} {}",
        t.outflow_credits
    );
    let _ = writeln!(
        out,
        "market_book_flow_total{{kind=\"items\",direction=\"in\"}} {}",
        t.inflow_items
    );
    let _ = writeln!(
        out,
        "market_book_flow_total{{kind=\"items\",direction=\"out\"}} {}",
        t.outflow_items
    );
}
