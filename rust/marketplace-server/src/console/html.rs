//! Building the console's pages: one escape function every value goes
//! through, the page frame, forms that carry the CSRF token, and the small
//! SVG charts (drawn here: no script, nothing third-party).

use std::fmt::Write;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Text made safe for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string value.
pub fn url(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#1b1f24}\
nav{background:#1b1f24;padding:8px 16px}nav a{color:#e6edf3;margin-right:16px;text-decoration:none}\
nav form{display:inline;float:right}main{padding:16px 24px}table{border-collapse:collapse;margin:8px 0}\
td,th{border-bottom:1px solid #d0d7de;padding:4px 10px;text-align:left;vertical-align:top}\
th{background:#f6f8fa}.ok{color:#1a7f37}.bad{color:#cf222e;font-weight:600}\
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;min-width:150px}\
.card b{display:block;font-size:20px}form.inline{display:inline}input,select,button{font:inherit;margin:2px}\
.muted{color:#656d76}";

/// A whole page around `body`, with the navigation (and the sign-out form,
/// which needs the session's CSRF token).
pub fn page(title: &str, csrf: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{} · Market console</title>\
         <style>{STYLE}</style></head><body><nav><a href=/console/>Overview</a><a href=/console/players>Players</a>\
         <a href=/console/listings>Listings</a><a href=/console/orders>Orders</a><a href=/console/ledger>Ledger</a>\
         <a href=/console/audit>Audit</a>{}</nav><main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        form("/console/logout", csrf, "", "Sign out"),
        esc(title)
    );
    respond(StatusCode::OK, html)
}

/// A POST form to `action` with the CSRF token, `fields` (already HTML) and
/// a button.
pub fn form(action: &str, csrf: &str, fields: &str, button: &str) -> String {
    format!(
        "<form class=inline method=post action=\"{}\"><input type=hidden name=csrf value=\"{}\">{fields}\
         <button type=submit>{}</button></form>",
        esc(action),
        esc(csrf),
        esc(button)
    )
}

pub fn respond(status: StatusCode, html: String) -> Response {
    let mut response = (status, html).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

pub fn login_page(error: Option<&str>, status: StatusCode) -> Response {
    let error = error
        .map(|e| format!("<p class=bad>{}</p>", esc(e)))
        .unwrap_or_default();
    respond(
        status,
        format!(
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>Sign in · Market console</title>\
             <style>{STYLE}</style></head><body><main><h1>Market console</h1>{error}\
             <form method=post action=/console/login><label>Admin key <input type=password name=key \
             autocomplete=current-password autofocus></label> <button type=submit>Sign in</button></form>\
             </main></body></html>"
        ),
    )
}

pub fn error_page(status: StatusCode, message: &str) -> Response {
    respond(
        status,
        format!(
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>Refused · Market console</title>\
             <style>{STYLE}</style></head><body><main><h1>{}</h1><p class=bad>{}</p>\
             <p><a href=/console/>Back to the console</a></p></main></body></html>",
            status.as_u16(),
            esc(message)
        ),
    )
}

/// A table: header cells (text) and rows of cells (already HTML).
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    if rows.is_empty() {
        let _ = write!(
            out,
            "<tr><td colspan={} class=muted>none</td></tr>",
            head.len()
        );
    }
    out.push_str("</table>");
    out
}

/// A small line chart of `points` (oldest first), drawn as SVG.
pub fn sparkline(label: &str, points: &[f64]) -> String {
    let (w, h) = (240.0, 48.0);
    let max = points.iter().copied().fold(0.0_f64, f64::max).max(1.0);
    let n = points.len().max(2) as f64 - 1.0;
    let path: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                i as f64 / n * w,
                h - v / max * (h - 4.0) - 2.0
            )
        })
        .collect();
    let last = points.last().copied().unwrap_or(0.0);
    format!(
        "<div class=card><span class=muted>{}</span><b>{last:.0}</b><svg role=img aria-label=\"{}\" \
         width={w} height={h} viewBox=\"0 0 {w} {h}\"><polyline fill=none stroke=#0969da stroke-width=1.5 \
         points=\"{}\"/></svg><div class=muted>last 60 min, peak {max:.0}</div></div>",
        esc(label),
        esc(label),
        path.join(" ")
    )
}

/// Unix seconds as UTC `YYYY-MM-DD HH:MM:SS` (civil from days).
pub fn time(at: i64) -> String {
    let days = at.div_euclid(86_400);
    let secs = at.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Unix seconds at the start of a UTC day given as `YYYY-MM-DD`.
pub fn day_start(date: &str) -> Option<i64> {
    let mut parts = date.trim().splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return None;
    }
    // Days from civil (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_shown_as_text() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(url("a b&c=<d>"), "a%20b%26c%3D%3Cd%3E");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(time(0), "1970-01-01 00:00:00");
        assert_eq!(time(1_764_633_600), "2025-12-02 00:00:00");
        assert_eq!(day_start("2025-12-02"), Some(1_764_633_600));
        assert_eq!(day_start("1970-01-01"), Some(0));
        assert_eq!(
            day_start("2024-02-29").map(time).as_deref(),
            Some("2024-02-29 00:00:00")
        );
        assert_eq!(day_start("2025-13-01"), None);
        assert_eq!(day_start("yesterday"), None);
    }
}
