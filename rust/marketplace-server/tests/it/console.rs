//! The operator console over HTTP (the browser suite in `tests/` drives the
//! same pages in Chromium): sign-in and its limits, the session cookie,
//! CSRF, the security headers, and each action's effect on the market.

use marketplace_server::Config;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{check_books, key, TestDb, TestServer};

backend_tests!(
    an_operator_signs_in_and_acts_on_a_player,
    sign_in_is_refused_and_rate_limited_and_pages_need_a_session,
    a_withdrawn_listing_goes_back_to_its_seller_and_the_books_balance,
);

const ADMIN: &str = "test-admin-key-test-admin-key-test-admin";

pub struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

pub struct Page {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Page {
    /// The CSRF token in the page's forms.
    pub fn csrf(&self) -> String {
        let at = self
            .text
            .find("name=csrf value=\"")
            .expect("a form with a CSRF token")
            + 17;
        self.text[at..]
            .split('"')
            .next()
            .unwrap_or_default()
            .to_string()
    }

    pub fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Browser {
    pub fn new(t: &TestServer) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: t.base.clone(),
            cookie: None,
        }
    }

    pub async fn get(&self, path: &str) -> Page {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        Self::page(req.send().await.unwrap()).await
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        Self::page(req.send().await.unwrap()).await
    }

    async fn page(r: reqwest::Response) -> Page {
        Page {
            status: r.status(),
            headers: r.headers().clone(),
            text: r.text().await.unwrap(),
        }
    }

    /// Signs in; returns the Set-Cookie header as sent.
    pub async fn sign_in(&mut self, key: &str) -> Page {
        let p = self.post("/console/login", &[("key", key)]).await;
        if let Some(set) = p.headers.get("set-cookie").and_then(|v| v.to_str().ok()) {
            self.cookie = set.split(';').next().map(str::to_string);
        }
        p
    }
}

