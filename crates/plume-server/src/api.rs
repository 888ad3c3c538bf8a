//! [`HttpApi`]: extra HTTP routes an application serves on the WebSocket port (for example a
//! backend API). The application first sees the request head ([`HttpApi::admit`]: is the
//! route known, is the caller authorized?); only if it admits the request does the server
//! read the body (up to [`MAX_API_BODY`], within `body_timeout`, and only while the global
//! `max_body_bytes_in_flight` budget has room) and hand the application a plain
//! [`ApiRequest`]; the application answers with a [`Response`].
//!
//! | when                                              | answer |
//! |---------------------------------------------------|--------|
//! | [`HttpApi::admit`] refuses                        | its response; the body is never read |
//! | `Content-Length` over [`MAX_API_BODY`], or a body that grows past it | 413 `{"error":"request body too large"}` |
//! | the body budget has no room for this request      | 503 `{"error":"too many request bodies in flight"}` |
//! | the body is not complete within `body_timeout`    | 408 `{"error":"request body timed out"}` |
//! | the connection breaks while the body is read      | 400 `{"error":"could not read the request body"}` |

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};

use crate::admission::BodyBudget;

/// Largest request body accepted for an API route; larger gets 413.
pub const MAX_API_BODY: usize = 1 << 20;

/// A request for an API route, body already read.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// The method.
    pub method: Method,
    /// The path, percent-encoded as received.
    pub path: String,
    /// The query string (without `?`; empty when there is none), percent-encoded.
    pub query: String,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// An API request before its body is read: what [`HttpApi::admit`] decides on.
#[derive(Debug, Clone, Copy)]
pub struct ApiHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path, percent-encoded as received.
    pub path: &'a str,
    /// The headers.
    pub headers: &'a HeaderMap,
}

/// The future an [`HttpApi`] returns.
pub type ApiFuture = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

/// Application HTTP routes under one path prefix.
pub trait HttpApi: Send + Sync + 'static {
    /// The prefix this API serves, e.g. `/api/`.
    fn prefix(&self) -> &str;

    /// Decides from the head alone whether the request deserves its body being read: the
    /// route exists, the method is allowed, the caller is authorized. `Err(response)` is sent
    /// as it is and the body is never read, so an unauthenticated client cannot make the
    /// server buffer anything. Must not block: it runs before any budget is charged. (The
    /// refusal is boxed to keep the common `Ok` small.)
    fn admit(&self, head: &ApiHead<'_>) -> Result<(), Box<Response<Full<Bytes>>>>;

    /// Answers one request whose path starts with the prefix and that [`HttpApi::admit`]
    /// let through, body read.
    fn handle(&self, req: ApiRequest) -> ApiFuture;
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// `{"error": message}` with `status`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &serde_json::json!({ "error": message }))
}

/// The future a [`Readiness`] check returns: `Ok(details)` when ready, `Err(details)` when not.
pub type ReadyFuture<'a> =
    Pin<Box<dyn Future<Output = Result<serde_json::Value, serde_json::Value>> + Send + 'a>>;

/// What `GET /readyz` asks before saying a node can take traffic (a load balancer takes a
/// node out on 503).
pub trait Readiness: Send + Sync + 'static {
    /// Checks the node's dependencies.
    fn check(&self) -> ReadyFuture<'_>;
}

/// The limits a request body is read under.
pub(crate) struct BodyLimits<'a> {
    pub(crate) budget: &'a BodyBudget,
    pub(crate) timeout: Duration,
}

/// Serves one API request: admit on the head, then read the body under `limits`, then
/// handle.
pub(crate) async fn serve(
    api: &dyn HttpApi,
    req: Request<Incoming>,
    limits: BodyLimits<'_>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let head = ApiHead {
        method: &parts.method,
        path: parts.uri.path(),
        headers: &parts.headers,
    };
    if let Err(refused) = api.admit(&head) {
        return *refused;
    }
    // What the body will cost: its declared length, or the most it may grow to.
    let hint = body.size_hint();
    if hint.lower() > MAX_API_BODY as u64 {
        return json_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let charge = hint
        .exact()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(MAX_API_BODY);
    let Some(_reserved) = limits.budget.reserve(charge) else {
        tracing::warn!(
            bytes = charge,
            refused = limits.budget.refused(),
            "API request refused: body budget spent"
        );
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many request bodies in flight",
        );
    };
    let read = tokio::time::timeout(limits.timeout, Limited::new(body, MAX_API_BODY).collect());
    let body = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => {
            return json_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        Ok(Err(_)) => {
            return json_error(StatusCode::BAD_REQUEST, "could not read the request body");
        }
        Err(_elapsed) => {
            return json_error(StatusCode::REQUEST_TIMEOUT, "request body timed out");
        }
    };
    api.handle(ApiRequest {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        headers: parts.headers,
        body,
    })
    .await
}
