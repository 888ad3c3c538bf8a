//! [`LogRepair`]: how this node's registry gets back chat messages it missed.
//!
//! Chat messages are sequenced broadcasts: the registry (plume-channels) dispatches them to
//! local sockets in seq order and asks for a repair when one is missing, either because a
//! later seq arrived first (two nodes published close together, or a sender stopped between
//! its append and its publish) or because the Redis pub/sub link dropped and came back
//! (everything published meanwhile is gone from pub/sub). The repair waits a moment (a
//! reordering usually closes by itself), then reads the chat's log after the last seq the
//! node dispatched and hands what it finds to the registry, which dispatches it in order.

use std::sync::{Arc, Weak};
use std::time::Duration;

use plume_channels::{PubSub, Seq, SeqRepair};

use crate::chat::receive_broadcast;
use crate::events::CHAT_PREFIX;
use crate::store::MessageLog;

/// How long a gap may stay open before the log is read.
pub const REPAIR_DELAY: Duration = Duration::from_millis(50);
/// Messages read from the log per step of a repair.
const PAGE: usize = 500;

/// Reads missed chat messages from the log (see the module docs).
pub struct LogRepair {
    log: Arc<dyn MessageLog>,
    /// Weak: the pub/sub owns its registry, which owns this repair.
    pubsub: Weak<dyn PubSub>,
}

impl LogRepair {
    /// A repair over `log` for the registry of `pubsub`.
    pub fn new(log: Arc<dyn MessageLog>, pubsub: &Arc<dyn PubSub>) -> LogRepair {
        LogRepair {
            log,
            pubsub: Arc::downgrade(pubsub),
        }
    }
}

impl SeqRepair for LogRepair {
    fn repair(&self, topic: &str, epoch: u64, after: u64) {
        let Some(chat) = topic.strip_prefix(CHAT_PREFIX) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (log, pubsub) = (self.log.clone(), self.pubsub.clone());
        let (topic, chat): (Arc<str>, String) = (topic.into(), chat.to_owned());
        runtime.spawn(async move {
            tokio::time::sleep(REPAIR_DELAY).await;
            let mut after = after;
            loop {
                let Some(pubsub) = pubsub.upgrade() else {
                    return;
                };
                let registry = pubsub.registry();
                // Moved on meanwhile (the gap closed by itself): nothing to do.
                if registry.seq_position(&topic) != Some(Seq { epoch, seq: after }) {
                    return;
                }
                let missed = match log.after(&chat, after, PAGE).await {
                    Ok(missed) => missed,
                    Err(err) => {
                        tracing::warn!(%topic, after, %err, "seq repair: log unavailable");
                        return;
                    }
                };
                let full = missed.len() == PAGE;
                let last = missed.last().map(|m| m.seq);
                let broadcasts: Vec<_> = missed
                    .iter()
                    .filter_map(|m| receive_broadcast(topic.clone(), m, None).ok())
                    .collect();
                tracing::debug!(%topic, after, found = broadcasts.len(), "seq repair");
                registry.repaired(&topic, epoch, after, broadcasts);
                match (full, last) {
                    (true, Some(last)) => after = last,
                    _ => return,
                }
            }
        });
    }
}
