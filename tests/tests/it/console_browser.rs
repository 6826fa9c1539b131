//! The operator console in a real headless Chromium (Debian's `chromium`
//! and `chromium-driver`, driven over WebDriver), against the built server
//! binary on both databases with seeded data: sign in, find a player, read
//! their ledger, ban them (their token stops working), grant with a reason,
//! withdraw a listing (its escrow comes back), run the audit — and the
//! security checks a browser can make: no session → sign-in page, a wrong
//! key refused, a form without its CSRF token refused, markup in a player's
//! name shown as text with no script run, the cookie's flags, no framing.
//! Skipped with a SKIPPED line where Chromium is not installed.

use marketplace_e2e::webdriver::Browser;
use marketplace_e2e::{check_books, postgres_url, scalar, sqlite_url, Api, ServerProcess};
use reqwest::Method;
use serde_json::json;

const ADMIN: &str = "e2e-admin-key-e2e-admin-key-e2e-admin-key";

async fn console(database: &str) {
    let Some(b) = Browser::start("operator console in Chromium").await else {
        return;
    };
    let server = ServerProcess::start(database, &["--admin-key", ADMIN]);
    let base = server.url();
    let api = Api::default();
    // Seeded: a seller with listings, a buyer who bought, a player whose
    // name holds markup.
    let (seller, seller_token) = api.login(&base, "bb-console-seller").await;
    let sold = api.create_listing(&base, &seller_token, "relic", 50).await;
    let kept = api.create_listing(&base, &seller_token, "gem", 30).await;
    let (_, buyer) = api.login(&base, "bb-console-buyer").await;
    let r = api
        .purchase(&base, &buyer, sold, 50, &marketplace_e2e::key())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api
        .send(&base, Method::POST, "/v1/sessions", None, None,
              Some(json!({"device_id": "bb-console-markup", "name": "<img src=x onerror=\"window.__pwned=1\">"})))
        .await
        .unwrap();
    let markup_player = r.body["player_id"].as_i64().unwrap();

    // No session: the sign-in page.
    b.goto(&format!("{base}/console/")).await;
    assert!(b.wait_for_url("/console/login").await, "{}", b.url().await);
    // A wrong key is refused.
    b.type_into("input[name=key]", "not-the-admin-key").await;
    b.submit("form[action='/console/login'] button").await;
    assert!(b.text().await.contains("That is not the admin key"));
    // The right one signs in.
    b.type_into("input[name=key]", ADMIN).await;
    b.submit("form[action='/console/login'] button").await;
    assert!(
        b.text().await.contains("Inside the market"),
        "{}",
        b.text().await
    );
    let cookies = b.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "market_console")
        .expect("the session cookie");
    assert_eq!(session["httpOnly"], json!(true), "{session}");
    assert_eq!(session["sameSite"], json!("Strict"), "{session}");
    assert_eq!(
        b.run("return document.cookie").await,
        json!(""),
        "the page's script cannot read it"
    );

    // Find the seller and read their ledger.
    b.goto(&format!("{base}/console/players")).await;
    b.type_into("input[name=q]", "bb-console-s").await;
    b.submit("form[action='/console/players'] button").await;
    b.submit(&format!("a[href='/console/players/{seller}']"))
        .await;
    let page = b.text().await;
    assert!(
        page.contains("Ledger") && page.contains("list") && page.contains("relic"),
        "{page}"
    );

    // Grant with a reason.
    b.type_into("input[name=quantity]", "75").await;
    b.type_into("input[name=reason]", "goodwill after outage")
        .await;
    b.submit("form[action$='/grant'] button").await;
    let account = api
        .send(
            &base,
            Method::GET,
            "/v1/me/account",
            Some(&seller_token),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        account.body["account"]["credits"],
        json!(75),
        "{}",
        account.text
    );

    // Withdraw the listing that did not sell: its item waits for the seller.
    b.goto(&format!("{base}/console/listings?seller={seller}"))
        .await;
    b.submit(&format!(
        "form[action='/console/listings/{kept}/cancel'] button"
    ))
    .await;
    assert!(b.text().await.contains("cancelled"));
    let waiting = api
        .send(
            &base,
            Method::GET,
            "/v1/me/deliveries",
            Some(&seller_token),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        waiting.body["deliveries"][0]["listing_id"],
        json!(kept),
        "{}",
        waiting.text
    );

    // Ban: the player's token is refused by the API at once.
    b.goto(&format!("{base}/console/players/{seller}")).await;
    b.submit("form[action$='/ban'] button").await;
    assert!(b.text().await.contains("banned"));
    let r = api
        .send(
            &base,
            Method::GET,
            "/v1/me/account",
            Some(&seller_token),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text);

    // The audit.
    b.goto(&format!("{base}/console/audit")).await;
    b.submit("form[action='/console/audit'] button").await;
    assert!(
        b.text().await.contains("The books balanced"),
        "{}",
        b.text().await
    );

    // Markup in a name is text; nothing ran.
    b.goto(&format!("{base}/console/players/{markup_player}"))
        .await;
    assert!(b.text().await.contains("<img src=x onerror="));
    assert_eq!(b.count("main img").await, 0);
    assert_eq!(
        b.run("return window.__pwned === undefined").await,
        json!(true)
    );

    // A form posted without its CSRF token is refused.
    b.run(&format!(
        "const f = document.createElement('form'); f.method = 'post'; \
         f.action = '/console/players/{markup_player}/ban'; document.body.appendChild(f); f.submit(); return 1"
    ))
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(b.text().await.contains("CSRF"), "{}", b.text().await);
    assert_eq!(
        scalar(
            database,
            &format!("SELECT COUNT(*) FROM bans WHERE player_id = {markup_player}")
        )
        .await,
        0
    );

    // Framing is refused (the header a browser obeys).
    let r = reqwest::get(format!("{base}/console/login")).await.unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");

    // A screenshot of the overview for the README, when asked.
    if let Ok(path) = std::env::var("MARKET_CONSOLE_SCREENSHOT") {
        b.goto(&format!("{base}/console/")).await;
        std::fs::write(&path, b.screenshot().await).unwrap();
    }
    // Sign out.
    b.goto(&format!("{base}/console/")).await;
    b.submit("form[action='/console/logout'] button").await;
    assert!(b.wait_for_url("/console/login").await);
    check_books(database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_the_console_in_chromium_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    console(&sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_the_console_in_chromium_on_postgres() {
    let Some(url) = postgres_url("operator console in Chromium").await else {
        return;
    };
    console(&url).await;
}
