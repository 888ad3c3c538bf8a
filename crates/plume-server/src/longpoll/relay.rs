//! Cross-node routing of LongPoll requests: a poll or post that reaches a node other than
//! the one its token names is sent to that node through the cluster's [`NodeRelay`], handled
//! there exactly as a local request, and the answer comes back the same way.
//!
//! Messages are small binary records:
//!
//! ```text
//! request:  'Q' id:u64 kind:u8 from_len:u16 from token_len:u16 token body
//! response: 'R' id:u64 status:u16 body
//! ```
//!
//! `kind` is 0 for a poll, 1 for a post with one text frame, 2 for an ndjson post; `from` is
//! the requesting node (where the response goes), `id` the requester's key for the waiting
//! request, `status` the HTTP status and `body` the JSON body of the answer. A holder that
//! is gone is noticed at once: the relay reports that no node took the message.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::StatusCode;
use parking_lot::Mutex;
use plume_channels::NodeRelay;
use tokio::sync::oneshot;

use super::Answer;
use super::session::Post;

/// A request for the holder of a session.
pub(crate) enum Relayed {
    /// A poll.
    Poll,
    /// A post.
    Post(Post),
}

/// Why a relayed request got no answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No live node has the token's node id.
    Unreachable,
    /// The holder did not answer in time.
    TimedOut,
}

/// Requests waiting for an answer from another node.
pub(crate) struct Relay {
    link: Arc<dyn NodeRelay>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next: AtomicU64,
}

/// A request as the holder sees it.
pub(crate) struct Incoming {
    pub(crate) id: u64,
    pub(crate) from: String,
    pub(crate) token: String,
    pub(crate) request: Relayed,
}

/// A decoded inbox message.
pub(crate) enum Message {
    /// Another node asks this one.
    Request(Incoming),
    /// Another node answers this one.
    Response(u64, Answer),
}

fn put_str(out: &mut BytesMut, s: &str) -> Option<()> {
    out.put_u16(u16::try_from(s.len()).ok()?);
    out.put_slice(s.as_bytes());
    Some(())
}

fn get_str(buf: &mut Bytes) -> Option<String> {
    if buf.remaining() < 2 {
        return None;
    }
    let len = usize::from(buf.get_u16());
    if buf.remaining() < len {
        return None;
    }
    String::from_utf8(buf.split_to(len).to_vec()).ok()
}

/// Encodes a request; `None` if a name is longer than 65,535 bytes.
fn encode_request(id: u64, from: &str, token: &str, request: &Relayed) -> Option<Bytes> {
    let body = match request {
        Relayed::Poll => Bytes::new(),
        Relayed::Post(post) => post.body.clone(),
    };
    let mut out = BytesMut::with_capacity(16 + from.len() + token.len() + body.len());
    out.put_u8(b'Q');
    out.put_u64(id);
    out.put_u8(match request {
        Relayed::Poll => 0,
        Relayed::Post(Post { ndjson: false, .. }) => 1,
        Relayed::Post(Post { ndjson: true, .. }) => 2,
    });
    put_str(&mut out, from)?;
    put_str(&mut out, token)?;
    out.put_slice(&body);
    Some(out.freeze())
}

/// Encodes a response.
pub(crate) fn encode_response(id: u64, answer: &Answer) -> Bytes {
    let mut out = BytesMut::with_capacity(11 + answer.body.len());
    out.put_u8(b'R');
    out.put_u64(id);
    out.put_u16(answer.status.as_u16());
    out.put_slice(&answer.body);
    out.freeze()
}

