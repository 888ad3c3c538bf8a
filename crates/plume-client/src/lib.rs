//! A small async Phoenix Channels client, speaking the protocol the way phoenix.js does.
//!
//! Plume's integration tests use it to drive the server byte for byte, and the load
//! generator uses it to open many connections. It deliberately keeps the raw view: every
//! frame the server sends comes back as a [`ServerMessage`] or a [`Event::Closed`], in order,
//! so a test can assert exact sequences.
//!
//! # Layout
//!
//! Everything is in this file: [`Client`] (connect, send, receive, join and call helpers),
//! [`ConnectOptions`], [`Event`] and [`ClientError`].

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, StatusCode};
use plume_wire::client::{
    ServerMessage, decode_server_binary, decode_server_text, encode_client_push,
};
use plume_wire::{Frame, Payload, Ref, Serializer};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

pub use plume_wire::client::ServerMessage as Received;

/// Something went wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL could not be used.
    #[error("bad url: {0}")]
    Url(String),
    /// TCP connect failed.
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered the upgrade with an HTTP status instead of 101.
    #[error("upgrade refused with HTTP {0}")]
    Refused(StatusCode),
    /// A WebSocket error.
    #[error("websocket: {0}")]
    Ws(Box<WsError>),
    /// The server sent something the client could not decode.
    #[error("undecodable server frame: {0}")]
    Decode(String),
    /// Encoding failed (binary field too long, binary on V1).
    #[error("encode: {0}")]
    Encode(#[from] plume_wire::EncodeError),
    /// Nothing arrived in time.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The connection closed while waiting for something else.
    #[error("connection closed (code {code:?}, reason {reason:?})")]
    Closed {
        /// The close code, if the server sent one.
        code: Option<u16>,
        /// The close reason.
        reason: String,
    },
}

impl From<WsError> for ClientError {
    fn from(err: WsError) -> Self {
        match err {
            WsError::Http(resp) => ClientError::Refused(resp.status()),
            other => ClientError::Ws(Box::new(other)),
        }
    }
}

/// What arrives from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A decoded frame.
    Message(ServerMessage),
    /// The server closed the connection (code and reason of its close frame, if any).
    Closed {
        /// The close code (`None` when the TCP connection ended without a close frame).
        code: Option<u16>,
        /// The reason text.
        reason: String,
    },
}

/// How to connect.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// Subprotocols to offer (phoenix.js offers `phoenix` and the token entry).
    pub subprotocols: Vec<String>,
    /// An `Origin` header to send.
    pub origin: Option<String>,
    /// The local address to bind before connecting (spreads a load over 127.0.0.x).
    pub local_ip: Option<IpAddr>,
    /// Largest frame to accept from the server (default: tungstenite's).
    pub max_frame_bytes: Option<usize>,
}

impl ConnectOptions {
    /// Offers `phoenix` and the phoenix.js auth token entry for `token`.
    pub fn with_auth_token(mut self, token: &str) -> ConnectOptions {
        use base64::Engine;
        // What phoenix.js sends: `btoa(token)` with the `=` padding removed.
        let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(token.as_bytes());
        self.subprotocols = vec![
            "phoenix".to_owned(),
            format!("base64url.bearer.phx.{encoded}"),
        ];
        self
    }
}

/// One Phoenix socket connection.
pub struct Client {
    ws: WebSocketStream<TcpStream>,
    serializer: Serializer,
    next_ref: u64,
    pending: VecDeque<Event>,
    protocol: Option<String>,
}

