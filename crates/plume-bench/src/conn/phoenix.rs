//! The Phoenix side: a `plume-client` [`Client`] speaking V2 JSON, as phoenix.js does.

use std::net::IpAddr;

use plume_client::{Client, ConnectOptions, Event, Received};
use plume_wire::{Payload, Ref};
use serde::Serialize;

use super::{ConnError, ConnEvent};
use crate::stamp;
use crate::target::Endpoint;

/// The chat service's event names (protocol-spec/chat.md).
const SEND_MESSAGE: &str = "send_message";
const MESSAGE_SENT: &str = "message_sent";
const RECEIVE_MESSAGE: &str = "receive_message";

/// A Phoenix connection and the join_refs of the topics it joined.
pub struct PhoenixConn {
    client: Client,
    joined: Vec<(String, Ref)>,
}

#[derive(Serialize)]
struct SendMessage<'a> {
    content: &'a str,
    mobile_ref_id: &'a str,
}

impl PhoenixConn {
    /// Opens the WebSocket with the token in the connect params.
    pub async fn connect(
        endpoint: &Endpoint,
        token: &str,
        local_ip: Option<IpAddr>,
    ) -> Result<PhoenixConn, ConnError> {
        let opts = ConnectOptions {
            local_ip,
            ..ConnectOptions::default()
        };
        let client = Client::connect_with(&endpoint.url(token), opts).await?;
        Ok(PhoenixConn {
            client,
            joined: Vec::new(),
        })
    }

    /// Joins `topic`; an error reply is an error.
    pub async fn join(&mut self, topic: &str) -> Result<(), ConnError> {
        let (join_ref, reply) = self.client.join(topic, &Payload::empty()).await?;
        if reply.reply_status().as_deref() != Some("ok") {
            return Err(ConnError::Protocol(format!(
                "join {topic} refused: {:?}",
                reply.payload
            )));
        }
        self.joined.push((topic.to_owned(), join_ref));
        Ok(())
    }

    /// The join_ref of a joined topic.
    fn join_ref(&self, topic: &str) -> Result<Ref, ConnError> {
        self.joined
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, r)| r.clone())
            .ok_or_else(|| ConnError::Protocol(format!("{topic} is not joined")))
    }

    /// Pushes `send_message` on a joined topic.
    pub async fn send_chat(
        &mut self,
        topic: &str,
        content: &str,
        mobile_ref_id: &str,
    ) -> Result<(), ConnError> {
        let join_ref = self.join_ref(topic)?;
        let payload = Payload::json(&SendMessage {
            content,
            mobile_ref_id,
        })
        .map_err(|e| ConnError::Protocol(e.to_string()))?;
        self.client
            .push(Some(&join_ref), topic, SEND_MESSAGE, &payload)
            .await?;
        Ok(())
    }

    /// Pushes `typing` `{"status":"typing"}` on a joined topic without waiting for the reply.
    pub async fn send_typing(&mut self, topic: &str) -> Result<(), ConnError> {
        let join_ref = self.join_ref(topic)?;
        let payload = Payload::Json(
            plume_wire::Json::from_text(bytes::Bytes::from_static(br#"{"status":"typing"}"#))
                .map_err(|e| ConnError::Protocol(e.to_string()))?,
        );
        self.client
            .push(Some(&join_ref), topic, "typing", &payload)
            .await?;
        Ok(())
    }

    /// Sends a heartbeat on the `phoenix` topic, as phoenix.js does every 30 seconds.
    pub async fn heartbeat(&mut self) -> Result<(), ConnError> {
        self.client
            .push(None, "phoenix", "heartbeat", &Payload::empty())
            .await?;
        Ok(())
    }

    /// The next event (cancel-safe: `Client::recv` keeps nothing half-read).
    pub async fn next_event(&mut self) -> Result<ConnEvent, ConnError> {
        Ok(match self.client.recv().await? {
            Event::Message(m) => classify(&m),
            Event::Closed { code, reason } => ConnEvent::Closed { code, reason },
        })
    }
}

/// Maps a server frame to what the runner counts.
pub fn classify(m: &Received) -> ConnEvent {
    let json = m.payload.as_json().map(|j| &j.as_bytes()[..]);
    match m.event.as_str() {
        RECEIVE_MESSAGE => ConnEvent::Received {
            stamp: json.and_then(stamp::extract),
        },
        MESSAGE_SENT => ConnEvent::Sent {
            stamp: json.and_then(stamp::extract),
            ok: json.is_some_and(|j| contains(j, br#""status":"sent""#)),
        },
        _ => ConnEvent::Other,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use plume_wire::Serializer;
    use plume_wire::client::decode_server_text;

    fn decode(text: &'static str) -> Received {
        decode_server_text(Serializer::V2, Bytes::from_static(text.as_bytes())).unwrap()
    }

    #[test]
    fn classifies_chat_frames() {
        let m = decode(
            r#"[null,null,"chat:7","receive_message",{"chat_id":"7","content":"bench 1 @ts:42 x","sender_id":"a","message_id":"m","timestamp":"t"}]"#,
        );
        assert_eq!(classify(&m), ConnEvent::Received { stamp: Some(42) });
        let m = decode(
            r#"["3",null,"chat:7","message_sent",{"mobile_ref_id":"m1@ts:9","status":"sent","chat_id":"7","message_id":"x","timestamp":"t"}]"#,
        );
        assert_eq!(
            classify(&m),
            ConnEvent::Sent {
                stamp: Some(9),
                ok: true
            }
        );
        let m = decode(
            r#"["3",null,"chat:7","message_sent",{"mobile_ref_id":"m1@ts:9","status":"error","chat_id":"7","reason":"invalid_content"}]"#,
        );
        assert_eq!(
            classify(&m),
            ConnEvent::Sent {
                stamp: Some(9),
                ok: false
            }
        );
        let m = decode(
            r#"["3","4","chat:7","phx_reply",{"response":{"message_id":"x"},"status":"ok"}]"#,
        );
        assert_eq!(classify(&m), ConnEvent::Other);
    }
}
