//! The WebSocket upgrade request: every check Phoenix makes before the 101. Plume checks the
//! request is a well-formed upgrade first (Phoenix leaves that to its HTTP adapter, last),
//! then follows Phoenix's order:
//!
//! 1. method `GET` and the WebSocket upgrade headers (else 400 with a text body);
//! 2. the `Origin` check (403);
//! 3. the phoenix.js `authToken` subprotocol: `phoenix, base64url.bearer.phx.<token>`; exactly
//!    one such entry is decoded (standard base64, padding optional; URL-safe accepted too) and
//!    removed from the offer; an undecodable token is a 403;
//! 4. the subprotocol check: if the client still offers protocols, one must be `phoenix`
//!    (403 otherwise), and `phoenix` is echoed;
//! 5. `vsn`: absent or `1.0.x` is V1, `2.0.x` V2, anything else 403;
//! 6. the application's [`ConnectHook`] (403 when it refuses).

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::{HeaderMap, Method, Request, StatusCode, header};
use plume_channels::{Accepted, ConnectHook, ConnectRequest};
use plume_wire::Serializer;
use std::net::SocketAddr;

use crate::origin::{OriginPattern, origin_allowed};
use crate::query::parse_query;

/// The subprotocol phoenix.js offers first, and the one Plume selects.
pub const PHOENIX_SUBPROTOCOL: &str = "phoenix";
/// Prefix of the subprotocol entry that carries the auth token.
pub const TOKEN_PREFIX: &str = "base64url.bearer.phx.";

/// A refused upgrade: the HTTP status and why (the why is logged, never sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400 or 403.
    pub status: StatusCode,
    /// What was wrong, for the log (and for the 400 body).
    pub reason: String,
    /// Which check refused, from a fixed set: the `reason` label of
    /// `plume_upgrades_refused_total` (`bad_request`, `origin`, `auth_token`, `subprotocol`,
    /// `vsn`, `connect_refused`).
    pub label: &'static str,
}

fn refuse(status: StatusCode, reason: impl Into<String>) -> Refusal {
    let label = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        _ => "connect_refused",
    };
    Refusal {
        status,
        reason: reason.into(),
        label,
    }
}

impl Refusal {
    fn labelled(mut self, label: &'static str) -> Refusal {
        self.label = label;
        self
    }
}

/// An accepted upgrade.
pub struct Upgrade {
    /// The `Sec-WebSocket-Accept` value.
    pub accept_key: String,
    /// Whether to answer `Sec-WebSocket-Protocol: phoenix`.
    pub select_phoenix: bool,
    /// What the client presented.
    pub request: ConnectRequest,
    /// What the hook decided.
    pub accepted: Accepted,
}

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

fn decode_token(encoded: &str) -> Option<String> {
    let bytes = STANDARD_LENIENT
        .decode(encoded)
        .or_else(|_| URL_SAFE_LENIENT.decode(encoded))
        .ok()?;
    String::from_utf8(bytes).ok()
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Runs every check on an upgrade request.
pub fn check<B>(
    req: &Request<B>,
    peer: Option<SocketAddr>,
    origins: &[OriginPattern],
    hook: &dyn ConnectHook,
) -> Result<Upgrade, Refusal> {
    if req.method() != Method::GET {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "WebSocket upgrades use GET",
        ));
    }
    let headers = req.headers();
    if !header_has_token(headers, header::UPGRADE, "websocket") {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "'upgrade' header must be 'websocket'",
        ));
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "'connection' header must contain 'upgrade'",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "'sec-websocket-version' header must be '13'",
        ));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "'sec-websocket-key' header is missing",
        ));
    };
    let accept_key = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());

    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or(""));
    if !origin_allowed(origins, origin) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("origin {:?} is not allowed", origin.unwrap_or("")),
        )
        .labelled("origin"));
    }

    // Subprotocols: Phoenix reads the first header only; so do we.
    let offered: Vec<&str> = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let (tokens, rest): (Vec<&str>, Vec<&str>) =
        offered.iter().partition(|p| p.starts_with(TOKEN_PREFIX));
    let (auth_token, remaining) = if tokens.len() == 1 {
        let encoded = &tokens[0][TOKEN_PREFIX.len()..];
        match decode_token(encoded) {
            Some(token) => (Some(token), rest),
            None => {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    "the auth token subprotocol is not valid base64 UTF-8",
                )
                .labelled("auth_token"));
            }
        }
    } else {
        (None, offered.clone())
    };
    let select_phoenix = remaining.contains(&PHOENIX_SUBPROTOCOL);
    if !remaining.is_empty() && !select_phoenix {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("no supported subprotocol in {remaining:?}"),
        )
        .labelled("subprotocol"));
    }

    let params = parse_query(req.uri().query().unwrap_or(""));
    let serializer = negotiate(&params)?;
    let request = ConnectRequest {
        params,
        auth_token,
        serializer,
        peer,
    };
    let accepted = hook
        .connect(&request)
        .map_err(|e| refuse(StatusCode::FORBIDDEN, format!("connect refused: {e}")))?;
    Ok(Upgrade {
        accept_key,
        select_phoenix,
        request,
        accepted,
    })
}

