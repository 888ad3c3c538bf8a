//! The connect step: what a client presented when it opened the socket, and the
//! [`ConnectHook`] that accepts or refuses it before the WebSocket upgrade.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use plume_wire::Serializer;
use serde_json::{Map, Value};

/// What the client presented on connect.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    /// Query parameters, decoded Plug-style: `a[b]=1` becomes `{"a":{"b":"1"}}`, `a[]=x` a
    /// list, every leaf a string. Includes `vsn` when sent.
    pub params: Map<String, Value>,
    /// The token from the `base64url.bearer.phx.…` subprotocol (phoenix.js `authToken`).
    pub auth_token: Option<String>,
    /// The negotiated serializer.
    pub serializer: Serializer,
    /// The peer's address.
    pub peer: Option<SocketAddr>,
}

impl ConnectRequest {
    /// A string parameter by name (`None` if absent or not a string).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name)?.as_str()
    }
}

/// What the hook decided about an accepted socket.
#[derive(Default)]
pub struct Accepted {
    /// The socket's id: a `disconnect` broadcast on this topic closes every socket with it.
    pub socket_id: Option<String>,
    /// Application data for the channels ([`crate::Context::assigns`]).
    pub assigns: Option<Arc<dyn Any + Send + Sync>>,
}

/// A refused connect: HTTP 403 before the upgrade; the reason goes to the log only.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Everything known about a connected socket.
pub struct ConnectInfo {
    /// The request the client made.
    pub request: ConnectRequest,
    /// The socket id, if the hook gave one.
    pub socket_id: Option<String>,
    /// Application data from the hook.
    pub assigns: Option<Arc<dyn Any + Send + Sync>>,
}

/// Decides whether a client may connect. Runs before the upgrade, so a refusal is a plain
/// HTTP 403 that phoenix.js treats as a failed connection (and retries with backoff).
pub trait ConnectHook: Send + Sync + 'static {
    /// Accepts (optionally naming the socket and attaching data) or refuses.
    fn connect(&self, req: &ConnectRequest) -> Result<Accepted, Refused>;
}

/// Accepts every client, anonymously.
pub struct AcceptAll;

impl ConnectHook for AcceptAll {
    fn connect(&self, _req: &ConnectRequest) -> Result<Accepted, Refused> {
        Ok(Accepted::default())
    }
}