/// How long the helpers wait for a reply by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl Client {
    /// Connects to a `ws://host:port/socket/websocket?...` URL. The serializer follows the URL's
    /// `vsn` parameter (absent = V1), as the server's does.
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Client::connect_with(url, ConnectOptions::default()).await
    }

    /// Connects with options.
    pub async fn connect_with(url: &str, opts: ConnectOptions) -> Result<Client, ClientError> {
        let mut request = url
            .into_client_request()
            .map_err(|e| ClientError::Url(e.to_string()))?;
        let uri = request.uri().clone();
        let host = uri
            .host()
            .ok_or_else(|| ClientError::Url("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let vsn = uri.query().and_then(|q| {
            q.split('&')
                .filter_map(|p| p.split_once('='))
                .filter(|(k, _)| *k == "vsn")
                .map(|(_, v)| v.to_owned())
                .next_back()
        });
        // An unsupported vsn is still sent as is (tests check the server refuses it); such a
        // client would never get to exchange frames, so the serializer does not matter.
        let serializer = Serializer::from_vsn(vsn.as_deref()).unwrap_or(Serializer::V2);
        if !opts.subprotocols.is_empty() {
            let value = HeaderValue::from_str(&opts.subprotocols.join(", "))
                .map_err(|e| ClientError::Url(e.to_string()))?;
            request
                .headers_mut()
                .insert("sec-websocket-protocol", value);
        }
        if let Some(origin) = &opts.origin {
            let value =
                HeaderValue::from_str(origin).map_err(|e| ClientError::Url(e.to_string()))?;
            request.headers_mut().insert("origin", value);
        }
        let ip: IpAddr = host
            .parse()
            .map_err(|_| ClientError::Url(format!("host {host} is not an IP address")))?;
        let addr = SocketAddr::new(ip, port);
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(local) = opts.local_ip {
            socket.bind(SocketAddr::new(local, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut config = WebSocketConfig::default()
            .read_buffer_size(8 << 10)
            .write_buffer_size(0);
        if let Some(max) = opts.max_frame_bytes {
            config = config.max_frame_size(Some(max)).max_message_size(Some(max));
        }
        let (ws, response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Client {
            ws,
            serializer,
            next_ref: 1,
            pending: VecDeque::new(),
            protocol,
        })
    }

    /// The serializer in use.
    pub fn serializer(&self) -> Serializer {
        self.serializer
    }

    /// The subprotocol the server selected, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// A fresh ref: "1", "2", … like phoenix.js's counter.
    pub fn make_ref(&mut self) -> Ref {
        let r = Ref::Str(self.next_ref.to_string().into());
        self.next_ref += 1;
        r
    }

    /// Sends a raw text frame (for malformed-input tests).
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.ws.send(Message::Text(Utf8Bytes::from(text))).await?;
        Ok(())
    }

    /// Sends a raw binary frame.
    pub async fn send_binary(&mut self, data: impl Into<Bytes>) -> Result<(), ClientError> {
        self.ws.send(Message::Binary(data.into())).await?;
        Ok(())
    }

    /// Sends a message with explicit refs.
    pub async fn send(
        &mut self,
        join_ref: Option<&Ref>,
        ref_: Option<&Ref>,
        topic: &str,
        event: &str,
        payload: &Payload,
    ) -> Result<(), ClientError> {
        let frame = encode_client_push(self.serializer, join_ref, ref_, topic, event, payload)?;
        let msg = match frame {
            Frame::Text(bytes) => Message::Text(
                Utf8Bytes::try_from(bytes).map_err(|e| ClientError::Decode(e.to_string()))?,
            ),
            Frame::Binary(bytes) => Message::Binary(bytes),
        };
        self.ws.send(msg).await?;
        Ok(())
    }

    /// Sends a message with a fresh ref and returns that ref.
    pub async fn push(
        &mut self,
        join_ref: Option<&Ref>,
        topic: &str,
        event: &str,
        payload: &Payload,
    ) -> Result<Ref, ClientError> {
        let r = self.make_ref();
        self.send(join_ref, Some(&r), topic, event, payload).await?;
        Ok(r)
    }

    /// The next event from the server (a decoded frame or the close).
    pub async fn recv(&mut self) -> Result<Event, ClientError> {
        if let Some(ev) = self.pending.pop_front() {
            return Ok(ev);
        }
        self.read().await
    }

    /// Like [`Client::recv`] but gives up after `limit`.
    pub async fn recv_timeout(&mut self, limit: Duration) -> Result<Event, ClientError> {
        match tokio::time::timeout(limit, self.recv()).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// The next frame; a close is an error.
    pub async fn recv_message(&mut self) -> Result<ServerMessage, ClientError> {
        match self.recv_timeout(DEFAULT_TIMEOUT).await? {
            Event::Message(m) => Ok(m),
            Event::Closed { code, reason } => Err(ClientError::Closed { code, reason }),
        }
    }

    /// Asserts that nothing arrives within `quiet` (returns the unexpected event otherwise).
    pub async fn expect_silence(&mut self, quiet: Duration) -> Result<(), Event> {
        match self.recv_timeout(quiet).await {
            Err(ClientError::Timeout) => Ok(()),
            Ok(ev) => Err(ev),
            Err(err) => Err(Event::Closed {
                code: None,
                reason: err.to_string(),
            }),
        }
    }

    /// Waits for the server to close the connection and returns its close code and reason;
    /// frames before the close are skipped.
    pub async fn expect_close(&mut self) -> Result<(Option<u16>, String), ClientError> {
        loop {
            if let Event::Closed { code, reason } = self.recv_timeout(DEFAULT_TIMEOUT).await? {
                return Ok((code, reason));
            }
        }
    }

    /// The frames received but not taken yet (set aside by [`Client::wait_for`]), in order.
    pub fn pending(&self) -> impl Iterator<Item = &ServerMessage> {
        self.pending.iter().filter_map(|e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
    }

    /// Waits for the first frame matching `pred`; others are kept, in order, for later `recv`s.
    pub async fn wait_for(
        &mut self,
        mut pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage, ClientError> {
        if let Some(pos) = self
            .pending
            .iter()
            .position(|e| matches!(e, Event::Message(m) if pred(m)))
            && let Some(Event::Message(m)) = self.pending.remove(pos)
        {
            return Ok(m);
        }
        let deadline = tokio::time::Instant::now() + DEFAULT_TIMEOUT;
        loop {
            let ev = match tokio::time::timeout_at(deadline, self.read()).await {
                Ok(ev) => ev?,
                Err(_) => return Err(ClientError::Timeout),
            };
            match ev {
                Event::Message(m) if pred(&m) => return Ok(m),
                Event::Closed { code, reason } => {
                    return Err(ClientError::Closed { code, reason });
                }
                other => self.pending.push_back(other),
            }
        }
    }

    /// Waits for the reply to `ref_` on `topic`.
    pub async fn reply_to(
        &mut self,
        topic: &str,
        ref_: &Ref,
    ) -> Result<ServerMessage, ClientError> {
        let topic = topic.to_owned();
        let r = ref_.clone();
        self.wait_for(move |m| {
            m.event == plume_wire::event::PHX_REPLY
                && m.topic == topic
                && m.ref_.as_ref() == Some(&r)
        })
        .await
    }

    /// Joins `topic` the way phoenix.js does (join_ref = ref) and returns the join_ref and the
    /// reply.
    pub async fn join(
        &mut self,
        topic: &str,
        payload: &Payload,
    ) -> Result<(Ref, ServerMessage), ClientError> {
        let r = self.make_ref();
        self.send(
            Some(&r),
            Some(&r),
            topic,
            plume_wire::event::PHX_JOIN,
            payload,
        )
        .await?;
        let reply = self.reply_to(topic, &r).await?;
        Ok((r, reply))
    }

    /// Pushes an event on a joined topic and waits for its reply.
    pub async fn call(
        &mut self,
        join_ref: &Ref,
        topic: &str,
        event: &str,
        payload: &Payload,
    ) -> Result<ServerMessage, ClientError> {
        let r = self.push(Some(join_ref), topic, event, payload).await?;
        self.reply_to(topic, &r).await
    }

    /// Closes the connection with 1000.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.ws.close(None).await?;
        Ok(())
    }

    async fn read(&mut self) -> Result<Event, ClientError> {
        loop {
            let msg = match self.ws.next().await {
                None => {
                    return Ok(Event::Closed {
                        code: None,
                        reason: String::new(),
                    });
                }
                Some(Ok(msg)) => msg,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Ok(Event::Closed {
                        code: None,
                        reason: String::new(),
                    });
                }
                Some(Err(WsError::Io(err)))
                    if err.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    return Ok(Event::Closed {
                        code: None,
                        reason: err.to_string(),
                    });
                }
                Some(Err(err)) => return Err(err.into()),
            };
            let decoded = match msg {
                Message::Text(text) => decode_server_text(self.serializer, text.into()),
                Message::Binary(data) => decode_server_binary(data),
                Message::Close(frame) => {
                    return Ok(Event::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    });
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            return decoded
                .map(Event::Message)
                .map_err(|e| ClientError::Decode(e.to_string()));
        }
    }
}
