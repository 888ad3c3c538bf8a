//! [`Tracker`]: Phoenix Presence on `chat:{id}` and users' online status, on one node or
//! cluster-wide.
//!
//! **Presence.** Every socket joined to a chat is one *meta* `{phx_ref, device_unique_id,
//! online_at}` under its user's key. The tracker keeps this node's metas (each with its
//! channel's handle) and, in a cluster, writes them to the shared [`RosterStore`] before
//! announcing them. A joiner gets `presence_state` (the whole roster, itself included) right
//! after its join reply; changes go out as `presence_diff` broadcasts on the chat topic,
//! coalesced per chat: the first change after a quiet spell starts a timer of
//! `presence_interval`, and everything that changed on this node by then goes out in one
//! diff. So a chat gets at most one diff per node per interval, whatever the churn, and a
//! room of `n` members costs at most `n` frames per node per interval rather than `n` per
//! join (a join storm of `n` sockets costs `O(n · duration / interval)` diff frames, not
//! `O(n²)`). A join that leaves again within the same interval is sent as its leave only.
//!
//! The state a joiner reads may already hold changes that a diff announces afterwards (a
//! join it already has, a leave of a meta it never saw); phoenix.js applies both harmlessly,
//! and nothing can fall between the two, because the joiner subscribed before it read.
//!
//! In a cluster, diffs travel as ordinary broadcasts (one publish per diff); the node that
//! finds a dead node's records in its periodic sweep removes them and broadcasts their
//! leaves; a node that finds Redis lost its records (a Redis restart without data, or a
//! sweep while it was cut off) writes them again, announces them as joins and, two sweeps
//! later, pushes a fresh `presence_state` to each of its sockets so that metas of nodes that
//! died meanwhile disappear from clients too.
//!
//! **Online status.** A user is online while they have a socket (any connected, authenticated
//! socket) anywhere. The first one makes them online; when the last one closes, they go
//! offline after `online_linger` unless one connects again meanwhile. Each change is pushed
//! as `user_online_changed` to the notifications topic of every member of the user's chats
//! of at most `online_fanout_max_members` members (bigger chats do not propagate it) who has
//! that topic joined. Socket counts are per node; in a cluster each node records in Redis
//! that the user has sockets there, and the node whose change makes the cluster-wide answer
//! flip sends the event (a dead node's users go offline when it is swept).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use plume_channels::{Broadcast, ChannelHandle, PubSub, SocketId};
use plume_wire::Payload;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::config::ChatConfig;
use crate::events::{
    CHAT_PREFIX, NOTIFICATION_ALIAS_PREFIX, NOTIFICATIONS_PREFIX, PRESENCE_DIFF,
    USER_ONLINE_CHANGED,
};
use crate::store::roster::{PresenceMeta, RosterStore};
use crate::store::{StoreError, Stores};
use crate::time::now_millis;

/// Sent to a chat channel when its `presence_state` must be pushed again (after Redis lost
/// the roster).
pub struct Resync;

/// A meta as it is on the wire.
#[derive(Serialize)]
struct MetaView<'a> {
    phx_ref: &'a str,
    device_unique_id: &'a str,
    online_at: i64,
}

#[derive(Serialize)]
struct Metas<'a> {
    metas: Vec<MetaView<'a>>,
}

