//! [`EchoChannel`]: a sample channel for `echo:*` that exercises every runtime feature.
//!
//! It exists so the protocol runtime can be driven end to end (by phoenix.js and the Rust
//! tests) without the chat application. Its behaviour is a small contract:
//!
//! | client sends                 | server does                                               |
//! |------------------------------|-----------------------------------------------------------|
//! | join `{}`                    | ok `{"auth_token", "params", "vsn"}` (what the socket connected with) |
//! | join `{"reject": R}`         | error `{"reason": R}`                                      |
//! | join `{"crash": true}`       | the join fails: error `{"reason":"join crashed"}`          |
//! | `echo` P                     | reply ok with P (binary P gives a binary reply)            |
//! | `push_back` P                | push `push_back` P to this client only; reply ok `{}`      |
//! | `broadcast_from` P           | broadcast `broadcast_from` P to the others; reply ok `{}`  |
//! | `crash`                      | the channel fails: `phx_error` `{"reason":"channel_crash"}` |
//! | `panic`                      | the channel panics: same as `crash`                       |
//! | `close`                      | reply ok `{}`, then `phx_close`                           |
//! | `info` P                     | queues P to its own `handle_info`, which pushes `info` P; reply ok `{}` |
//! | `phx_*` (reserved)           | reply error `{"reason":"reserved event"}`                |
//! | any other event E with P     | broadcast E P to the whole topic (sender included); reply ok `{}` |

use std::any::Any;
use std::sync::Arc;

use plume_wire::Payload;
use serde::Deserialize;
use serde_json::Value;

use crate::channel::{Channel, ChannelError, Context, JoinError, Outcome, Reply};
use crate::pubsub::PubSubError;

/// A broadcast reached this node's subscribers but not the other nodes': the sender is not
/// told (the backend counted it), only the log says so.
fn fan_out_failed(ctx: &Context<'_>, err: &PubSubError) {
    tracing::warn!(topic = ctx.topic(), %err, "echo broadcast not forwarded to other nodes");
}

/// The sample `echo:*` channel (see the module docs for its contract).
pub struct EchoChannel;

#[derive(Deserialize, Default)]
struct JoinParams {
    reject: Option<String>,
    #[serde(default)]
    crash: bool,
}

impl Channel for EchoChannel {
    type State = ();
    // The join reply echoes them.
    const READS_CONNECT_PARAMS: bool = true;

    async fn join(
        _state: &Arc<()>,
        _topic: &str,
        payload: Payload,
        ctx: &mut Context<'_>,
    ) -> Result<(EchoChannel, Payload), JoinError> {
        let params: JoinParams = payload
            .as_json()
            .filter(|j| j.is_object())
            .and_then(|j| j.parse().ok())
            .unwrap_or_default();
        if let Some(reason) = params.reject {
            return Err(JoinError::reason(&reason));
        }
        if params.crash {
            return Err(ChannelError::Internal("echo join asked to crash").into());
        }
        let info = ctx.connect_info();
        let vsn = match ctx.serializer() {
            plume_wire::Serializer::V1 => "1.0.0",
            plume_wire::Serializer::V2 => "2.0.0",
        };
        let response = serde_json::json!({
            "auth_token": info.request.auth_token,
            "params": Value::Object(info.request.params.clone()),
            "vsn": vsn,
        });
        let response = Payload::json(&response).map_err(ChannelError::encode("the join reply"))?;
        Ok((EchoChannel, response))
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, ChannelError> {
        match event {
            "echo" => Ok(Reply::ok(payload).into()),
            "push_back" => {
                ctx.push("push_back", &payload);
                Ok(Reply::ok_empty().into())
            }
            "broadcast_from" => {
                if let Err(err) = ctx.broadcast_from("broadcast_from", payload) {
                    fan_out_failed(ctx, &err);
                }
                Ok(Reply::ok_empty().into())
            }
            "crash" => Err(ChannelError::Internal("echo channel asked to crash")),
            "panic" => panic!("echo channel asked to panic"),
            "close" => Ok(Outcome::Stop(Some(Reply::ok_empty()))),
            "info" => {
                ctx.send_info(Box::new(payload))
                    .map_err(ChannelError::queue("the info message"))?;
                Ok(Reply::ok_empty().into())
            }
            // Control events belong to the protocol; a client must not make the server send
            // them to everyone.
            _ if event.starts_with("phx_") => Ok(Reply::error_reason("reserved event").into()),
            _ => {
                if let Err(err) = ctx.broadcast(event, payload) {
                    fan_out_failed(ctx, &err);
                }
                Ok(Reply::ok_empty().into())
            }
        }
    }

    async fn handle_info(
        &mut self,
        info: Box<dyn Any + Send>,
        ctx: &mut Context<'_>,
    ) -> Result<(), ChannelError> {
        if let Ok(payload) = info.downcast::<Payload>() {
            ctx.push("info", &payload);
        }
        Ok(())
    }
}