/// Decodes an inbox message; `None` for anything malformed.
pub(crate) fn decode(mut msg: Bytes) -> Option<Message> {
    if msg.remaining() < 9 {
        return None;
    }
    let tag = msg.get_u8();
    let id = msg.get_u64();
    match tag {
        b'Q' => {
            if msg.remaining() < 1 {
                return None;
            }
            let kind = msg.get_u8();
            let from = get_str(&mut msg)?;
            let token = get_str(&mut msg)?;
            let request = match kind {
                0 => Relayed::Poll,
                1 | 2 => Relayed::Post(Post {
                    body: msg,
                    ndjson: kind == 2,
                }),
                _ => return None,
            };
            Some(Message::Request(Incoming {
                id,
                from,
                token,
                request,
            }))
        }
        b'R' => {
            if msg.remaining() < 2 {
                return None;
            }
            let status = StatusCode::from_u16(msg.get_u16()).ok()?;
            Some(Message::Response(id, Answer { status, body: msg }))
        }
        _ => None,
    }
}

impl Relay {
    pub(crate) fn new(link: Arc<dyn NodeRelay>) -> Relay {
        Relay {
            link,
            waiting: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    /// This node's id in the cluster.
    pub(crate) fn node_id(&self) -> &str {
        self.link.node_id()
    }

    pub(crate) fn link(&self) -> &Arc<dyn NodeRelay> {
        &self.link
    }

    /// Sends `request` for the session `token` to `node` and waits up to `limit` for the
    /// answer.
    pub(crate) async fn request(
        &self,
        node: &str,
        token: &str,
        request: Relayed,
        limit: Duration,
    ) -> Result<Answer, Failure> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(msg) = encode_request(id, self.link.node_id(), token, &request) else {
            return Err(Failure::Unreachable);
        };
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().insert(id, tx);
        // Removes the waiter however this ends (answer, failure, or the caller going away).
        struct Waiter<'a>(&'a Relay, u64);
        impl Drop for Waiter<'_> {
            fn drop(&mut self) {
                self.0.waiting.lock().remove(&self.1);
            }
        }
        let _waiter = Waiter(self, id);
        match self.link.send_to(node, msg).await {
            Ok(true) => {}
            Ok(false) => return Err(Failure::Unreachable),
            Err(err) => {
                tracing::warn!(node, %err, "could not relay a long-poll request");
                return Err(Failure::Unreachable);
            }
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) | Err(_) => Err(Failure::TimedOut),
        }
    }

    /// Hands an answer from another node to the request waiting for it.
    pub(crate) fn answered(&self, id: u64, answer: Answer) {
        if let Some(tx) = self.waiting.lock().remove(&id) {
            let _ = tx.send(answer);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip() {
        let post = Relayed::Post(Post {
            body: Bytes::from_static(b"[\"1\"]\nAAE="),
            ndjson: true,
        });
        let msg = encode_request(7, "node-a", "plp.x.y.z", &post).unwrap();
        let Some(Message::Request(req)) = decode(msg) else {
            panic!("not a request")
        };
        assert_eq!(
            (req.id, req.from.as_str(), req.token.as_str()),
            (7, "node-a", "plp.x.y.z")
        );
        let Relayed::Post(post) = req.request else {
            panic!("not a post")
        };
        assert!(post.ndjson);
        assert_eq!(&post.body[..], b"[\"1\"]\nAAE=");

        let answer = Answer {
            status: StatusCode::OK,
            body: Bytes::from_static(b"{\"status\":204}"),
        };
        let Some(Message::Response(id, back)) = decode(encode_response(9, &answer)) else {
            panic!("not a response")
        };
        assert_eq!(
            (id, back.status, back.body),
            (9, StatusCode::OK, answer.body)
        );
    }

    #[test]
    fn malformed_messages_are_refused() {
        for bad in [
            &b""[..],
            b"Q",
            b"X\0\0\0\0\0\0\0\x01",
            b"Q\0\0\0\0\0\0\0\x01\x09",
            b"Q\0\0\0\0\0\0\0\x01\0\0\x09ab",
        ] {
            assert!(decode(Bytes::copy_from_slice(bad)).is_none(), "{bad:?}");
        }
    }
}