/// `{"metas":[…]}` of one user, encoded once per change of that user's metas.
fn entry_json<'a>(metas: impl Iterator<Item = &'a PresenceMeta>) -> Box<RawValue> {
    let metas = Metas {
        metas: metas
            .map(|m| MetaView {
                phx_ref: &m.phx_ref,
                device_unique_id: &m.device_unique_id,
                online_at: m.online_at,
            })
            .collect(),
    };
    let text = serde_json::to_string(&metas).unwrap_or_else(|_| r#"{"metas":[]}"#.into());
    RawValue::from_string(text).unwrap_or_else(|_| empty_entry())
}

fn empty_entry() -> Box<RawValue> {
    // A literal that is valid JSON.
    RawValue::from_string(r#"{"metas":[]}"#.to_owned()).unwrap_or_default()
}

/// `{user: {"metas": [...]}}` of loose metas, each user's metas oldest first.
fn grouped(metas: &[PresenceMeta]) -> BTreeMap<&str, Box<RawValue>> {
    let mut by_user: BTreeMap<&str, Vec<&PresenceMeta>> = BTreeMap::new();
    for m in metas {
        by_user.entry(&m.user).or_default().push(m);
    }
    by_user
        .into_iter()
        .map(|(user, mut metas)| {
            metas.sort_by(|a, b| (a.online_at, &a.phx_ref).cmp(&(b.online_at, &b.phx_ref)));
            (user, entry_json(metas.into_iter()))
        })
        .collect()
}

#[derive(Serialize)]
struct Diff<'a> {
    joins: BTreeMap<&'a str, Box<RawValue>>,
    leaves: BTreeMap<&'a str, Box<RawValue>>,
}

/// The `presence_diff` payload.
fn diff_payload(joins: &[PresenceMeta], leaves: &[PresenceMeta]) -> Result<Payload, StoreError> {
    let diff = Diff {
        joins: grouped(joins),
        leaves: grouped(leaves),
    };
    Payload::json(&diff).map_err(StoreError::encode("presence_diff"))
}

/// URL-safe base64 without padding (12 bytes in, 16 characters out).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// One socket's meta on this node.
struct LocalMeta {
    meta: PresenceMeta,
    handle: ChannelHandle,
}

/// One user's metas on this node in one chat.
struct LocalUser {
    metas: Vec<LocalMeta>,
    /// `{"metas":[…]}` of `metas`, for building `presence_state` without encoding again.
    entry: Box<RawValue>,
}

#[derive(Default)]
struct LocalChat {
    users: BTreeMap<String, LocalUser>,
    /// Metas in `users`.
    count: usize,
    /// Changes not yet broadcast.
    joins: Vec<PresenceMeta>,
    leaves: Vec<PresenceMeta>,
    flush_scheduled: bool,
}

impl LocalChat {
    fn is_idle(&self) -> bool {
        self.count == 0 && self.joins.is_empty() && self.leaves.is_empty() && !self.flush_scheduled
    }
}

/// This node's sockets of one user, for online status.
#[derive(Default)]
struct OnlineEntry {
    sockets: usize,
    /// Bumped by every connect and by the disconnect of the last socket: a linger timer of
    /// an older generation is stale.
    generation: u64,
    /// Whether this node told (Redis and possibly the members) that the user is online here.
    announced: bool,
}

enum OnlineOp {
    Up(String),
    Expire(String, u64),
    Swept(Vec<String>),
}

/// Presence and online status of this node (see the module docs).
pub struct Tracker {
    roster: Option<Arc<dyn RosterStore>>,
    stores: Stores,
    pubsub: Arc<dyn PubSub>,
    interval: Duration,
    linger: Duration,
    fanout_max_members: usize,
    /// Random per process: part of every `phx_ref` and of made-up device ids.
    nonce: u64,
    counter: AtomicU64,
    chats: Mutex<HashMap<String, LocalChat>>,
    /// Cluster roster reads of the chats somebody on this node is waiting a state for.
    reads: Mutex<HashMap<String, RosterReads>>,
    online: Mutex<HashMap<String, OnlineEntry>>,
    online_tx: mpsc::UnboundedSender<OnlineOp>,
}

/// The roster reads of one chat on this node: joiners that want a `presence_state` at the
/// same time share one read of the cluster roster (and its encoding), so a join storm costs
/// Redis one read of the whole roster per chat at a time per node rather than one per join.
/// A joiner's state must be read after its own meta was written, so it is served by the first
/// read that *begins* after it asked, never by one already running.
struct RosterReads {
    /// Joiners waiting; the entry goes when the last one is served (and its state with it).
    waiting: usize,
    /// Requests so far: a joiner's ticket is this count once it has asked.
    asked: u64,
    shared: Arc<tokio::sync::Mutex<LastRead>>,
}

/// Drops a waiter of [`RosterReads`] however its wait ended.
struct Served<'a> {
    reads: &'a Mutex<HashMap<String, RosterReads>>,
    chat: &'a str,
}

impl Drop for Served<'_> {
    fn drop(&mut self) {
        let mut reads = self.reads.lock();
        if let Some(entry) = reads.get_mut(self.chat) {
            entry.waiting -= 1;
            if entry.waiting == 0 {
                reads.remove(self.chat);
            }
        }
    }
}

