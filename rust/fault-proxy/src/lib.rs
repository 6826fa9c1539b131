//! A fault-injecting HTTP/1.1 proxy for tests and the chaos simulation.
//!
//! It reads each request from the client, and — according to the first
//! matching [`Rule`] — forwards it to the server and relays the answer, or
//! misbehaves: drops the answer after the server has committed, delays,
//! resets the connection before forwarding, answers 500 itself, or holds the
//! answer until the client gives up. It understands just enough HTTP:
//! `Content-Length` bodies, which is all the marketplace's requests and
//! answers use, and a chunked answer (the change stream), which it relays
//! as it comes until either side closes or [`Proxy::cut_streams`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward, let the server answer, then close without relaying it: the
    /// server committed, the client never hears.
    LoseResponse,
    /// Wait this long before forwarding.
    Delay(Duration),
    /// Forward (the server commits), then hold the answer this long: the
    /// window in which the change is done but the client has not heard.
    DelayAnswer(Duration),
    /// Reset the connection before forwarding anything.
    Reset,
    /// Answer 500 without forwarding.
    Answer500,
    /// Forward, then sit on the answer forever (the client times out).
    Stall,
    /// Answer 200 with this garbage body without forwarding.
    Garbage(&'static str),
    /// Forward (the server commits), then answer with this HTTP status and
    /// an HTML error page of the proxy's own, as a CDN, WAF or load balancer
    /// does: the marketplace's answer is lost behind it.
    ProxyPage(u16),
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// Applies to requests whose path contains this.
    pub path_contains: String,
    pub fault: Fault,
    /// How many more requests it applies to; `None` = forever.
    pub remaining: Option<u64>,
    /// Applies with this probability (0..=1), drawn per request.
    pub probability: f64,
}

#[derive(Default)]
pub struct Stats {
    pub forwarded: AtomicU64,
    pub faults: AtomicU64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    rules: Arc<Mutex<Vec<Rule>>>,
    pub stats: Arc<Stats>,
    cuts: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let upstream = Arc::new(Mutex::new(upstream));
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let stats: Arc<Stats> = Arc::default();
        let (cuts, cut_rx) = tokio::sync::watch::channel(0u64);
        let (u, r, s) = (upstream.clone(), rules.clone(), stats.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let (u, r, s, c) = (u.clone(), r.clone(), s.clone(), cut_rx.clone());
                tokio::spawn(async move {
                    let _ = serve_connection(client, u, r, s, c).await;
                });
            }
        });
        Proxy {
            addr,
            upstream,
            rules,
            stats,
            cuts,
            task,
        }
    }

    /// Drops every streamed answer being relayed now (both connections
    /// closed at once, as a network that fails mid-stream).
    pub fn cut_streams(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Points the proxy at a new server (after a restart on another port).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }

    /// Adds a rule applying to the next `times` matching requests.
    pub fn fault(&self, path_contains: &str, fault: Fault, times: u64) {
        self.rules.lock().unwrap().push(Rule {
            path_contains: path_contains.into(),
            fault,
            remaining: Some(times),
            probability: 1.0,
        });
    }

    /// Adds a rule applying to every matching request with `probability`.
    pub fn fault_randomly(&self, path_contains: &str, fault: Fault, probability: f64) {
        self.rules.lock().unwrap().push(Rule {
            path_contains: path_contains.into(),
            fault,
            remaining: None,
            probability,
        });
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }
}

fn pick(rules: &Mutex<Vec<Rule>>, path: &str) -> Option<Fault> {
    let mut rules = rules.lock().unwrap();
    for rule in rules.iter_mut() {
        if !path.contains(&rule.path_contains) || rule.remaining == Some(0) {
            continue;
        }
        if rule.probability < 1.0 && rand::random::<f64>() >= rule.probability {
            continue;
        }
        if let Some(n) = &mut rule.remaining {
            *n -= 1;
        }
        return Some(rule.fault);
    }
    None
}

/// Reads one HTTP message (head + `Content-Length` body). `None` at EOF.
async fn read_message(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let total = end + 4 + len;
            while buf.len() < total {
                let mut chunk = [0u8; 8192];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let message = buf[..total].to_vec();
            buf.drain(..total);
            return Ok(Some(message));
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn serve_connection(
    mut client: TcpStream,
    upstream: Arc<Mutex<SocketAddr>>,
    rules: Arc<Mutex<Vec<Rule>>>,
    stats: Arc<Stats>,
    mut cuts: tokio::sync::watch::Receiver<u64>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut server: Option<(TcpStream, Vec<u8>)> = None;
    while let Some(request) = read_message(&mut client, &mut buf).await? {
        let first_line =
            String::from_utf8_lossy(&request[..find(&request, b"\r\n").unwrap_or(0)]).to_string();
        let path = first_line.split(' ').nth(1).unwrap_or("").to_string();
        let fault = pick(&rules, &path);
        if fault.is_some() {
            stats.faults.fetch_add(1, Ordering::Relaxed);
        }
        match fault {
            Some(Fault::Reset) => {
                client.set_zero_linger()?;
                return Ok(());
            }
            Some(Fault::Answer500) => {
                let body = r#"{"error":{"code":"internal","message":"Internal server error"}}"#;
                let answer = format!(
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                client.write_all(answer.as_bytes()).await?;
                continue;
            }
            Some(Fault::Garbage(body)) => {
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                client.write_all(answer.as_bytes()).await?;
                continue;
            }
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            _ => {}
        }
        if server.is_none() {
            let addr = *upstream.lock().unwrap();
            server = Some((TcpStream::connect(addr).await?, Vec::new()));
        }
        let Some((upstream_conn, upstream_buf)) = server.as_mut() else {
            unreachable!()
        };
        upstream_conn.write_all(&request).await?;
        let Some(answer) = read_message(upstream_conn, upstream_buf).await? else {
            return Ok(());
        };
        stats.forwarded.fetch_add(1, Ordering::Relaxed);
        match fault {
            Some(Fault::LoseResponse) => {
                client.set_zero_linger()?;
                return Ok(());
            }
            Some(Fault::Stall) => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return Ok(());
            }
            Some(Fault::DelayAnswer(d)) => {
                tokio::time::sleep(d).await;
                client.write_all(&answer).await?;
            }
            Some(Fault::ProxyPage(status)) => {
                let body = format!(
                    "<html><head><title>{status}</title></head><body><center><h1>{status}</h1></center><hr><center>edge-proxy</center></body></html>"
                );
                let answer = format!(
                    "HTTP/1.1 {status} Proxy Says No\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                client.write_all(answer.as_bytes()).await?;
            }
            _ => {
                client.write_all(&answer).await?;
                if is_chunked(&answer) {
                    // A stream: relay what came with the head, then all
                    // that follows, until a side closes or a cut.
                    client.write_all(upstream_buf).await?;
                    upstream_buf.clear();
                    cuts.borrow_and_update();
                    let mut chunk = [0u8; 8192];
                    loop {
                        tokio::select! {
                            n = upstream_conn.read(&mut chunk) => {
                                let n = n?;
                                if n == 0 {
                                    return Ok(());
                                }
                                client.write_all(&chunk[..n]).await?;
                            }
                            _ = cuts.changed() => {
                                client.set_zero_linger()?;
                                return Ok(());
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// True when the message's head says its body is chunked.
fn is_chunked(message: &[u8]) -> bool {
    let end = find(message, b"\r\n\r\n").unwrap_or(message.len());
    String::from_utf8_lossy(&message[..end])
        .to_ascii_lowercase()
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"))
}
