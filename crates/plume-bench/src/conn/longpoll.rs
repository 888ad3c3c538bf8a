//! The Phoenix side over LongPoll, as phoenix.js's `LongPoll` transport speaks it: one
//! keep-alive HTTP/1.1 connection that polls (`GET /socket/longpoll?...&token=<session>`) in a
//! background task, and one that posts (`POST` with an `application/x-ndjson` body, one
//! frame per line) in another. Like phoenix.js, the poster sends one POST at a time and waits
//! for its `{"status":200}`; frames sent meanwhile wait and go out together in the next POST,
//! at most 100 per POST.
//!
//! HTTP is spoken by hand (request line, `content-length`, keep-alive) because Plume answers
//! every LongPoll request with a complete body of known length; that keeps the load
//! generator free of an HTTP client stack whose own costs would blur the figures.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use plume_wire::Serializer;
use plume_wire::client::decode_server_text;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::phoenix::classify;
use super::{ConnError, ConnEvent};
use crate::target::Endpoint;

/// Server messages waiting for the runner; the poller stops polling while it is full, as a
/// browser stops reading.
const EVENT_QUEUE: usize = 4096;
/// Largest response accepted.
const MAX_BODY: usize = 16 << 20;
/// Frames waiting for the poster.
const SEND_QUEUE: usize = 1024;
/// Most frames per POST (phoenix.js's `MAX_LONGPOLL_BATCH_SIZE`).
const MAX_BATCH: usize = 100;

/// One keep-alive HTTP/1.1 connection.
struct Http {
    stream: BufReader<TcpStream>,
    addr: SocketAddr,
    local_ip: Option<IpAddr>,
    open: bool,
}

impl Http {
    async fn connect(addr: SocketAddr, local_ip: Option<IpAddr>) -> Result<Http, ConnError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = local_ip {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Http {
            stream: BufReader::new(stream),
            addr,
            local_ip,
            open: true,
        })
    }

    /// One request; reconnects first if the server closed the previous one.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Bytes, ConnError> {
        if !self.open {
            *self = Http::connect(self.addr, self.local_ip).await?;
        }
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.addr);
        if let Some(body) = body {
            head.push_str(&format!(
                "content-type: application/x-ndjson\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).await?;
        if let Some(body) = body {
            stream.write_all(body).await?;
        }
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        if !line.starts_with("HTTP/1.1 ") {
            self.open = false;
            return Err(ConnError::Protocol(format!("bad status line {line:?}")));
        }
        let mut length = None;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                self.open = false;
                return Err(ConnError::Protocol("connection closed in headers".into()));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("connection")
                    && value.eq_ignore_ascii_case("close")
                {
                    self.open = false;
                }
            }
        }
        let length = length.filter(|n| *n <= MAX_BODY).ok_or_else(|| {
            ConnError::Protocol("response without a usable content-length".into())
        })?;
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok(Bytes::from(body))
    }
}

#[derive(Deserialize)]
struct PollAnswer {
    status: u16,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    messages: Vec<String>,
}

#[derive(Serialize)]
struct SendMessage<'a> {
    content: &'a str,
    mobile_ref_id: &'a str,
}

/// A LongPoll session and the join_refs of the topics it joined.
pub struct LongPollConn {
    sends: mpsc::Sender<Vec<u8>>,
    events: mpsc::Receiver<ConnEvent>,
    replies: mpsc::Receiver<(String, Option<String>)>,
    poller: JoinHandle<()>,
    poster: JoinHandle<()>,
    next_ref: u64,
    joined: Vec<(String, String)>,
}

impl Drop for LongPollConn {
    fn drop(&mut self) {
        self.poller.abort();
        self.poster.abort();
    }
}

impl LongPollConn {
    /// Opens a session (the first GET, answered `{"status":410,"token":…}`) and starts
    /// polling.
    pub async fn connect(
        endpoint: &Endpoint,
        token: &str,
        local_ip: Option<IpAddr>,
    ) -> Result<LongPollConn, ConnError> {
        let base = format!("{}?vsn=2.0.0&token={token}", endpoint.path);
        let mut poll = Http::connect(endpoint.addr, local_ip).await?;
        let opened: PollAnswer = parse(&poll.request("GET", &format!("{base}&"), None).await?)?;
        let session = match (opened.status, opened.token) {
            (410, Some(session)) => session,
            (status, _) => {
                return Err(ConnError::Protocol(format!(
                    "long-poll connect answered status {status}"
                )));
            }
        };
        let url = format!("{base}&token={session}");
        let post = Http::connect(endpoint.addr, local_ip).await?;
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (replies_tx, replies) = mpsc::channel(64);
        let (sends, sends_rx) = mpsc::channel(SEND_QUEUE);
        let poller = tokio::spawn(poll_loop(poll, url.clone(), events_tx.clone(), replies_tx));
        let poster = tokio::spawn(post_loop(post, url, sends_rx, events_tx));
        Ok(LongPollConn {
            sends,
            events,
            replies,
            poller,
            poster,
            next_ref: 1,
            joined: Vec::new(),
        })
    }

    fn next_ref(&mut self) -> String {
        let r = self.next_ref.to_string();
        self.next_ref += 1;
        r
    }