/// The serializer the connect params' `vsn` asks for (absent: V1); 403 for any other
/// `vsn`. Shared by the WebSocket upgrade and the LongPoll session start.
pub(crate) fn negotiate(
    params: &serde_json::Map<String, serde_json::Value>,
) -> Result<Serializer, Refusal> {
    match params.get("vsn") {
        None => Ok(Serializer::V1),
        Some(serde_json::Value::String(vsn)) => Serializer::from_vsn(Some(vsn))
            .map_err(|e| refuse(StatusCode::FORBIDDEN, e.to_string()).labelled("vsn")),
        Some(_) => Err(refuse(StatusCode::FORBIDDEN, "vsn must be a string").labelled("vsn")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;
    use plume_channels::{AcceptAll, Refused};

    fn upgrade_req(uri: &str, protocols: Option<&str>) -> Request<()> {
        let mut b = Request::get(uri)
            .header("upgrade", "websocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(p) = protocols {
            b = b.header("sec-websocket-protocol", p);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        let up = check(
            &upgrade_req("/socket/websocket", None),
            None,
            &[],
            &AcceptAll,
        )
        .ok()
        .unwrap();
        assert_eq!(up.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.request.serializer, Serializer::V1);
        assert!(!up.select_phoenix);
    }

    #[test]
    fn vsn_selects_or_refuses() {
        let v2 = check(&upgrade_req("/s?vsn=2.0.0", None), None, &[], &AcceptAll);
        assert_eq!(v2.ok().unwrap().request.serializer, Serializer::V2);
        for bad in ["/s?vsn=3.0.0", "/s?vsn=2.1.0", "/s?vsn=2", "/s?vsn[a]=b"] {
            let err = check(&upgrade_req(bad, None), None, &[], &AcceptAll)
                .err()
                .unwrap();
            assert_eq!(err.status, StatusCode::FORBIDDEN, "{bad}");
        }
    }

    #[test]
    fn auth_token_subprotocol_is_decoded_and_phoenix_selected() {
        // btoa("1234") = "MTIzNA==", padding stripped by phoenix.js.
        let up = check(
            &upgrade_req("/s?vsn=2.0.0", Some("phoenix, base64url.bearer.phx.MTIzNA")),
            None,
            &[],
            &AcceptAll,
        )
        .ok()
        .unwrap();
        assert_eq!(up.request.auth_token.as_deref(), Some("1234"));
        assert!(up.select_phoenix);
    }

    #[test]
    fn bad_token_and_foreign_subprotocols_are_refused() {
        let bad = check(
            &upgrade_req("/s", Some("phoenix, base64url.bearer.phx.@@@")),
            None,
            &[],
            &AcceptAll,
        );
        assert_eq!(bad.err().unwrap().status, StatusCode::FORBIDDEN);
        let mqtt = check(&upgrade_req("/s", Some("mqtt")), None, &[], &AcceptAll);
        assert_eq!(mqtt.err().unwrap().status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn missing_upgrade_headers_are_400() {
        let req = Request::get("/s").body(()).unwrap();
        let err = check(&req, None, &[], &AcceptAll).err().unwrap();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }

    struct NeedToken;
    impl ConnectHook for NeedToken {
        fn connect(&self, req: &ConnectRequest) -> Result<Accepted, Refused> {
            match req.param("token") {
                Some(t) if !t.is_empty() => Ok(Accepted::default()),
                _ => Err(Refused("no token".into())),
            }
        }
    }

    #[test]
    fn hook_refusal_is_403() {
        let err = check(&upgrade_req("/s?vsn=2.0.0", None), None, &[], &NeedToken)
            .err()
            .unwrap();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
        assert!(
            check(
                &upgrade_req("/s?token=x&vsn=2.0.0", None),
                None,
                &[],
                &NeedToken
            )
            .is_ok()
        );
    }
}
