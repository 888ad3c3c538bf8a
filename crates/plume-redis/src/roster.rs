//! Cluster-wide rosters (Phoenix Presence on a topic) and online status, on [`RedisState`].
//!
//! Keys (ids verbatim, node ids never contain `|`):
//!
//! | key | type | what |
//! |-----|------|------|
//! | `plume:roster:{topic}` | hash `{node}\|{ref}` -> entry | one entry per tracked socket (opaque to this crate) |
//! | `plume:roster-topics:{node}` | set | topics where the node tracks something (for the sweep) |
//! | `plume:online:{user}` | hash node -> 1 | nodes where the user has a socket |
//! | `plume:online-users:{node}` | set | users with a socket on the node (for the sweep) |
//! | `plume:roster-nodes` | set | nodes that have records in any of the above |
//!
//! Like the socket presence in [`crate::state`], every record belongs to a node and counts
//! only while that node is alive in `plume:nodes`. [`RedisState::roster_sweep`] removes the
//! records of dead nodes atomically and hands them to exactly one caller (the script runs
//! once per dead node, whoever calls it), so that caller can announce the departures.
//! [`RedisState::roster_registered`] tells a node whether Redis still knows it (false after
//! Redis lost its data, or after the node was swept as dead while it was cut off); the node
//! then writes its records again with [`RedisState::roster_restore`].

use std::sync::LazyLock;

use redis::Script;

use crate::state::{LIVE_LUA, NODES, RedisState, Result, StateError};

const ROSTER_NODES: &str = "plume:roster-nodes";

fn roster_key(topic: &str) -> String {
    format!("plume:roster:{topic}")
}

fn roster_topics_key(node: &str) -> String {
    format!("plume:roster-topics:{node}")
}

fn online_key(user: &str) -> String {
    format!("plume:online:{user}")
}

fn online_users_key(node: &str) -> String {
    format!("plume:online-users:{node}")
}

/// Lua prelude after the shared [`LIVE_LUA`]: `others_live(key, me)` is true when a live
/// node other than `me` has a field in hash `key`.
const OTHERS_LIVE_LUA: &str = r"
local function others_live(key, me)
  for _, n in ipairs(redis.call('HKEYS', key)) do
    if n ~= me and live(n) then return true end
  end
  return false
end
";

/// The entries of live nodes in a roster. KEYS: nodes, roster.
const LIST_LUA: &str = r"
local out = {}
local f = redis.call('HGETALL', KEYS[2])
for i = 1, #f, 2 do
  local sep = string.find(f[i], '|', 1, true)
  if sep and live(string.sub(f[i], 1, sep - 1)) then
    out[#out + 1] = f[i + 1]
  end
end
return out
";

/// The user's first socket on this node: 1 when no other live node has one.
/// KEYS: nodes, online, online-users, roster-nodes. ARGV: node, user.
const ONLINE_UP_LUA: &str = r"
local first = not others_live(KEYS[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], 1)
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[1])
return first and 1 or 0
";

/// The user's last socket on this node is gone: 1 when no other live node has one.
/// KEYS: nodes, online, online-users. ARGV: node, user.
const ONLINE_DOWN_LUA: &str = r"
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[2])
if others_live(KEYS[2], ARGV[1]) then return 0 end
return 1
";

