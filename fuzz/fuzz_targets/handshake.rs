//! The WebSocket upgrade checks (`handshake::check`): the query string, the
//! `Sec-WebSocket-Protocol` list with the phoenix.js auth-token entry, and the `Origin`
//! header, all from the fuzzer. Input: `query \n subprotocols \n origin`.
#![no_main]

use std::sync::OnceLock;

use http::{HeaderValue, Request, header};
use libfuzzer_sys::fuzz_target;
use plume_channels::AcceptAll;
use plume_server::handshake::{TOKEN_PREFIX, check};
use plume_server::origin::OriginPattern;

fn origins() -> &'static [OriginPattern] {
    static ORIGINS: OnceLock<Vec<OriginPattern>> = OnceLock::new();
    ORIGINS.get_or_init(|| {
        [
            "https://app.example.com",
            "//*.example.org",
            "http://localhost:4000",
        ]
        .iter()
        .filter_map(|p| OriginPattern::parse(p))
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let query = parts.next().unwrap_or_default();
    let protocols = parts.next();
    let origin = parts.next();

    let mut uri = b"/socket/websocket?".to_vec();
    uri.extend_from_slice(query);
    let mut req = Request::get("/socket/websocket")
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
        .body(())
        .expect("a fixed request builds");
    // Bytes that are not a valid URI or header value never reach Plume (hyper refuses them
    // first), so such an input keeps the fixed part only.
    if let Ok(u) = http::Uri::try_from(uri) {
        *req.uri_mut() = u;
    }
    let offered = protocols.and_then(|p| HeaderValue::from_bytes(p).ok());
    if let Some(p) = &offered {
        req.headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, p.clone());
    }
    if let Some(o) = origin.and_then(|o| HeaderValue::from_bytes(o).ok()) {
        req.headers_mut().insert(header::ORIGIN, o);
    }

    let with_origin = check(&req, None, origins(), &AcceptAll);
    let outcome = check(&req, None, &[], &AcceptAll);
    // The origin check only ever refuses more.
    assert!(with_origin.is_err() || outcome.is_ok());
    if let Ok(up) = outcome {
        assert_eq!(up.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let list = offered.as_ref().and_then(|p| p.to_str().ok()).unwrap_or("");
        let entries: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        // `phoenix` is selected exactly when it is offered; a token comes only from exactly
        // one token entry.
        assert_eq!(up.select_phoenix, entries.contains(&"phoenix"), "{list:?}");
        let tokens = entries
            .iter()
            .filter(|e| e.starts_with(TOKEN_PREFIX))
            .count();
        assert_eq!(up.request.auth_token.is_some(), tokens == 1, "{list:?}");
    }
});
