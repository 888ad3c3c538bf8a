//! The Socket.IO side: a minimal Socket.IO v5 client over the Engine.IO v4 WebSocket
//! transport, enough for the peer in `peers/socketio/server.js`:
//!
//! - open: read the server's `0{…}`, send `40{"token":…}`, wait for `40{…}` (or `44{…}`);
//! - `join`: `42N["join","chat:7"]`, acknowledged `43N[{"status":"ok"}]`;
//! - `send_message`: `42N["send_message",{"topic","content","mobile_ref_id"}]`, acknowledged
//!   `43N[{"mobile_ref_id":…,"status":"sent",…}]`;
//! - `receive_message` events from the others in the room: `42["receive_message",{…}]`;
//! - answer every ping `2` with a pong `3`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::{ConnError, ConnEvent};
use crate::sio::{self, EnginePacket, SioKind};
use crate::stamp;
use crate::target::Endpoint;

/// How long connect and join wait for the server.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A Socket.IO connection on the main namespace.
pub struct SioConn {
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
}

impl SioConn {
    /// Opens the WebSocket, completes the Engine.IO handshake and connects to `/` with the
    /// token as auth.
    pub async fn connect(
        endpoint: &Endpoint,
        token: &str,
        local_ip: Option<IpAddr>,
    ) -> Result<SioConn, ConnError> {
        let addr = endpoint.addr;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(local) = local_ip {
            socket.bind(SocketAddr::new(local, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let config = WebSocketConfig::default()
            .read_buffer_size(8 << 10)
            .write_buffer_size(0);
        let (ws, _response) = tokio_tungstenite::client_async_with_config(
            endpoint.url(token).as_str(),
            stream,
            Some(config),
        )
        .await?;
        let mut conn = SioConn { ws, next_id: 1 };
        tokio::time::timeout(SETUP_TIMEOUT, conn.handshake(token))
            .await
            .map_err(|_| ConnError::Timeout("the Socket.IO handshake"))??;
        Ok(conn)
    }

    async fn handshake(&mut self, token: &str) -> Result<(), ConnError> {
        let open = self.read_text().await?;
        match sio::decode_engine(&open) {
            Ok(EnginePacket::Open(json)) => {
                sio::parse_open(json)
                    .map_err(|e| ConnError::Protocol(format!("bad open packet: {e}")))?;
            }
            _ => return Err(ConnError::Protocol(format!("expected open, got {open:?}"))),
        }
        let auth = serde_json::json!({ "token": token }).to_string();
        self.send_text(sio::encode_connect(&auth)).await?;
        loop {
            let text = self.read_text().await?;
            match sio::decode_engine(&text) {
                Ok(EnginePacket::Ping(_)) => self.pong().await?,
                Ok(EnginePacket::Message(inner)) => match sio::decode_socketio(inner) {
                    Ok(p) if p.kind == SioKind::Connect => return Ok(()),
                    Ok(p) if p.kind == SioKind::ConnectError => {
                        return Err(ConnError::Protocol(format!("connect refused: {}", p.data)));
                    }
                    _ => {}
                },
                Ok(EnginePacket::Close) => {
                    return Err(ConnError::Protocol("closed during connect".into()));
                }
                _ => {}
            }
        }
    }

    /// Joins a room and waits for the acknowledgement.
    pub async fn join(&mut self, topic: &str) -> Result<(), ConnError> {
        let id = self.take_id();
        let arg = serde_json::Value::String(topic.to_owned()).to_string();
        self.send_text(sio::encode_event(Some(id), "join", &arg))
            .await?;
        let wait = async {
            loop {
                let text = self.read_text().await?;
                match sio::decode_engine(&text) {
                    Ok(EnginePacket::Ping(_)) => self.pong().await?,
                    Ok(EnginePacket::Close) => {
                        return Err(ConnError::Protocol("closed during join".into()));
                    }
                    Ok(EnginePacket::Message(inner)) => {
                        if let Ok(p) = sio::decode_socketio(inner)
                            && p.kind == SioKind::Ack
                            && p.id == Some(id)
                        {
                            return if p.data.contains(r#""status":"ok""#) {
                                Ok(())
                            } else {
                                Err(ConnError::Protocol(format!(
                                    "join {topic} refused: {}",
                                    p.data
                                )))
                            };
                        }
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(SETUP_TIMEOUT, wait)
            .await
            .map_err(|_| ConnError::Timeout("the join acknowledgement"))?
    }

    /// Emits `send_message` with an acknowledgement id.
    pub async fn send_chat(
        &mut self,
        topic: &str,
        content: &str,
        mobile_ref_id: &str,
    ) -> Result<(), ConnError> {
        let id = self.take_id();
        let arg = serde_json::json!({
            "topic": topic,
            "content": content,
            "mobile_ref_id": mobile_ref_id,
        })
        .to_string();
        self.send_text(sio::encode_event(Some(id), "send_message", &arg))
            .await
    }

    /// Answers a ping.
    pub async fn pong(&mut self) -> Result<(), ConnError> {
        self.send_text(sio::PONG.to_owned()).await
    }

    /// The next event (cancel-safe: a WebSocket stream's `next` keeps its state).
    pub async fn next_event(&mut self) -> Result<ConnEvent, ConnError> {
        loop {
            let msg = match self.ws.next().await {
                None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Ok(closed(None, ""));
                }
                Some(Err(WsError::Io(err)))
                    if err.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    return Ok(closed(None, &err.to_string()));
                }
                Some(Err(err)) => return Err(err.into()),
                Some(Ok(msg)) => msg,
            };
            match msg {
                Message::Text(text) => return Ok(classify(&text)),
                Message::Close(frame) => {
                    return Ok(ConnEvent::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    });
                }
                Message::Binary(_) => return Ok(ConnEvent::Other),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn send_text(&mut self, text: String) -> Result<(), ConnError> {
        self.ws.send(Message::Text(Utf8Bytes::from(text))).await?;
        Ok(())
    }

    async fn read_text(&mut self) -> Result<String, ConnError> {
        loop {
            match self.ws.next().await {
                None => return Err(ConnError::Protocol("connection closed".into())),
                Some(Err(err)) => return Err(err.into()),
                Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
                Some(Ok(Message::Close(frame))) => {
                    return Err(ConnError::Protocol(format!("closed: {frame:?}")));
                }
                Some(Ok(_)) => continue,
            }
        }
    }
}

fn closed(code: Option<u16>, reason: &str) -> ConnEvent {
    ConnEvent::Closed {
        code,
        reason: reason.to_owned(),
    }
}

/// Maps one Engine.IO text message to what the runner counts.
pub fn classify(text: &str) -> ConnEvent {
    match sio::decode_engine(text) {
        Ok(EnginePacket::Ping(_)) => ConnEvent::Ping,
        Ok(EnginePacket::Close) => closed(None, "engine.io close"),
        Ok(EnginePacket::Message(inner)) => match sio::decode_socketio(inner) {
            Ok(p) => match p.kind {
                SioKind::Event if sio::event_name(p.data) == Some("receive_message") => {
                    ConnEvent::Received {
                        stamp: stamp::extract(p.data.as_bytes()),
                    }
                }
                SioKind::Ack => ConnEvent::Sent {
                    stamp: stamp::extract(p.data.as_bytes()),
                    ok: p.data.contains(r#""status":"sent""#),
                },
                SioKind::Disconnect => closed(None, "socket.io disconnect"),
                _ => ConnEvent::Other,
            },
            Err(_) => ConnEvent::Other,
        },
        _ => ConnEvent::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_socketio_frames() {
        assert_eq!(classify("2"), ConnEvent::Ping);
        assert_eq!(
            classify(r#"42["receive_message",{"chat_id":"7","content":"bench 3 @ts:77 abc"}]"#),
            ConnEvent::Received { stamp: Some(77) }
        );
        assert_eq!(
            classify(r#"4312[{"mobile_ref_id":"m3@ts:5","status":"sent","chat_id":"7"}]"#),
            ConnEvent::Sent {
                stamp: Some(5),
                ok: true
            }
        );
        assert_eq!(
            classify(r#"4313[{"mobile_ref_id":"m4@ts:6","status":"error"}]"#),
            ConnEvent::Sent {
                stamp: Some(6),
                ok: false
            }
        );
        assert!(matches!(classify("41"), ConnEvent::Closed { .. }));
        assert!(matches!(classify("1"), ConnEvent::Closed { .. }));
        assert_eq!(classify(r#"42["other",{}]"#), ConnEvent::Other);
        assert_eq!(classify("3"), ConnEvent::Other);
        assert_eq!(classify(""), ConnEvent::Other);
    }
}