/// Removes the records of every dead node (and of ARGV[1], when given, alive or not).
/// Returns a flat list of triples: `t, topic, entry` for each roster entry removed,
/// `u, user, ''` for each user who has no live node left. KEYS: nodes, roster-nodes.
const SWEEP_LUA: &str = r"
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if node == ARGV[1] or not live(node) then
    local prefix = node .. '|'
    local tk = 'plume:roster-topics:' .. node
    for _, topic in ipairs(redis.call('SMEMBERS', tk)) do
      local rk = 'plume:roster:' .. topic
      local f = redis.call('HGETALL', rk)
      for i = 1, #f, 2 do
        if string.sub(f[i], 1, #prefix) == prefix then
          redis.call('HDEL', rk, f[i])
          out[#out + 1] = 't'
          out[#out + 1] = topic
          out[#out + 1] = f[i + 1]
        end
      end
    end
    redis.call('DEL', tk)
    local uk = 'plume:online-users:' .. node
    for _, user in ipairs(redis.call('SMEMBERS', uk)) do
      local ok = 'plume:online:' .. user
      redis.call('HDEL', ok, node)
      if not others_live(ok, node) then
        out[#out + 1] = 'u'
        out[#out + 1] = user
        out[#out + 1] = ''
      end
    end
    redis.call('DEL', uk)
    redis.call('SREM', KEYS[2], node)
  end
end
return out
";

fn with_live(body: &str) -> Script {
    Script::new(&format!("{LIVE_LUA}{OTHERS_LIVE_LUA}{body}"))
}

static LIST: LazyLock<Script> = LazyLock::new(|| with_live(LIST_LUA));
static ONLINE_UP: LazyLock<Script> = LazyLock::new(|| with_live(ONLINE_UP_LUA));
static ONLINE_DOWN: LazyLock<Script> = LazyLock::new(|| with_live(ONLINE_DOWN_LUA));
static SWEEP: LazyLock<Script> = LazyLock::new(|| with_live(SWEEP_LUA));

/// What [`RedisState::roster_sweep`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// `(topic, entry)` of every roster entry of a dead node.
    pub entries: Vec<(String, String)>,
    /// Users whose last live node was a dead one.
    pub offline: Vec<String>,
}

impl RedisState {
    fn roster_field(&self, reference: &str) -> String {
        format!("{}|{reference}", self.node)
    }

    /// Tracks `entry` under `reference` (unique per tracked socket) in `topic`'s roster, for
    /// this node. Idempotent.
    pub async fn roster_track(&self, topic: &str, reference: &str, entry: &str) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.hset(roster_key(topic), self.roster_field(reference), entry)
            .ignore()
            .sadd(roster_topics_key(&self.node), topic)
            .ignore()
            .sadd(ROSTER_NODES, &self.node)
            .ignore();
        self.run("roster_track", |mut c| {
            let pipe = pipe.clone();
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .await
    }

    /// Removes this node's entry `reference` from `topic`'s roster; `last` when it was this
    /// node's last entry there (the topic leaves the node's sweep list).
    pub async fn roster_untrack(&self, topic: &str, reference: &str, last: bool) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.hdel(roster_key(topic), self.roster_field(reference))
            .ignore();
        if last {
            pipe.srem(roster_topics_key(&self.node), topic).ignore();
        }
        self.run("roster_untrack", |mut c| {
            let pipe = pipe.clone();
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .await
    }

    /// The entries of `topic`'s roster held by live nodes, in no particular order.
    pub async fn roster_list(&self, topic: &str) -> Result<Vec<String>> {
        let key = roster_key(topic);
        self.run("roster_list", |mut c| {
            let mut call = LIST.key(NODES);
            call.key(&key);
            async move { call.invoke_async(&mut c).await }
        })
        .await
    }

    /// The user's first socket on this node: true when no other live node has one (the user
    /// just came online cluster-wide).
    pub async fn online_up(&self, user: &str) -> Result<bool> {
        let keys = [
            online_key(user),
            online_users_key(&self.node),
            ROSTER_NODES.to_owned(),
        ];
        let first: i64 = self
            .run("online_up", |mut c| {
                let mut call = ONLINE_UP.key(NODES);
                call.key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .arg(&self.node)
                    .arg(user);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        Ok(first == 1)
    }

    /// The user's last socket on this node went away: true when no other live node has one
    /// (the user went offline cluster-wide).
    pub async fn online_down(&self, user: &str) -> Result<bool> {
        let keys = [online_key(user), online_users_key(&self.node)];
        let last: i64 = self
            .run("online_down", |mut c| {
                let mut call = ONLINE_DOWN.key(NODES);
                call.key(&keys[0]).key(&keys[1]).arg(&self.node).arg(user);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        Ok(last == 1)
    }

    /// Removes the roster and online records of every node that stopped heartbeating, and
    /// returns them (to this caller only).
    pub async fn roster_sweep(&self) -> Result<Swept> {
        self.sweep_with("").await
    }

    /// Removes this node's own roster and online records (left by an earlier process with
    /// the same node id, which nobody would sweep since the id is alive again) along with
    /// those of dead nodes, and returns them.
    pub async fn roster_sweep_own(&self) -> Result<Swept> {
        self.sweep_with(&self.node).await
    }

    async fn sweep_with(&self, own: &str) -> Result<Swept> {
        let flat: Vec<String> = self
            .run("roster_sweep", |mut c| {
                let mut call = SWEEP.key(NODES);
                call.key(ROSTER_NODES).arg(own);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        if !flat.len().is_multiple_of(3) {
            return Err(StateError::reply(
                "roster_sweep",
                format!("{} values, not triples", flat.len()),
            ));
        }
        let mut swept = Swept::default();
        let mut it = flat.into_iter();
        while let (Some(kind), Some(a), Some(b)) = (it.next(), it.next(), it.next()) {
            match kind.as_str() {
                "t" => swept.entries.push((a, b)),
                _ => swept.offline.push(a),
            }
        }
        Ok(swept)
    }

    /// Whether Redis still lists this node as having records.
    pub async fn roster_registered(&self) -> Result<bool> {
        self.run("roster_registered", |mut c| async move {
            redis::cmd("SISMEMBER")
                .arg(ROSTER_NODES)
                .arg(&self.node)
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// Writes this node's records again (after Redis lost them): a heartbeat first, so no
    /// other node sweeps them as a dead node's, then every `(topic, reference, entry)` and
    /// every online user. The node is registered even with nothing to write.
    pub async fn roster_restore(
        &self,
        entries: &[(String, String, String)],
        online: &[String],
    ) -> Result<()> {
        self.heartbeat().await?;
        let mut pipe = redis::pipe();
        pipe.sadd(ROSTER_NODES, &self.node).ignore();
        for (topic, reference, entry) in entries {
            pipe.hset(roster_key(topic), self.roster_field(reference), entry)
                .ignore()
                .sadd(roster_topics_key(&self.node), topic)
                .ignore();
        }
        for user in online {
            pipe.hset(online_key(user), &self.node, 1)
                .ignore()
                .sadd(online_users_key(&self.node), user)
                .ignore();
        }
        self.run("roster_restore", |mut c| {
            let pipe = pipe.clone();
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .await
    }
}