    /// Queues a frame for the poster (waits only while its queue is full).
    async fn post(&mut self, frame: Vec<u8>) -> Result<(), ConnError> {
        self.sends
            .send(frame)
            .await
            .map_err(|_| ConnError::Protocol("the poster stopped".into()))
    }

    /// Joins `topic` and waits for the reply; an error reply is an error.
    pub async fn join(&mut self, topic: &str) -> Result<(), ConnError> {
        let r = self.next_ref();
        let frame = serde_json::to_vec(&(&r, &r, topic, "phx_join", serde_json::json!({})))
            .map_err(|e| ConnError::Protocol(e.to_string()))?;
        self.post(frame).await?;
        loop {
            let Some((reply_ref, status)) = self.replies.recv().await else {
                return Err(ConnError::Protocol("session ended during a join".into()));
            };
            if reply_ref == r {
                if status.as_deref() != Some("ok") {
                    return Err(ConnError::Protocol(format!("join {topic} refused")));
                }
                self.joined.push((topic.to_owned(), r));
                return Ok(());
            }
        }
    }

    /// The join_ref of a joined topic.
    fn join_ref(&self, topic: &str) -> Result<String, ConnError> {
        self.joined
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, r)| r.clone())
            .ok_or_else(|| ConnError::Protocol(format!("{topic} is not joined")))
    }

    /// Queues `send_message` on a joined topic for the next POST.
    pub async fn send_chat(
        &mut self,
        topic: &str,
        content: &str,
        mobile_ref_id: &str,
    ) -> Result<(), ConnError> {
        let join_ref = self.join_ref(topic)?;
        let r = self.next_ref();
        let payload = SendMessage {
            content,
            mobile_ref_id,
        };
        let frame = serde_json::to_vec(&(&join_ref, &r, topic, "send_message", payload))
            .map_err(|e| ConnError::Protocol(e.to_string()))?;
        self.post(frame).await
    }

    /// Pushes `typing` `{"status":"typing"}` on a joined topic without waiting for the reply.
    pub async fn send_typing(&mut self, topic: &str) -> Result<(), ConnError> {
        let join_ref = self.join_ref(topic)?;
        let r = self.next_ref();
        let frame = serde_json::to_vec(&(
            &join_ref,
            &r,
            topic,
            "typing",
            serde_json::json!({"status": "typing"}),
        ))
        .map_err(|e| ConnError::Protocol(e.to_string()))?;
        self.post(frame).await
    }

    /// The next event (cancel-safe: a channel receive).
    pub async fn next_event(&mut self) -> Result<ConnEvent, ConnError> {
        Ok(self.events.recv().await.unwrap_or(ConnEvent::Closed {
            code: None,
            reason: "long-poll session ended".into(),
        }))
    }
}

fn parse(body: &[u8]) -> Result<PollAnswer, ConnError> {
    serde_json::from_slice(body)
        .map_err(|e| ConnError::Protocol(format!("bad long-poll answer: {e}")))
}

/// Sends the queued frames, one POST at a time, up to [`MAX_BATCH`] per POST.
async fn post_loop(
    mut http: Http,
    url: String,
    mut frames: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<ConnEvent>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut body = Vec::new();
    while frames.recv_many(&mut batch, MAX_BATCH).await > 0 {
        body.clear();
        for (i, frame) in batch.drain(..).enumerate() {
            if i > 0 {
                body.push(b'\n');
            }
            body.extend_from_slice(&frame);
        }
        let answer = http
            .request("POST", &url, Some(&body))
            .await
            .and_then(|b| parse(&b));
        let failure = match answer {
            Ok(answer) if answer.status == 200 => continue,
            Ok(answer) => format!("post answered status {}", answer.status),
            Err(err) => err.to_string(),
        };
        let _ = events
            .send(ConnEvent::Closed {
                code: None,
                reason: failure,
            })
            .await;
        return;
    }
}

async fn poll_loop(
    mut http: Http,
    url: String,
    events: mpsc::Sender<ConnEvent>,
    replies: mpsc::Sender<(String, Option<String>)>,
) {
    let end = loop {
        let answer = match http
            .request("GET", &url, None)
            .await
            .and_then(|b| parse(&b))
        {
            Ok(answer) => answer,
            Err(err) => break err.to_string(),
        };
        match answer.status {
            200 => {
                for text in answer.messages {
                    let Ok(m) = decode_server_text(Serializer::V2, Bytes::from(text)) else {
                        continue;
                    };
                    if m.event == "phx_reply"
                        && let Some(r) = &m.ref_
                        && m.topic != "phoenix"
                    {
                        // Join replies go to `join`; nobody waits for the others.
                        if m.join_ref.as_ref() == Some(r) {
                            let _ = replies.try_send((r.as_str().to_owned(), m.reply_status()));
                            continue;
                        }
                    }
                    if events.send(classify(&m)).await.is_err() {
                        return;
                    }
                }
            }
            204 => {}
            status => break format!("poll answered status {status}"),
        }
    };
    let _ = events
        .send(ConnEvent::Closed {
            code: None,
            reason: end,
        })
        .await;
}