async fn an_operator_signs_in_and_acts_on_a_player(db: TestDb) {
    let t = TestServer::start(&db).await;
    let cheater = t.login("dupe-suspect").await;
    let mut b = Browser::new(&t);
    let signed = b.sign_in(ADMIN).await;
    assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.text);
    let cookie = signed.headers["set-cookie"].to_str().unwrap().to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP from a peer that is no trusted proxy"
    );
    let overview = b.get("/console/").await;
    assert_eq!(overview.status, StatusCode::OK, "{}", overview.text);
    assert!(overview.text.contains("Inside the market"));
    let csp = overview.headers["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(overview.headers["x-frame-options"], "DENY");
    assert!(!overview.text.contains("<script"), "no script in any page");

    // Find the player by name, then ban them: their token stops working.
    let found = b.get("/console/players?q=dupe").await;
    assert!(
        found
            .text
            .contains(&format!("/console/players/{}", cheater.id)),
        "{}",
        found.text
    );
    let page = b.get(&format!("/console/players/{}", cheater.id)).await;
    let csrf = page.csrf();
    let forged = b
        .post(&format!("/console/players/{}/ban", cheater.id), &[])
        .await;
    assert_eq!(
        forged.status,
        StatusCode::FORBIDDEN,
        "no CSRF token: {}",
        forged.text
    );
    let wrong = b
        .post(
            &format!("/console/players/{}/ban", cheater.id),
            &[("csrf", "guess")],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(
        t.get(&cheater, "/v1/me/account").await.status,
        StatusCode::OK
    );
    let banned = b
        .post(
            &format!("/console/players/{}/ban", cheater.id),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(banned.status, StatusCode::SEE_OTHER, "{}", banned.text);
    assert_eq!(
        t.get(&cheater, "/v1/me/account").await.status,
        StatusCode::UNAUTHORIZED
    );
    b.post(
        &format!("/console/players/{}/unban", cheater.id),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(
        t.get(&cheater, "/v1/me/account").await.status,
        StatusCode::OK
    );

    // A grant with a reason; the same form sent twice grants once.
    let grant_key = format!("console-grant-{}", key());
    for _ in 0..2 {
        let r = b
            .post(
                &format!("/console/players/{}/grant", cheater.id),
                &[
                    ("csrf", &csrf),
                    ("key", &grant_key),
                    ("item", ""),
                    ("quantity", "250"),
                    ("reason", "refund for ticket #42"),
                ],
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    }
    let account = t.get(&cheater, "/v1/me/account").await;
    assert_eq!(
        account.body["account"]["credits"],
        json!(250),
        "{}",
        account.text
    );
    let no_reason = b
        .post(
            &format!("/console/players/{}/grant", cheater.id),
            &[
                ("csrf", &csrf),
                ("key", "k-other"),
                ("quantity", "5"),
                ("reason", ""),
            ],
        )
        .await;
    assert_eq!(no_reason.status, StatusCode::BAD_REQUEST);
    // The player's page shows it all: the ledger row of the grant with its
    // key and the session that made it, and the action with its reason.
    let page = b.get(&format!("/console/players/{}", cheater.id)).await;
    assert!(page.text.contains(&grant_key), "{}", page.text);
    assert!(
        page.text.contains("console/"),
        "the request id names the session"
    );
    let overview = b.get("/console/").await;
    assert_eq!(
        overview.text.matches("refund for ticket #42").count(),
        1,
        "the form sent twice is one grant and one recorded action"
    );
    assert!(overview.text.contains(">ban<") && overview.text.contains(">grant<"));
    let csv = b
        .get(&format!("/console/players/{}/ledger.csv", cheater.id))
        .await;
    assert!(csv.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert!(
        csv.text
            .lines()
            .any(|l| l.contains(",grant,") && l.contains(&grant_key)),
        "{}",
        csv.text
    );

    // The audit, from the console.
    let r = b.post("/console/audit", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    assert!(b
        .get("/console/audit")
        .await
        .text
        .contains("The books balanced"));

    // The ledger by time: today holds the grant, a day long ago nothing.
    let today = &crate::support::today();
    let now = b
        .get(&format!(
            "/console/ledger?player={}&from={today}&to={today}",
            cheater.id
        ))
        .await;
    assert!(now.text.contains(&grant_key), "{}", now.text);
    let then = b
        .get(&format!(
            "/console/ledger?player={}&from=2001-01-01&to=2001-01-02",
            cheater.id
        ))
        .await;
    assert!(!then.text.contains(&grant_key) && then.text.contains("none"));
    assert_eq!(
        b.get("/console/ledger?from=yesterday").await.status,
        StatusCode::BAD_REQUEST
    );

    // Books changed behind the server's back: the audit names the player,
    // linked, on every replica's console (it is kept in the database).
    let pool = db.pool().await;
    sqlx::query(&format!(
        "UPDATE accounts SET credits = credits + 1 WHERE player_id = {}",
        cheater.id
    ))
    .execute(&pool)
    .await
    .unwrap();
    b.post("/console/audit", &[("csrf", &csrf)]).await;
    let audit = b.get("/console/audit").await;
    assert!(audit.text.contains("did not balance"), "{}", audit.text);
    assert!(
        audit
            .text
            .contains(&format!("<a href=\"/console/players/{}\">", cheater.id)),
        "{}",
        audit.text
    );
    let other_replica = TestServer::start(&db).await;
    let mut b2 = Browser::new(&other_replica);
    b2.sign_in(ADMIN).await;
    assert!(b2.get("/console/").await.text.contains("did not balance"));
    sqlx::query(&format!(
        "UPDATE accounts SET credits = credits - 1 WHERE player_id = {}",
        cheater.id
    ))
    .execute(&pool)
    .await
    .unwrap();

    // Signing out ends the session.
    let out = b.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(b.get("/console/").await.location(), "/console/login");
}

async fn sign_in_is_refused_and_rate_limited_and_pages_need_a_session(db: TestDb) {
    let t = TestServer::start(&db).await;
    let mut b = Browser::new(&t);
    for path in [
        "/console/",
        "/console/players?q=1",
        "/console/ledger",
        "/console/audit",
    ] {
        let p = b.get(path).await;
        assert_eq!(
            (p.status, p.location()),
            (StatusCode::SEE_OTHER, "/console/login"),
            "{path}"
        );
    }
    let p = b.post("/console/audit", &[("csrf", "x")]).await;
    assert_eq!(p.location(), "/console/login", "a change without a session");
    // A made-up cookie is no session.
    b.cookie = Some("market_console=forged".into());
    assert_eq!(b.get("/console/").await.location(), "/console/login");
    for _ in 0..5 {
        let p = b.sign_in("not-the-key").await;
        assert_eq!(p.status, StatusCode::UNAUTHORIZED);
        assert!(p.headers.get("set-cookie").is_none());
    }
    // A sixth wrong key waits out the window unchecked…
    let p = b.sign_in("not-the-key-either").await;
    assert_eq!(p.status, StatusCode::TOO_MANY_REQUESTS, "{}", p.text);
    // …but the right key still gets in: guessers sharing an address (a
    // proxy) cannot lock the operators out.
    let p = b.sign_in(ADMIN).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    // A market without an admin key has no console at all.
    let mut config = Config::for_tests(&db.url);
    config.admin_key = None;
    let plain = TestServer::start_with(config).await;
    let p = Browser::new(&plain).get("/console/login").await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
}

async fn a_withdrawn_listing_goes_back_to_its_seller_and_the_books_balance(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("console-seller").await;
    // A name with markup: shown as text.
    let r = t
        .send(
            Method::POST,
            "/v1/sessions",
            None,
            None,
            Some(
                json!({"device_id": "console-seller", "name": "<img src=x onerror=alert(1)>"})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let listing = t.create_listing(&seller, "console-ore", 40).await;
    let mut b = Browser::new(&t);
    b.sign_in(ADMIN).await;
    let page = b.get(&format!("/console/players/{}", seller.id)).await;
    assert!(!page.text.contains("<img src=x"), "markup is escaped");
    assert!(page.text.contains("&lt;img src=x onerror=alert(1)&gt;"));
    let csrf = page.csrf();
    let listings = b.get("/console/listings?item=console-ore").await;
    assert!(
        listings
            .text
            .contains(&format!("/console/listings/{listing}/cancel")),
        "{}",
        listings.text
    );
    let r = b
        .post(
            &format!("/console/listings/{listing}/cancel"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let again = b
        .post(
            &format!("/console/listings/{listing}/cancel"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "withdrawn once");
    let l = t.get(&seller, &format!("/v1/listings/{listing}")).await;
    assert_eq!(l.body["listing"]["status"], "cancelled", "{}", l.text);
    // The item waits for the seller as a delivery (client deposits).
    let d = t.get(&seller, "/v1/me/deliveries").await;
    assert_eq!(
        d.body["deliveries"][0]["kind"], "listing_returned",
        "{}",
        d.text
    );
    assert_eq!(d.body["deliveries"][0]["quantity"], json!(1));
    // Paging keeps the filter: 52 listings of one item, 50 a page.
    for _ in 0..52 {
        t.create_listing(&seller, "paged-ore", 3).await;
    }
    let first = b.get("/console/listings?item=paged-ore&min_price=2").await;
    assert_eq!(first.text.matches("/cancel\"").count(), 50, "a page of 50");
    let at = first.text.find("Older").expect("an Older link");
    let href = first.text[..at]
        .rsplit("href=\"")
        .next()
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    assert!(
        href.contains("item=paged-ore") && href.contains("min_price=2"),
        "{href}"
    );
    let rest = b.get(&href).await;
    assert_eq!(rest.text.matches("/cancel\"").count(), 2, "{}", rest.text);
    assert!(!rest.text.contains("console-ore"), "the filter held");

    // A buy order cancelled by the operator: its escrow waits for the buyer.
    let buyer = t.login("console-order-buyer").await;
    let r = t
        .send(
            Method::POST,
            "/v1/orders",
            Some(&buyer.token),
            Some(&key()),
            Some(
                json!({"item_id": "console-ore", "quantity": 3, "max_price": 7, "deposit": 21})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let order = r.body["order"]["id"].as_i64().unwrap();
    let orders = b.get("/console/orders").await;
    assert!(
        orders
            .text
            .contains(&format!("/console/orders/{order}/cancel")),
        "{}",
        orders.text
    );
    let r = b
        .post(
            &format!("/console/orders/{order}/cancel"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let again = b
        .post(
            &format!("/console/orders/{order}/cancel"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let d = t.get(&buyer, "/v1/me/deliveries").await;
    assert_eq!(
        d.body["deliveries"][0]["kind"], "order_refund",
        "{}",
        d.text
    );
    assert_eq!(d.body["deliveries"][0]["quantity"], json!(21));
    check_books(&db).await;
    let overview = b.get("/console/").await;
    assert!(overview.text.contains("withdraw_listing") && overview.text.contains("cancel_order"));
}
