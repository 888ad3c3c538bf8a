//! [`HttpApi`]: extra HTTP routes an application serves on the WebSocket port (for example a
//! backend API). The server reads the request body (up to [`MAX_API_BODY`]) and hands the
//! application a plain [`ApiRequest`]; the application answers with a [`Response`].

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, header};
use http_body_util::Full;

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

/// The future an [`HttpApi`] returns.
pub type ApiFuture = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

/// Application HTTP routes under one path prefix.
pub trait HttpApi: Send + Sync + 'static {
    /// The prefix this API serves, e.g. `/api/`.
    fn prefix(&self) -> &str;

    /// Answers one request whose path starts with the prefix.
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
