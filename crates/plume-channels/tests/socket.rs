//! The socket state machine without any network: messages in, frames out.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use plume_channels::{
    Channel, ChannelError, ConnectInfo, ConnectRequest, Context, JoinError, LocalPubSub, Outcome,
    Reply, Router, Socket, SocketConfig,
};
use plume_wire::{Frame, Payload, Serializer};

struct Pushy;

impl Channel for Pushy {
    type State = ();

    async fn join(
        _: &Arc<()>,
        topic: &str,
        _: Payload,
        ctx: &mut Context<'_>,
    ) -> Result<(Pushy, Payload), JoinError> {
        ctx.push("welcome", &Payload::empty());
        if topic.ends_with("no") {
            return Err(JoinError::reason("nope"));
        }
        Ok((Pushy, Payload::empty()))
    }

    async fn handle_in(
        &mut self,
        _: &str,
        _: Payload,
        _: &mut Context<'_>,
    ) -> Result<Outcome, ChannelError> {
        Ok(Reply::ok_empty().into())
    }
}

fn socket() -> Socket {
    let request = ConnectRequest {
        params: Default::default(),
        auth_token: None,
        serializer: Serializer::V2,
        peer: None,
    };
    let info = ConnectInfo {
        request,
        socket_id: None,
        assigns: None,
    };
    let router = Arc::new(Router::new().channel::<Pushy>("p:*", Arc::new(())));
    Socket::new(
        info,
        router,
        Arc::new(LocalPubSub::new()),
        SocketConfig::default(),
    )
    .0
}

async fn feed(s: &mut Socket, text: &'static str) -> Vec<String> {
    let msg = Serializer::V2
        .decode_text(Bytes::from_static(text.as_bytes()))
        .unwrap();
    s.handle_message(msg).await;
    s.frames()
        .drain(..)
        .map(|f| match f {
            Frame::Text(b) => String::from_utf8(b.to_vec()).unwrap(),
            Frame::Binary(_) => panic!("binary"),
        })
        .collect()
}

#[tokio::test]
async fn pushes_made_while_joining_follow_the_reply() {
    let mut s = socket();
    assert_eq!(
        feed(&mut s, r#"["1","1","p:yes","phx_join",{}]"#).await,
        [
            r#"["1","1","p:yes","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"["1",null,"p:yes","welcome",{}]"#,
        ]
    );
}

#[tokio::test]
async fn pushes_made_by_a_refused_join_are_dropped() {
    let mut s = socket();
    assert_eq!(
        feed(&mut s, r#"["1","1","p:no","phx_join",{}]"#).await,
        [r#"["1","1","p:no","phx_reply",{"response":{"reason":"nope"},"status":"error"}]"#]
    );
    assert_eq!(s.joined().count(), 0);
}

#[tokio::test]
async fn null_join_ref_on_v2_join_uses_the_ref() {
    let mut s = socket();
    let frames = feed(&mut s, r#"[null,"5","p:yes","phx_join",{}]"#).await;
    assert_eq!(
        frames[0],
        r#"["5","5","p:yes","phx_reply",{"response":{},"status":"ok"}]"#
    );
    let joined: Vec<_> = s
        .joined()
        .map(|(t, jr)| (t.to_owned(), jr.cloned()))
        .collect();
    assert_eq!(joined, [("p:yes".to_owned(), Some("5".into()))]);
}
