//! [`RedisState`]: the shared state of a cluster in Redis. The chat service's store traits
//! are implemented on top of these operations (in plume-chat), which keeps this crate free of
//! application types.
//!
//! Keys (every id is used verbatim; where a key holds several ids they are length-prefixed so
//! no id can forge another key):
//!
//! | key | type | what |
//! |-----|------|------|
//! | `plume:members:{chat}` | set | members of a chat |
//! | `plume:idem:{len}:{user}:{len}:{chat}:{ref}` | string, with expiry | the first result of a send |
//! | `plume:pending:{user}` | list | pending notifications, oldest first (JSON) |
//! | `plume:presence:{user}` | hash `{node}\|{target}` -> count | sockets of the user per node and target |
//! | `plume:node-users:{node}` | set | users with presence records on a node (for cleanup) |
//! | `plume:nodes` | sorted set node -> expiry (ms, Redis clock) | live nodes |
//!
//! Presence records are per node and count only while the node is alive: each node refreshes
//! its expiry in `plume:nodes` every third of the TTL. A query ignores records of nodes whose
//! expiry has passed, so a crashed node's users stop counting as connected within the TTL
//! (default 15 s); live nodes also sweep the dead node's records.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, RedisError, Script};

/// A Redis operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("redis: {0}")]
pub struct StateError(pub String);

impl From<RedisError> for StateError {
    fn from(err: RedisError) -> Self {
        StateError(err.to_string())
    }
}

type Result<T> = std::result::Result<T, StateError>;

const NODES: &str = "plume:nodes";

fn members_key(chat: &str) -> String {
    format!("plume:members:{chat}")
}

fn idem_key(user: &str, chat: &str, mobile_ref_id: &str) -> String {
    format!(
        "plume:idem:{}:{user}:{}:{chat}:{mobile_ref_id}",
        user.len(),
        chat.len()
    )
}

fn pending_key(user: &str) -> String {
    format!("plume:pending:{user}")
}

fn presence_key(user: &str) -> String {
    format!("plume:presence:{user}")
}

fn node_users_key(node: &str) -> String {
    format!("plume:node-users:{node}")
}

/// For each presence hash (KEYS[2..]) and each target (ARGV), `1` when a live node has a
/// positive count for it: the answers for every user and target in one round trip, row by
/// row. KEYS[1]: the nodes zset.
const PRESENT_MANY_LUA: &str = r"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local alive = {}
local function live(node)
  local known = alive[node]
  if known == nil then
    local expiry = redis.call('ZSCORE', KEYS[1], node)
    known = (expiry and tonumber(expiry) >= now_ms) and true or false
    alive[node] = known
  end
  return known
end
local out = {}
for k = 2, #KEYS do
  local found = {}
  local fields = redis.call('HGETALL', KEYS[k])
  for i = 1, #fields, 2 do
    local f = fields[i]
    local sep = string.find(f, '|', 1, true)
    if sep and tonumber(fields[i + 1]) > 0 then
      local target = string.sub(f, sep + 1)
      if not found[target] and live(string.sub(f, 1, sep - 1)) then
        found[target] = true
      end
    end
  end
  for a = 1, #ARGV do
    out[#out + 1] = found[ARGV[a]] and 1 or 0
  end
end
return out
";

/// Decrements a presence count and deletes it at zero. KEYS: presence hash. ARGV: field.
const LEAVE_LUA: &str = r"
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return n
";

/// Refreshes this node's expiry and returns the nodes that have expired (removing them from
/// the live set). KEYS: nodes zset. ARGV: node, ttl ms.
const HEARTBEAT_LUA: &str = r"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now_ms)
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now_ms)
end
return dead
";

