//! The addon's words for people, checked without Godot: every class,
//! method, property and signal it registers has editor help (what F1
//! shows; the test reads the very XML the extension hands the editor at
//! start-up, made from the doc comments by `register-docs`), and every
//! error code has a message in every language the addon ships.

/// The text between `open` and `close` after `from`, and where it ended.
fn between<'a>(xml: &'a str, from: usize, open: &str, close: &str) -> Option<(&'a str, usize)> {
    let start = xml[from..].find(open)? + from + open.len();
    let end = xml[start..].find(close)? + start;
    Some((&xml[start..end], end + close.len()))
}

/// Each `<tag name="…"…>…</tag>` element: its name and its body.
fn elements<'a>(xml: &'a str, tag: &str) -> Vec<(&'a str, &'a str)> {
    let (open, close) = (format!("<{tag} name=\""), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut at = 0;
    while let Some((name, after)) = between(xml, at, &open, "\"") {
        let Some((body, end)) = between(xml, after, "", &close) else {
            break;
        };
        out.push((name, body));
        at = end;
    }
    out
}

fn described(body: &str) -> bool {
    between(body, 0, "<description>", "</description>").is_some_and(|(d, _)| !d.trim().is_empty())
}

#[test]
fn every_class_method_property_and_signal_has_editor_help() {
    let mut missing = Vec::new();
    let mut classes = Vec::new();
    for xml in godot::docs::__gather_xml_docs() {
        let class = between(&xml, 0, "<class name=\"", "\"")
            .map_or("?", |(n, _)| n)
            .to_string();
        if between(&xml, 0, "<brief_description>", "</brief_description>")
            .is_none_or(|(d, _)| d.trim().is_empty())
        {
            missing.push(format!("class {class}"));
        }
        for (name, body) in elements(&xml, "method") {
            if !described(body) {
                missing.push(format!("method {class}.{name}()"));
            }
        }
        for (name, body) in elements(&xml, "signal") {
            if !described(body) {
                missing.push(format!("signal {class}.{name}"));
            }
        }
        // Members are one line each: `<member name="x" …>text</member>`.
        let mut at = 0;
        while let Some((name, after)) = between(&xml, at, "<member name=\"", "\"") {
            let Some((rest, end)) = between(&xml, after, "", "</member>") else {
                break;
            };
            let text = rest.split_once('>').map_or("", |(_, t)| t);
            if text.trim().is_empty() {
                missing.push(format!("property {class}.{name}"));
            }
            at = end;
        }
        classes.push(class);
    }
    for expected in [
        "TradingMarketplace",
        "LocalPlayerData",
        "MarketRequest",
        "MarketResult",
        "MarketListing",
        "MarketPurchase",
        "MarketOrder",
        "MarketFill",
        "MarketDelivery",
        "MarketAccount",
        "MarketNotification",
        "MarketPendingTrade",
        "MarketHold",
    ] {
        assert!(
            classes.iter().any(|c| c == expected),
            "{expected} is not registered with editor help (registered: {classes:?})"
        );
    }
    assert!(
        missing.is_empty(),
        "no editor help (add a /// comment) for:\n  {}",
        missing.join("\n  ")
    );
}

/// Every error code has a message for the player in every language the
/// addon ships (`ERR_<CODE>` keys), and the languages have the same keys.
#[test]
fn every_error_code_has_a_message_in_every_shipped_language() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../addons/trading_marketplace/translations");
    let mut key_sets = Vec::new();
    for locale in ["en", "de"] {
        let path = dir.join(format!("market_messages.{locale}.tres"));
        let text = std::fs::read_to_string(&path).expect("the translation file reads");
        assert!(text.contains(&format!("locale = \"{locale}\"")), "{path:?}");
        let mut keys = std::collections::BTreeSet::new();
        for line in text.lines() {
            let Some((key, value)) = line.split_once("\": &\"") else {
                continue;
            };
            let key = key.trim_start_matches("&\"").to_string();
            let value = value.trim_end_matches(',').trim_end_matches('"');
            assert!(!value.trim().is_empty(), "{key} is empty in {locale}");
            keys.insert(key);
        }
        for code in marketplace_client::ErrorCode::ALL {
            let key = format!("ERR_{}", code.as_str().to_uppercase());
            assert!(
                keys.contains(&key),
                "{key} has no {locale} message in {path:?}"
            );
        }
        key_sets.push(keys);
    }
    assert_eq!(key_sets[0], key_sets[1], "en and de have different keys");
}
