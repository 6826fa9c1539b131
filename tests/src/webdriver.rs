//! Just enough of the W3C WebDriver protocol to drive a real headless
//! Chromium through `chromedriver` (both from Debian's packages): open a
//! page, find elements by CSS, type, click, read text and cookies, run a
//! check script, take a screenshot. A few dozen lines over the reqwest and
//! serde_json the suites already use, instead of a WebDriver crate and its
//! dependency tree.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Debian puts them; `MARKET_CHROMEDRIVER` / `MARKET_CHROMIUM`
/// override.
fn binaries() -> Option<(String, String)> {
    let driver =
        std::env::var("MARKET_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    let browser = std::env::var("MARKET_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    (std::path::Path::new(&driver).exists() && std::path::Path::new(&browser).exists())
        .then_some((driver, browser))
}

/// A headless Chromium session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    /// `None`, with a SKIPPED line naming `what`, where Chromium or
    /// chromedriver is not installed (`apt-get install chromium
    /// chromium-driver`; `.ci/run` does).
    pub async fn start(what: &str) -> Option<Browser> {
        let Some((driver, browser)) = binaries() else {
            if std::env::var_os("MARKET_REQUIRE_BROWSER").is_some() {
                panic!(
                    "MARKET_REQUIRE_BROWSER is set but chromium / chromedriver are not installed"
                );
            }
            eprintln!("SKIPPED: {what} (no /usr/bin/chromium and /usr/bin/chromedriver: apt-get install chromium chromium-driver)");
            return None;
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("addr").port()
        };
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut b = Browser {
            driver: child,
            base,
            session: String::new(),
            http,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", "--lang=en-US"]
            }
        }}});
        let v = b.call(reqwest::Method::POST, "/session", Some(caps)).await;
        b.session = v["sessionId"].as_str().expect("a session id").to_string();
        Some(b)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let mut req = self.http.request(method, url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r: Value = req
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("chromedriver speaks JSON");
        if let Some(err) = r["value"]["error"].as_str() {
            panic!("WebDriver {path}: {err}: {}", r["value"]["message"]);
        }
        r["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The element `css` selects (panics when none does).
    /// Waits up to 5 s for it (a page still loading after a click).
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self
                .call(
                    reqwest::Method::POST,
                    "/elements",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Some(e) = v[0][ELEMENT].as_str() {
                return e.to_string();
            }
            if Instant::now() > deadline {
                panic!("no {css} on {}: {}", self.url().await, self.source().await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn count(&self, css: &str) -> usize {
        self.call(
            reqwest::Method::POST,
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .as_array()
        .map_or(0, Vec::len)
    }

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Clicks `css` (a submit button, a link) and waits for the next page
    /// to have loaded.
    pub async fn submit(&self, css: &str) {
        self.run("window.__before_click = 1; return 1").await;
        self.click(css).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let done = self
                .run("return window.__before_click === undefined && document.readyState === 'complete'")
                .await;
            if done == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no page after clicking {css}");
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// The visible text of the page's body (once the page in the window
    /// has settled: read twice, the same).
    pub async fn text(&self) -> String {
        let mut last = String::new();
        for _ in 0..50 {
            let now = self
                .run("return document.readyState === 'complete' && document.body ? document.body.innerText : null")
                .await;
            if let Some(text) = now.as_str() {
                if text == last {
                    return last;
                }
                last = text.to_string();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }

    /// Waits up to 5 s for the window's address to end with `suffix`.
    pub async fn wait_for_url(&self, suffix: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.url().await.ends_with(suffix) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Runs `script` in the page (WebDriver's own channel, which the page's
    /// CSP does not govern) and returns its value.
    pub async fn run(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    pub async fn cookies(&self) -> Vec<Value> {
        self.call(reqwest::Method::GET, "/cookie", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("a base64 PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