/// Removes every presence record of a node. KEYS: node-users set. ARGV: node.
const CLEAR_NODE_LUA: &str = r"
local prefix = ARGV[1] .. '|'
local users = redis.call('SMEMBERS', KEYS[1])
for _, user in ipairs(users) do
  local key = 'plume:presence:' .. user
  local fields = redis.call('HKEYS', key)
  for _, f in ipairs(fields) do
    if string.sub(f, 1, #prefix) == prefix then
      redis.call('HDEL', key, f)
    end
  end
end
redis.call('DEL', KEYS[1])
return #users
";

static PRESENT_MANY: LazyLock<Script> = LazyLock::new(|| Script::new(PRESENT_MANY_LUA));
static LEAVE: LazyLock<Script> = LazyLock::new(|| Script::new(LEAVE_LUA));

/// Shared cluster state in Redis.
#[derive(Clone)]
pub struct RedisState {
    conn: ConnectionManager,
    node: String,
    node_ttl: Duration,
}

impl RedisState {
    pub(crate) fn new(conn: ConnectionManager, node: String, node_ttl: Duration) -> RedisState {
        RedisState {
            conn,
            node,
            node_ttl,
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Runs a command, retrying once if the connection turned out to be dead (after a Redis
    /// restart the first command on the old connection fails before reaching Redis; the
    /// connection manager reconnects for the retry).
    async fn run<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match op(self.conn.clone()).await {
            Err(err) if err.is_connection_dropped() || err.is_io_error() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(op(self.conn.clone()).await?)
            }
            other => Ok(other?),
        }
    }

    // Membership.

    /// Adds a member.
    pub async fn add_member(&self, chat: &str, user: &str) -> Result<()> {
        let key = members_key(chat);
        let _: i64 = self
            .run(|mut c| {
                let key = key.clone();
                async move { c.sadd(key, user).await }
            })
            .await?;
        Ok(())
    }

    /// Removes a member; true if they were one.
    pub async fn remove_member(&self, chat: &str, user: &str) -> Result<bool> {
        let key = members_key(chat);
        let n: i64 = self
            .run(|mut c| {
                let key = key.clone();
                async move { c.srem(key, user).await }
            })
            .await?;
        Ok(n > 0)
    }

    /// Whether `user` is a member.
    pub async fn is_member(&self, chat: &str, user: &str) -> Result<bool> {
        let key = members_key(chat);
        self.run(|mut c| {
            let key = key.clone();
            async move { c.sismember(key, user).await }
        })
        .await
    }

    /// All members, sorted.
    pub async fn members(&self, chat: &str) -> Result<Vec<String>> {
        let key = members_key(chat);
        let mut members: Vec<String> = self
            .run(|mut c| {
                let key = key.clone();
                async move { c.smembers(key).await }
            })
            .await?;
        members.sort();
        Ok(members)
    }

    // Idempotency.

    /// Atomically stores `value` for the send key unless one is stored; returns the stored
    /// value when there was one (`SET NX GET PX`).
    pub async fn claim_send(
        &self,
        user: &str,
        chat: &str,
        mobile_ref_id: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(idem_key(user, chat, mobile_ref_id))
            .arg(value)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        // SET NX is safe to retry: a second attempt cannot overwrite the first.
        self.run(|mut c| {
            let cmd = cmd.clone();
            async move { cmd.query_async::<Option<String>>(&mut c).await }
        })
        .await
    }

    /// Forgets a send key.
    pub async fn release_send(&self, user: &str, chat: &str, mobile_ref_id: &str) -> Result<()> {
        let key = idem_key(user, chat, mobile_ref_id);
        let _: i64 = self
            .run(|mut c| {
                let key = key.clone();
                async move { c.del(key).await }
            })
            .await?;
        Ok(())
    }

    // Pending notifications.

    /// Appends to a user's pending list, keeping the newest `limit`; returns how many were
    /// dropped. One transaction.
    pub async fn push_pending(&self, user: &str, item: &str, limit: usize) -> Result<usize> {
        let key = pending_key(user);
        let limit = limit.max(1) as i64;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .rpush(&key, item)
            .ltrim(&key, -(limit as isize), -1)
            .ignore();
        let (len,): (i64,) = self
            .run(|mut c| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok((len - limit).max(0) as usize)
    }

    /// Removes and returns a user's whole pending list, oldest first. One transaction, so
    /// two concurrent takers never get the same items.
    pub async fn take_pending(&self, user: &str) -> Result<Vec<String>> {
        let key = pending_key(user);
        let mut pipe = redis::pipe();
        pipe.atomic().lrange(&key, 0, -1).del(&key).ignore();
        let (items,): (Vec<String>,) = self
            .run(|mut c| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok(items)
    }

    // Presence.

    fn field(&self, target: &str) -> String {
        format!("{}|{target}", self.node)
    }

    /// One more socket of `user` on this node for `target` (`chat:{id}`, `notifications`).
    pub async fn enter(&self, user: &str, target: &str) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.hincr(presence_key(user), self.field(target), 1)
            .ignore()
            .sadd(node_users_key(&self.node), user)
            .ignore();
        self.run(|mut c| {
            let pipe = pipe.clone();
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .await
    }

    /// One socket of `user` on this node left `target`.
    pub async fn leave(&self, user: &str, target: &str) -> Result<()> {
        let (key, field) = (presence_key(user), self.field(target));
        let _: i64 = self
            .run(|mut c| {
                let mut call = LEAVE.key(&key);
                call.arg(&field);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        Ok(())
    }

    /// Whether any live node has a socket of `user` on `target`.
    pub async fn present(&self, user: &str, target: &str) -> Result<bool> {
        let rows = self.present_many(&[user.to_owned()], &[target]).await?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .copied()
            .unwrap_or(false))
    }

    /// For every user, for every target, whether a live node has a socket of the user on the
    /// target; one round trip whatever the number of users (a chat message checks all its
    /// members at once).
    pub async fn present_many(&self, users: &[String], targets: &[&str]) -> Result<Vec<Vec<bool>>> {
        if users.is_empty() || targets.is_empty() {
            return Ok(vec![Vec::new(); users.len()]);
        }
        let keys: Vec<String> = users.iter().map(|u| presence_key(u)).collect();
        let flat: Vec<i64> = self
            .run(|mut c| {
                let mut call = PRESENT_MANY.key(NODES);
                for key in &keys {
                    call.key(key);
                }
                for target in targets {
                    call.arg(*target);
                }
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        if flat.len() != users.len() * targets.len() {
            return Err(StateError(format!(
                "presence script returned {} answers for {} questions",
                flat.len(),
                users.len() * targets.len()
            )));
        }
        Ok(flat
            .chunks(targets.len())
            .map(|row| row.iter().map(|v| *v == 1).collect())
            .collect())
    }

    /// Appends `item` to the pending lists of several users in one pipeline, keeping each
    /// list's newest `limit`; returns how many were dropped in total.
    pub async fn push_pending_many(
        &self,
        users: &[String],
        item: &str,
        limit: usize,
    ) -> Result<usize> {
        if users.is_empty() {
            return Ok(0);
        }
        let limit = limit.max(1);
        let mut pipe = redis::pipe();
        for user in users {
            let key = pending_key(user);
            pipe.rpush(&key, item)
                .ltrim(&key, -(limit as isize), -1)
                .ignore();
        }
        let lens: Vec<i64> = self
            .run(|mut c| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok(lens
            .iter()
            .map(|len| (*len - limit as i64).max(0) as usize)
            .sum())
    }

    /// Refreshes this node's liveness and sweeps the records of nodes that died.
    pub async fn heartbeat(&self) -> Result<()> {
        let mut c = self.conn.clone();
        let dead: Vec<String> = Script::new(HEARTBEAT_LUA)
            .key(NODES)
            .arg(&self.node)
            .arg(self.node_ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        for node in dead {
            let users = self.clear_node(&node).await?;
            tracing::info!(
                node,
                users,
                "swept presence of a node that stopped heartbeating"
            );
        }
        Ok(())
    }

    /// Removes every presence record of `node`; returns how many users had some.
    pub async fn clear_node(&self, node: &str) -> Result<i64> {
        let mut c = self.conn.clone();
        Ok(Script::new(CLEAR_NODE_LUA)
            .key(node_users_key(node))
            .arg(node)
            .invoke_async(&mut c)
            .await?)
    }

    /// Leaves the cluster: clears this node's records and its liveness entry.
    pub async fn depart(&self) -> Result<()> {
        self.clear_node(&self.node).await?;
        let mut c = self.conn.clone();
        let _: i64 = c.zrem(NODES, &self.node).await?;
        Ok(())
    }
}
