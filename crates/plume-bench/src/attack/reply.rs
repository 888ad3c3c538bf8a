//! Reading the server's answer to one push: the reply with a given ref, as a short label
//! (`ok`, the error reason, or how the socket ended), skipping every other frame.

use std::time::Duration;

use plume_client::{Client, ClientError, Event, Received};
use plume_wire::{Payload, Ref};

/// The label of a reply: `ok`, or the reason of an `error` reply (`error` when it has none).
pub fn reply_label(m: &Received) -> String {
    match m.reply_status().as_deref() {
        Some("ok") => "ok".to_owned(),
        status => {
            #[derive(serde::Deserialize)]
            struct Reason {
                reason: String,
            }
            m.reply_response()
                .and_then(|r| r.as_json().and_then(|j| j.parse::<Reason>().ok()))
                .map(|r| r.reason)
                .unwrap_or_else(|| status.unwrap_or("unknown").to_owned())
        }
    }
}

/// The label of a close: `closed 4029 rate limited: too many messages`, or `closed` when the
/// connection ended without a close frame.
pub fn close_label(code: Option<u16>, reason: &str) -> String {
    match code {
        Some(code) if reason.is_empty() => format!("closed {code}"),
        Some(code) => format!("closed {code} {reason}"),
        None => "closed without a close frame".to_owned(),
    }
}

/// What a push got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Its reply: `ok` or the reason.
    Reply(String),
    /// The socket closed first (the label of [`close_label`]).
    Closed(String),
    /// Nothing within the wait.
    Timeout,
    /// Sending or reading failed.
    Failed(String),
}

impl Answer {
    /// A short label for counting.
    pub fn label(&self) -> String {
        match self {
            Answer::Reply(r) => r.clone(),
            Answer::Closed(c) => c.clone(),
            Answer::Timeout => "no reply".to_owned(),
            Answer::Failed(e) => format!("failed: {e}"),
        }
    }

    /// True when the socket is gone.
    pub fn ended(&self) -> bool {
        matches!(self, Answer::Closed(_) | Answer::Failed(_))
    }
}

/// Sends a message with a fresh ref (`join_ref = ref` for a join, as phoenix.js does) and
/// waits up to `wait` for the reply to it.
pub async fn push(
    c: &mut Client,
    join_ref: Option<&Ref>,
    topic: &str,
    event: &str,
    payload: &Payload,
    wait: Duration,
) -> Answer {
    let r = c.make_ref();
    let join_ref = if event == plume_wire::event::PHX_JOIN {
        Some(&r)
    } else {
        join_ref
    };
    if let Err(e) = c.send(join_ref, Some(&r), topic, event, payload).await {
        return Answer::Failed(e.to_string());
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, c.recv()).await {
            Err(_) => return Answer::Timeout,
            Ok(Err(ClientError::Closed { code, reason }))
            | Ok(Ok(Event::Closed { code, reason })) => {
                return Answer::Closed(close_label(code, &reason));
            }
            Ok(Err(e)) => return Answer::Failed(e.to_string()),
            Ok(Ok(Event::Message(m)))
                if m.event == plume_wire::event::PHX_REPLY && m.ref_.as_ref() == Some(&r) =>
            {
                return Answer::Reply(reply_label(&m));
            }
            Ok(Ok(Event::Message(_))) => {}
        }
    }
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
    fn replies_are_labelled_by_status_or_reason() {
        let ok = decode(r#"["1","1","chat:7","phx_reply",{"response":{},"status":"ok"}]"#);
        assert_eq!(reply_label(&ok), "ok");
        let refused = decode(
            r#"["1","1","chat:7","phx_reply",{"response":{"reason":"topic_too_long"},"status":"error"}]"#,
        );
        assert_eq!(reply_label(&refused), "topic_too_long");
        let bare = decode(r#"["1","1","chat:7","phx_reply",{"response":{},"status":"error"}]"#);
        assert_eq!(reply_label(&bare), "error");
        assert_eq!(
            close_label(Some(4029), "rate limited: too many messages"),
            "closed 4029 rate limited: too many messages"
        );
        assert_eq!(close_label(Some(4008), ""), "closed 4008");
        assert_eq!(close_label(None, ""), "closed without a close frame");
        assert!(Answer::Closed("closed 4029".into()).ended());
        assert!(!Answer::Timeout.ended());
        assert_eq!(Answer::Timeout.label(), "no reply");
    }
}
