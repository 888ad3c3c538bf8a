//! The web chat at `GET /`: three files embedded in the binary at build time (the page, its
//! style sheet and the bundled script, built from `web/` by `web/build.sh`), and in
//! development mode the endpoint the page signs in with.
//!
//! | request | answer |
//! |---|---|
//! | `GET /`, `GET /app.js`, `GET /app.css` | the file, `Cache-Control: no-cache`, a `Content-Security-Policy` that allows nothing but this origin |
//! | `GET /config.json` | `{"development_mode": bool, "websocket": bool, "long_poll_fallback_ms": n \| null}`: how the page signs in and which transports it may use |
//! | `POST /dev/token` `{"user_id": "alice"}` (development mode only) | 200 `{"user_id":"alice","token":"<JWT>"}`, a token signed with the development secret |
//! | any other path, or `/dev/token` outside development mode | 404 |
//! | a known path with another method | 405 with `Allow` |
//!
//! The page is an ordinary client of the public contract (protocol-spec/chat.md): nothing
//! here knows about chats.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use plume_server::api::{ApiFuture, json_error, json_response};
use plume_server::{ApiHead, ApiRequest, HttpApi};

/// The sign-in endpoint of development mode.
pub const DEV_TOKEN_PATH: &str = "/dev/token";

/// The page's settings.
pub const CONFIG_PATH: &str = "/config.json";

/// How long a WebSocket may take to open before phoenix.js tries LongPoll, when the server
/// serves LongPoll (phoenix.js's own suggestion).
pub const LONG_POLL_FALLBACK_MS: u64 = 2500;

/// How long a development token lasts.
const DEV_TOKEN_TTL_SECS: u64 = 12 * 3600;

/// The files, each with its content type.
const ASSETS: [(&str, &str, &[u8]); 3] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../web/src/index.html"),
    ),
    (
        "/app.css",
        "text/css; charset=utf-8",
        include_bytes!("../web/src/app.css"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/dist/app.js"),
    ),
];

/// Nothing but this origin: the page's script and style, and its WebSocket (`'self'` covers
/// `ws:` and `wss:` to the same host in CSP level 3); `data:` images for the empty favicon
/// (so the browser does not ask for `/favicon.ico`).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The web chat, mounted at `/` beside the backend API.
pub struct WebChat {
    /// The development secret in development mode (then `POST /dev/token` exists), else none.
    dev_secret: Option<String>,
    /// Longest user id a token may carry (`--max-id-bytes`).
    max_id_bytes: usize,
    /// The transports the server serves.
    transports: Transports,
}

/// Which transports the page may use. Only with LongPoll on does the page configure
/// phoenix.js's `longPollFallbackMs`: phoenix.js falls back on any failed connect, including
/// every reconnect attempt while the server restarts, and stays on LongPoll, so against a
/// server without it the page would never reconnect. With WebSocket off it uses LongPoll
/// from the start.
#[derive(Clone, Copy, Debug)]
pub struct Transports {
    /// `/socket/websocket` is served.
    pub websocket: bool,
    /// `/socket/longpoll` is served.
    pub long_poll: bool,
}

impl WebChat {
    /// The web chat; `dev_secret` is set only in development mode.
    pub fn new(dev_secret: Option<String>, max_id_bytes: usize, transports: Transports) -> WebChat {
        WebChat {
            dev_secret,
            max_id_bytes,
            transports,
        }
    }

    fn page_config(&self) -> Response<Full<Bytes>> {
        let mut resp = json_response(
            StatusCode::OK,
            &serde_json::json!({
                "development_mode": self.dev_secret.is_some(),
                "websocket": self.transports.websocket,
                "long_poll_fallback_ms": self.transports.long_poll.then_some(LONG_POLL_FALLBACK_MS),
            }),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        resp
    }

    fn dev_token(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let Some(secret) = &self.dev_secret else {
            return json_error(StatusCode::NOT_FOUND, "not found");
        };
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(body) else {
            return json_error(StatusCode::BAD_REQUEST, "body must be a JSON object");
        };
        let Some(user) = fields.get("user_id").and_then(|v| v.as_str()) else {
            return json_error(StatusCode::BAD_REQUEST, "user_id must be a string");
        };
        let user = user.trim();
        if user.is_empty() {
            return json_error(StatusCode::BAD_REQUEST, "user_id is empty");
        }
        if user.len() > self.max_id_bytes {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("user_id is over {} bytes", self.max_id_bytes),
            );
        }
        match plume_chat::auth::sign_hs256(secret.as_bytes(), user, DEV_TOKEN_TTL_SECS) {
            Ok(token) => json_response(
                StatusCode::OK,
                &serde_json::json!({"user_id": user, "token": token}),
            ),
            Err(err) => {
                tracing::error!(%err, "signing a development token");
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "could not sign a token")
            }
        }
    }
}

fn method_not_allowed(allow: &'static str) -> Box<Response<Full<Bytes>>> {
    let mut resp = json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    Box::new(resp)
}

impl HttpApi for WebChat {
    fn prefix(&self) -> &str {
        "/"
    }

    fn admit(&self, head: &ApiHead<'_>) -> Result<(), Box<Response<Full<Bytes>>>> {
        if head.path == DEV_TOKEN_PATH && self.dev_secret.is_some() {
            return match *head.method {
                Method::POST => Ok(()),
                _ => Err(method_not_allowed("POST")),
            };
        }
        if head.path == CONFIG_PATH || ASSETS.iter().any(|(path, _, _)| *path == head.path) {
            return match *head.method {
                Method::GET => Ok(()),
                _ => Err(method_not_allowed("GET")),
            };
        }
        Err(Box::new(json_error(StatusCode::NOT_FOUND, "not found")))
    }

    fn handle(&self, req: ApiRequest) -> ApiFuture {
        let resp = if req.path == DEV_TOKEN_PATH {
            self.dev_token(&req.body)
        } else if req.path == CONFIG_PATH {
            self.page_config()
        } else {
            asset(&req.path)
        };
        Box::pin(async move { resp })
    }
}

fn asset(path: &str) -> Response<Full<Bytes>> {
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return json_error(StatusCode::NOT_FOUND, "not found");
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(bytes)));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}