/// The newest roster read of a chat and which requests it covers.
#[derive(Default)]
struct LastRead {
    /// Every ticket up to this one asked before the read began.
    covers: u64,
    state: Option<Payload>,
}

impl Tracker {
    /// A tracker over `stores` (cluster-wide when they have a roster), broadcasting through
    /// `pubsub`. Starts its background tasks on the current tokio runtime.
    pub fn new(config: &ChatConfig, stores: Stores, pubsub: Arc<dyn PubSub>) -> Arc<Tracker> {
        let (online_tx, online_rx) = mpsc::unbounded_channel();
        let tracker = Arc::new(Tracker {
            roster: stores.roster.clone(),
            stores,
            pubsub,
            interval: config.presence_interval,
            linger: config.online_linger,
            fanout_max_members: config.online_fanout_max_members,
            nonce: uuid::Uuid::now_v7().as_u128() as u64,
            counter: AtomicU64::new(0),
            chats: Mutex::new(HashMap::new()),
            reads: Mutex::new(HashMap::new()),
            online: Mutex::new(HashMap::new()),
            online_tx,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(online_worker(Arc::downgrade(&tracker), online_rx));
            if let Some(roster) = &tracker.roster {
                // Ten sweeps per node TTL: a dead node's users leave at most a tenth of the
                // TTL after its record expired.
                let every = (roster.node_ttl() / 10).max(Duration::from_millis(100));
                tokio::spawn(maintain(Arc::downgrade(&tracker), every));
            }
        }
        tracker
    }

    /// A fresh `phx_ref`: 64-bit nanosecond time, 16 bits of this process's nonce, a 16-bit
    /// counter, as 16 URL-safe base64 characters (the shape Phoenix uses).
    fn next_ref(&self) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; 12];
        bytes[..8].copy_from_slice(&nanos.to_be_bytes());
        bytes[8..10].copy_from_slice(&(self.nonce as u16).to_be_bytes());
        bytes[10..].copy_from_slice(&(n as u16).to_be_bytes());
        base64url(&bytes)
    }

    /// The device id of a socket that gave none: unique per socket in the cluster.
    pub fn anonymous_device(&self, socket: SocketId) -> String {
        format!("anon-{:016x}-{}", self.nonce, socket.0)
    }

    /// Socket `socket`'s channel (`handle`) of `user` on `device` joined `chat`: records
    /// its meta (in the cluster roster first) and queues its join for the next diff.
    pub async fn track(
        self: &Arc<Self>,
        chat: &str,
        user: &str,
        device: &str,
        handle: ChannelHandle,
    ) -> Result<PresenceMeta, StoreError> {
        let meta = PresenceMeta {
            user: user.to_owned(),
            phx_ref: self.next_ref(),
            device_unique_id: device.to_owned(),
            online_at: now_millis(),
        };
        if let Some(roster) = &self.roster {
            roster.track(chat, &meta).await?;
        }
        let schedule = {
            let mut chats = self.chats.lock();
            let entry = chats.entry(chat.to_owned()).or_default();
            let local = entry
                .users
                .entry(user.to_owned())
                .or_insert_with(|| LocalUser {
                    metas: Vec::new(),
                    entry: empty_entry(),
                });
            // Exactly: a user has one socket in a chat on a node far more often than more, and
            // a Vec's first push would make room for four (about 290 bytes unused per meta).
            local.metas.reserve_exact(1);
            local.metas.push(LocalMeta {
                meta: meta.clone(),
                handle,
            });
            local.entry = entry_json(local.metas.iter().map(|m| &m.meta));
            entry.count += 1;
            entry.joins.push(meta.clone());
            !std::mem::replace(&mut entry.flush_scheduled, true)
        };
        if schedule {
            self.schedule_flush(chat);
        }
        Ok(meta)
    }

    /// The channel with meta `phx_ref` of `user` left `chat` (left, closed, crashed).
    pub async fn untrack(self: &Arc<Self>, chat: &str, user: &str, phx_ref: &str) {
        let (schedule, last) = {
            let mut chats = self.chats.lock();
            let Some(entry) = chats.get_mut(chat) else {
                return;
            };
            let Some(local) = entry.users.get_mut(user) else {
                return;
            };
            let Some(at) = local.metas.iter().position(|m| m.meta.phx_ref == phx_ref) else {
                return;
            };
            let gone = local.metas.remove(at).meta;
            if local.metas.is_empty() {
                entry.users.remove(user);
            } else {
                local.entry = entry_json(local.metas.iter().map(|m| &m.meta));
            }
            entry.count -= 1;
            // A join not yet announced needs no announcement now; the leave still goes out,
            // since a socket that joined meanwhile may have it in its presence_state.
            entry.joins.retain(|m| m.phx_ref != phx_ref);
            entry.leaves.push(gone);
            let schedule = !std::mem::replace(&mut entry.flush_scheduled, true);
            (schedule, entry.count == 0)
        };
        if schedule {
            self.schedule_flush(chat);
        }
        if let Some(roster) = &self.roster
            && let Err(err) = roster.untrack(chat, phx_ref, last).await
        {
            // The record stays until this node is swept or restarts (it is this node's).
            tracing::warn!(chat, user, %err, "presence record not removed from the roster");
        }
    }

    fn schedule_flush(self: &Arc<Self>, chat: &str) {
        let (tracker, chat) = (self.clone(), chat.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(tracker.interval).await;
            tracker.flush(&chat);
        });
    }

    /// Broadcasts what changed in `chat` on this node since the last diff.
    fn flush(&self, chat: &str) {
        let (joins, leaves) = {
            let mut chats = self.chats.lock();
            let Some(entry) = chats.get_mut(chat) else {
                return;
            };
            entry.flush_scheduled = false;
            let taken = (
                std::mem::take(&mut entry.joins),
                std::mem::take(&mut entry.leaves),
            );
            if entry.is_idle() {
                chats.remove(chat);
            }
            taken
        };
        self.broadcast_diff(chat, &joins, &leaves);
    }

    fn broadcast_diff(&self, chat: &str, joins: &[PresenceMeta], leaves: &[PresenceMeta]) {
        if joins.is_empty() && leaves.is_empty() {
            return;
        }
        let payload = match diff_payload(joins, leaves) {
            Ok(p) => p,
            Err(err) => {
                tracing::error!(chat, %err, "presence_diff not encoded");
                return;
            }
        };
        let sent = self.pubsub.broadcast(Broadcast {
            topic: format!("{CHAT_PREFIX}{chat}").into(),
            event: PRESENCE_DIFF.into(),
            payload,
            from: None,
            seq: None,
        });
        if let Err(err) = sent {
            tracing::warn!(chat, %err, "presence_diff not published to other nodes");
        }
    }

    /// The `presence_state` of `chat`: every meta, cluster-wide, grouped by user.
    pub async fn state(&self, chat: &str) -> Result<Payload, StoreError> {
        let encoded = match &self.roster {
            Some(roster) => return self.shared_roster_state(roster.as_ref(), chat).await,
            None => {
                let chats = self.chats.lock();
                let map: BTreeMap<&str, &RawValue> = chats
                    .get(chat)
                    .map(|c| {
                        c.users
                            .iter()
                            .map(|(u, l)| (u.as_str(), &*l.entry))
                            .collect()
                    })
                    .unwrap_or_default();
                Payload::json(&map)
            }
        };
        encoded.map_err(StoreError::encode("presence_state"))
    }

    /// The cluster-wide state of `chat`, read from the roster by the first read that begins
    /// after this call (see [`RosterReads`]).
    async fn shared_roster_state(
        &self,
        roster: &dyn RosterStore,
        chat: &str,
    ) -> Result<Payload, StoreError> {
        let (ticket, shared) = {
            let mut reads = self.reads.lock();
            let entry = reads.entry(chat.to_owned()).or_insert_with(|| RosterReads {
                waiting: 0,
                asked: 0,
                shared: Arc::default(),
            });
            entry.waiting += 1;
            entry.asked += 1;
            (entry.asked, entry.shared.clone())
        };
        // Served, failed or dropped half-way (the socket went): no longer waiting.
        let _served = Served {
            reads: &self.reads,
            chat,
        };
        let mut last = shared.lock().await;
        if last.covers >= ticket
            && let Some(state) = &last.state
        {
            return Ok(state.clone());
        }
        // Everyone who has asked by now asked before this read begins.
        let covers = self.reads.lock().get(chat).map_or(ticket, |e| e.asked);
        let metas = roster.list(chat).await?;
        let state =
            Payload::json(&grouped(&metas)).map_err(StoreError::encode("presence_state"))?;
        *last = LastRead {
            covers,
            state: Some(state.clone()),
        };
        Ok(state)
    }

    /// How many metas `chat` has on this node (tests, benchmarks).
    pub fn local_count(&self, chat: &str) -> usize {
        self.chats.lock().get(chat).map_or(0, |c| c.count)
    }

    // Online status.

    /// A socket of `user` connected (authenticated) on this node.
    pub fn socket_connected(&self, user: &str) {
        let mut online = self.online.lock();
        let entry = online.entry(user.to_owned()).or_default();
        entry.sockets += 1;
        entry.generation += 1;
        if !entry.announced {
            let _ = self.online_tx.send(OnlineOp::Up(user.to_owned()));
        }
    }

    /// A socket of `user` on this node closed.
    pub fn socket_disconnected(&self, user: &str) {
        let generation = {
            let mut online = self.online.lock();
            let Some(entry) = online.get_mut(user) else {
                return;
            };
            entry.sockets = entry.sockets.saturating_sub(1);
            if entry.sockets > 0 {
                return;
            }
            entry.generation += 1;
            entry.generation
        };
        let (tx, user, linger) = (self.online_tx.clone(), user.to_owned(), self.linger);
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                tokio::time::sleep(linger).await;
                let _ = tx.send(OnlineOp::Expire(user, generation));
            });
        }
    }

    async fn handle_online(&self, op: OnlineOp) {
        match op {
            OnlineOp::Up(user) => {
                {
                    let mut online = self.online.lock();
                    match online.get_mut(&user) {
                        Some(e) if e.sockets > 0 && !e.announced => e.announced = true,
                        _ => return,
                    }
                }
                let first = match &self.roster {
                    Some(roster) => roster.online_up(&user).await,
                    None => Ok(true),
                };
                match first {
                    Ok(true) => self.fan_out_online(&user, true).await,
                    Ok(false) => {}
                    Err(err) => tracing::warn!(user, %err, "online status not recorded"),
                }
            }
            OnlineOp::Expire(user, generation) => {
                {
                    let mut online = self.online.lock();
                    match online.get(&user) {
                        Some(e) if e.sockets == 0 && e.generation == generation => {
                            let announced = e.announced;
                            online.remove(&user);
                            if !announced {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
                let last = match &self.roster {
                    Some(roster) => roster.online_down(&user).await,
                    None => Ok(true),
                };
                match last {
                    Ok(true) => self.fan_out_online(&user, false).await,
                    Ok(false) => {}
                    Err(err) => tracing::warn!(user, %err, "offline status not recorded"),
                }
            }
            OnlineOp::Swept(users) => {
                for user in users {
                    let here = self.online.lock().get(&user).is_some_and(|e| e.sockets > 0);
                    if !here {
                        self.fan_out_online(&user, false).await;
                    }
                }
            }
        }
    }

    /// `user_online_changed` to the members of `user`'s chats (those of at most
    /// `online_fanout_max_members` members) who have their notifications topic joined.
    async fn fan_out_online(&self, user: &str, online: bool) {
        if let Err(err) = self.try_fan_out_online(user, online).await {
            tracing::warn!(user, online, %err, "user_online_changed not sent");
        }
    }

    async fn try_fan_out_online(&self, user: &str, online: bool) -> Result<(), StoreError> {
        let membership = &self.stores.membership;
        let mut targets = BTreeSet::new();
        let chats: Vec<String> = membership
            .chats_of(user)
            .await?
            .into_iter()
            .map(|c| c.chat_id)
            .collect();
        // Counted first (one round trip): a big chat's member list is never fetched for this.
        let counts = membership.count_members(&chats).await?;
        for (chat, count) in chats.iter().zip(counts) {
            if count > self.fanout_max_members {
                continue;
            }
            let members = membership.members(chat).await?;
            targets.extend(members.iter().filter(|m| *m != user).cloned());
        }
        if targets.is_empty() {
            return Ok(());
        }
        let targets: Vec<String> = targets.into_iter().collect();
        let located = self.stores.presence.locate(&targets, None).await?;
        let payload = Payload::json(&serde_json::json!({"user_id": user, "online": online}))
            .map_err(StoreError::encode("user_online_changed"))?;
        for (target, at) in targets.iter().zip(&located) {
            if !at.notifications {
                continue;
            }
            for prefix in [NOTIFICATIONS_PREFIX, NOTIFICATION_ALIAS_PREFIX] {
                let sent = self.pubsub.broadcast(Broadcast {
                    topic: format!("{prefix}{target}").into(),
                    event: USER_ONLINE_CHANGED.into(),
                    payload: payload.clone(),
                    from: None,
                    seq: None,
                });
                // Delivered on this node (the backend counted the copy other nodes missed);
                // the next targets still get theirs.
                if let Err(err) = sent {
                    tracing::debug!(user, online, %err,
                        "user_online_changed not forwarded to other nodes");
                }
            }
        }
        Ok(())
    }

    // Cluster upkeep.

    /// Removes dead nodes' records and announces their departures (leaves per chat,
    /// offline users).
    async fn sweep(&self, roster: &dyn RosterStore, own: bool) {
        let gone = match roster.sweep(own).await {
            Ok(gone) => gone,
            Err(err) => {
                tracing::debug!(%err, "presence sweep failed");
                return;
            }
        };
        if !gone.metas.is_empty() {
            let mut by_chat: BTreeMap<String, Vec<PresenceMeta>> = BTreeMap::new();
            for (chat, meta) in gone.metas {
                by_chat.entry(chat).or_default().push(meta);
            }
            tracing::info!(chats = by_chat.len(), "presence of a dead node swept");
            for (chat, leaves) in by_chat {
                self.broadcast_diff(&chat, &[], &leaves);
            }
        }
        if !gone.offline.is_empty() {
            let _ = self.online_tx.send(OnlineOp::Swept(gone.offline));
        }
    }

    /// Writes this node's records again if the roster lost them; returns whether it did.
    async fn restore_if_lost(&self, roster: &dyn RosterStore) -> bool {
        let (metas, online) = {
            let chats = self.chats.lock();
            let metas: Vec<(String, PresenceMeta)> = chats
                .iter()
                .flat_map(|(chat, c)| {
                    c.users
                        .values()
                        .flat_map(|u| u.metas.iter().map(|m| (chat.clone(), m.meta.clone())))
                })
                .collect();
            let online: Vec<String> = self
                .online
                .lock()
                .iter()
                .filter(|(_, e)| e.announced)
                .map(|(u, _)| u.clone())
                .collect();
            (metas, online)
        };
        if metas.is_empty() && online.is_empty() {
            return false;
        }
        match roster.registered().await {
            Ok(true) => return false,
            Ok(false) => {}
            Err(err) => {
                tracing::debug!(%err, "presence registration not checked");
                return false;
            }
        }
        if let Err(err) = roster.restore(&metas, &online).await {
            tracing::warn!(%err, "presence records not restored");
            return false;
        }
        tracing::info!(
            metas = metas.len(),
            users = online.len(),
            "presence records restored after the roster lost them"
        );
        let mut by_chat: BTreeMap<&str, Vec<PresenceMeta>> = BTreeMap::new();
        for (chat, meta) in &metas {
            by_chat.entry(chat).or_default().push(meta.clone());
        }
        for (chat, joins) in by_chat {
            self.broadcast_diff(chat, &joins, &[]);
        }
        true
    }

    /// Asks every local chat channel to push its `presence_state` again.
    fn resync_all(&self) {
        let chats = self.chats.lock();
        for c in chats.values() {
            for u in c.users.values() {
                for m in &u.metas {
                    let _ = m.handle.send_info(Box::new(Resync));
                }
            }
        }
    }
}

async fn online_worker(tracker: Weak<Tracker>, mut rx: mpsc::UnboundedReceiver<OnlineOp>) {
    while let Some(op) = rx.recv().await {
        let Some(tracker) = tracker.upgrade() else {
            return;
        };
        tracker.handle_online(op).await;
    }
}

/// The cluster upkeep loop: sweeps dead nodes and restores this node's records, every
/// `every`, until the tracker is dropped.
async fn maintain(tracker: Weak<Tracker>, every: Duration) {
    if let Some(t) = tracker.upgrade()
        && let Some(roster) = t.roster.clone()
    {
        t.sweep(&*roster, true).await;
    }
    let mut resync_in: Option<u32> = None;
    let mut link = tracker.upgrade().map_or(0, |t| t.pubsub.link_epoch());
    loop {
        tokio::time::sleep(every).await;
        let Some(t) = tracker.upgrade() else {
            return;
        };
        let Some(roster) = t.roster.clone() else {
            return;
        };
        t.sweep(&*roster, false).await;
        if t.restore_if_lost(&*roster).await {
            // Other nodes restore theirs within a sweep or two; then clients get a state
            // without the metas of nodes that died while the roster was lost.
            resync_in = Some(2);
        }
        let now = t.pubsub.link_epoch();
        if now != link {
            // The link to the other nodes came back: diffs they sent meanwhile are lost,
            // so this node's clients get the roster again (after the other nodes had a
            // sweep or two to restore theirs).
            link = now;
            resync_in = Some(2);
        }
        resync_in = match resync_in {
            Some(0) => {
                t.resync_all();
                None
            }
            Some(n) => Some(n - 1),
            None => None,
        };
    }
}

/// What a socket's session holds so that its end is noticed: dropped with the socket's
/// connect data, it tells the tracker the socket is gone.
pub struct OnlineGuard {
    tracker: Weak<Tracker>,
    user: String,
}

impl OnlineGuard {
    /// Counts a socket of `user` as connected until the guard is dropped.
    pub fn new(tracker: &Arc<Tracker>, user: &str) -> OnlineGuard {
        tracker.socket_connected(user);
        OnlineGuard {
            tracker: Arc::downgrade(tracker),
            user: user.to_owned(),
        }
    }
}

impl Drop for OnlineGuard {
    fn drop(&mut self) {
        if let Some(tracker) = self.tracker.upgrade() {
            tracker.socket_disconnected(&self.user);
        }
    }
}

impl std::fmt::Debug for OnlineGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineGuard")
            .field("user", &self.user)
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refs_are_sixteen_url_safe_characters() {
        assert_eq!(base64url(&[0, 0, 0]), "AAAA");
        assert_eq!(base64url(&[0xfb, 0xff, 0xfe]), "-__-");
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url(&[0u8; 12]).len(), 16);
    }

    #[test]
    fn diffs_group_metas_by_user_oldest_first() {
        let meta = |user: &str, r: &str, t| PresenceMeta {
            user: user.into(),
            phx_ref: r.into(),
            device_unique_id: format!("dev-{r}"),
            online_at: t,
        };
        let joins = [meta("b", "2", 20), meta("a", "1", 10), meta("b", "0", 5)];
        let leaves = [meta("c", "9", 1)];
        let p = diff_payload(&joins, &leaves).unwrap();
        let v: serde_json::Value = p.as_json().unwrap().parse().unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "joins": {
                    "a": {"metas": [{"phx_ref": "1", "device_unique_id": "dev-1", "online_at": 10}]},
                    "b": {"metas": [
                        {"phx_ref": "0", "device_unique_id": "dev-0", "online_at": 5},
                        {"phx_ref": "2", "device_unique_id": "dev-2", "online_at": 20}
                    ]}
                },
                "leaves": {"c": {"metas": [{"phx_ref": "9", "device_unique_id": "dev-9", "online_at": 1}]}}
            })
        );
    }

    /// The real Redis roster, with the answer of `list` held at a gate until the test opens
    /// it, and its calls counted.
    struct GatedRoster {
        inner: crate::store::roster::RedisRoster,
        gate: tokio::sync::Semaphore,
        lists: AtomicU64,
    }

    #[async_trait::async_trait]
    impl RosterStore for GatedRoster {
        async fn track(&self, chat: &str, meta: &PresenceMeta) -> Result<(), StoreError> {
            self.inner.track(chat, meta).await
        }
        async fn untrack(&self, chat: &str, r: &str, last: bool) -> Result<(), StoreError> {
            self.inner.untrack(chat, r, last).await
        }
        async fn list(&self, chat: &str) -> Result<Vec<PresenceMeta>, StoreError> {
            let metas = self.inner.list(chat).await;
            self.lists.fetch_add(1, Ordering::SeqCst);
            // Read, but answered only once the gate opens.
            self.gate
                .acquire()
                .await
                .map_err(|_| StoreError::ThreadGone("gate"))?
                .forget();
            metas
        }
        async fn online_up(&self, user: &str) -> Result<bool, StoreError> {
            self.inner.online_up(user).await
        }
        async fn online_down(&self, user: &str) -> Result<bool, StoreError> {
            self.inner.online_down(user).await
        }
        async fn sweep(&self, own: bool) -> Result<crate::store::roster::Departures, StoreError> {
            self.inner.sweep(own).await
        }
        async fn registered(&self) -> Result<bool, StoreError> {
            self.inner.registered().await
        }
        async fn restore(
            &self,
            metas: &[(String, PresenceMeta)],
            online: &[String],
        ) -> Result<(), StoreError> {
            self.inner.restore(metas, online).await
        }
        fn node_ttl(&self) -> Duration {
            self.inner.node_ttl()
        }
    }

    fn users_in(state: &Payload) -> Vec<String> {
        let v: serde_json::Value = state.as_json().unwrap().parse().unwrap();
        v.as_object().unwrap().keys().cloned().collect()
    }

    /// Joiners waiting for one chat's state together share one roster read, and none is
    /// served by a read that began before it asked (it would miss its own meta).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn joiners_share_one_roster_read_begun_after_they_asked() {
        let redis = plume_redis::test_server::RedisServer::start();
        let config = plume_redis::RedisConfig {
            url: redis.url(),
            node_id: "n1".into(),
            ..plume_redis::RedisConfig::default()
        };
        let cluster =
            plume_redis::Cluster::connect(&config, Arc::new(plume_channels::LocalPubSub::new()))
                .await
                .unwrap();
        let chat_config = ChatConfig::default();
        let mut stores =
            crate::store::redis::stores(cluster.state.clone(), chat_config.retention());
        let roster = Arc::new(GatedRoster {
            inner: crate::store::roster::RedisRoster::new(cluster.state.clone()),
            gate: tokio::sync::Semaphore::new(0),
            lists: AtomicU64::new(0),
        });
        stores.roster = Some(roster.clone());
        // Made off the runtime, so it starts no sweeps: the first one would take the records
        // this test writes for those of an earlier process of node n1.
        let pubsub = cluster.pubsub.clone();
        let tracker = std::thread::spawn(move || Tracker::new(&chat_config, stores, pubsub))
            .join()
            .unwrap();
        let meta = |user: &str| PresenceMeta {
            user: user.into(),
            phx_ref: format!("ref-{user}"),
            device_unique_id: format!("dev-{user}"),
            online_at: 1,
        };
        let waiting = |n: usize| {
            let tracker = tracker.clone();
            async move {
                for _ in 0..500 {
                    if tracker.reads.lock().get("k").map_or(0, |e| e.waiting) == n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                panic!("never {n} waiting");
            }
        };
        roster.inner.track("k", &meta("first")).await.unwrap();
        let t = tracker.clone();
        let first = tokio::spawn(async move { t.state("k").await });
        waiting(1).await;
        while roster.lists.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Two more join while the first read is under way: it cannot serve them.
        roster.inner.track("k", &meta("late")).await.unwrap();
        let later: Vec<_> = (0..2)
            .map(|_| {
                let t = tracker.clone();
                tokio::spawn(async move { t.state("k").await })
            })
            .collect();
        waiting(3).await;
        roster.gate.add_permits(10);
        assert_eq!(users_in(&first.await.unwrap().unwrap()), ["first"]);
        for joiner in later {
            assert_eq!(users_in(&joiner.await.unwrap().unwrap()), ["first", "late"]);
        }
        assert_eq!(
            roster.lists.load(Ordering::SeqCst),
            2,
            "one read each, not three"
        );
        // Nobody waits now: nothing is kept, and the next joiner reads afresh.
        assert!(tracker.reads.lock().is_empty());
        tracker.state("k").await.unwrap();
        assert_eq!(roster.lists.load(Ordering::SeqCst), 3);
    }
}
