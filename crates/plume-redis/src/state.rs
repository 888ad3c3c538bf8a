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
//! | `plume:log:{chat}` | sorted set, score = seq | the chat's message log; members are `{seq}:{entry}` |
//! | `plume:seq:{chat}` | string | the chat's newest seq |
//! | `plume:epoch:{chat}` | string | the chat's log epoch (decimal u64) |
//! | `plume:idem:{len}:{user}:{len}:{chat}:{ref}` | hash `message_id`, `seq`, `ts`, `delivered`, with expiry | the first result of a send |
//! | `plume:pending:{user}` | sorted set, score = id | pending items (JSON), oldest first |
//! | `plume:pending-bytes:{user}` | string | bytes of the user's pending items (for the byte limit) |
//! | `plume:pending-id` | string | the counter pending ids come from |
//! | `plume:reads:{user}` | hash chat -> seq | the user's read position per chat (never moves back) |
//! | `plume:presence:{user}` | hash `{node}\|{target}\|{socket}` -> 1 | sockets of the user per node and target |
//! | `plume:node-users:{node}` | set | users with presence records on a node (for cleanup) |
//! | `plume:nodes` | sorted set node -> expiry (ms, Redis clock) | live nodes |
//!
//! A chat's log, seq and epoch keys expire together `history_ttl` after its last message,
//! and the log is trimmed to `history_limit` entries on every append; within an active chat,
//! age is not trimmed entry by entry (approximate, unlike the embedded store). When the keys
//! are gone (expired, or Redis lost its data) the next append or head read makes a new epoch.
//!
//! Every script and command here is safe to run twice (the command runner retries once on a
//! dead connection): an append recognises its own earlier attempt by its message id, a
//! pending item is stored once per user, and presence records are one field per socket.
//!
//! Presence records are per node and count only while the node is alive: each node refreshes
//! its expiry in `plume:nodes` every third of the TTL. A query ignores records of nodes whose
//! expiry has passed, so a crashed node's users stop counting as connected within the TTL
//! (default 15 s); live nodes also sweep the dead node's records.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, RedisError, Script};

/// A Redis operation failed. `op` names the [`RedisState`] method (`append`, `log_head`,
/// `presence_enter`, …); the message includes the cause's text, and `source()` reaches the
/// [`RedisError`] where there is one.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The command did not get an answer, or Redis answered with an error: connection
    /// refused or dropped, the command timeout (`redis.command_timeout`) passed
    /// ([`StateError::is_timeout`]), a script error, a reply of the wrong type.
    #[error("redis {op}: {source}")]
    Command {
        /// The operation.
        op: &'static str,
        /// The client's error.
        #[source]
        source: RedisError,
    },
    /// Redis answered, but not with what the operation's script or command returns: a
    /// value of the wrong shape, or a stored value that is not a number.
    #[error("redis {op}: unexpected reply: {detail}")]
    Reply {
        /// The operation.
        op: &'static str,
        /// What was wrong with it.
        detail: String,
        /// The conversion error, when a value could not be converted.
        #[source]
        source: Option<redis::ParsingError>,
    },
}

impl StateError {
    /// A `map_err` adapter: the command of `op` failed.
    pub fn command(op: &'static str) -> impl FnOnce(RedisError) -> StateError {
        move |source| StateError::Command { op, source }
    }

    /// A `map_err` adapter: a value of `op`'s reply (`what`) could not be converted.
    pub fn parse(
        op: &'static str,
        what: &'static str,
    ) -> impl FnOnce(redis::ParsingError) -> StateError {
        move |source| StateError::Reply {
            op,
            detail: what.to_owned(),
            source: Some(source),
        }
    }

    /// `op`'s reply had the wrong shape.
    pub fn reply(op: &'static str, detail: String) -> StateError {
        StateError::Reply {
            op,
            detail,
            source: None,
        }
    }

    /// Whether the command timed out (no answer within `redis.command_timeout`): it may
    /// still have run.
    pub fn is_timeout(&self) -> bool {
        matches!(self, StateError::Command { source, .. } if source.is_timeout())
    }
}

pub(crate) type Result<T> = std::result::Result<T, StateError>;

pub(crate) const NODES: &str = "plume:nodes";

fn members_key(chat: &str) -> String {
    format!("plume:members:{chat}")
}

/// A user's chats, each scored by when the user was added (ms since the Unix epoch).
fn user_chats_key(user: &str) -> String {
    format!("plume:user-chats:{user}")
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

fn pending_bytes_key(user: &str) -> String {
    format!("plume:pending-bytes:{user}")
}

fn log_key(chat: &str) -> String {
    format!("plume:log:{chat}")
}

fn seq_key(chat: &str) -> String {
    format!("plume:seq:{chat}")
}

fn epoch_key(chat: &str) -> String {
    format!("plume:epoch:{chat}")
}

const PENDING_ID: &str = "plume:pending-id";

fn presence_key(user: &str) -> String {
    format!("plume:presence:{user}")
}

fn node_users_key(node: &str) -> String {
    format!("plume:node-users:{node}")
}

/// The users with a socket of this node on `target`: one set per node and target, so that a
/// send reads who is in its chat with one `SDIFF` over the live nodes' sets (the node id is
/// length-prefixed, as the Lua scripts spell it, so no two pairs share a key).
fn here_key(node: &str, target: &str) -> String {
    format!("plume:here:{}:{node}:{target}", node.len())
}

/// The targets a node has (or had) a `here` set for, so a dead node's sets can be swept.
fn node_targets_key(node: &str) -> String {
    format!("plume:node-targets:{node}")
}

/// Lua prelude of every script that asks whether a node is alive: `live(node)` is true while
/// the node's expiry in KEYS[1] (`plume:nodes`) has not passed (Redis clock), cached per run.
pub(crate) const LIVE_LUA: &str = r"
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
";

/// `body` after [`LIVE_LUA`], as one script.
pub(crate) fn with_live(body: &str) -> Script {
    Script::new(&format!("{LIVE_LUA}{body}"))
}

/// For each presence hash (KEYS[2..]) and each target (ARGV), `1` when a live node has a
/// positive count for it: the answers for every user and target in one round trip, row by
/// row. KEYS[1]: the nodes zset. (After [`LIVE_LUA`].)
const PRESENT_MANY_LUA: &str = r"
local out = {}
for k = 2, #KEYS do
  local found = {}
  local fields = redis.call('HGETALL', KEYS[k])
  for i = 1, #fields, 2 do
    local f = fields[i]
    local sep = string.find(f, '|', 1, true)
    local last = string.find(f, '|[^|]*$')
    if sep and last and last > sep and tonumber(fields[i + 1]) > 0 then
      local target = string.sub(f, sep + 1, last - 1)
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

/// Appends a message unless its send key is known. KEYS: idem hash, seq, log, epoch, and
/// optionally the chat's members set. ARGV: message id, ts ms, entry (JSON), limit,
/// idempotency ttl ms, log ttl ms, new epoch, sender. Returns {kind, message_id, seq, ts,
/// delivered, log entry or false, epoch}; kind is `new`, `own` (this very draft was
/// appended before: a re-run after a lost reply) or `retry`; or {`not_member`} when the
/// members set is given and the sender is not in it.
const APPEND_LUA: &str = r"
if KEYS[5] and redis.call('SISMEMBER', KEYS[5], ARGV[8]) == 0 then
  return {'not_member'}
end
local epoch = redis.call('GET', KEYS[4])
local found = redis.call('HMGET', KEYS[1], 'message_id', 'seq', 'ts', 'delivered')
if found[1] then
  local entry = redis.call('ZRANGEBYSCORE', KEYS[3], found[2], found[2])
  local kind = (found[1] == ARGV[1]) and 'own' or 'retry'
  return {kind, found[1], found[2], found[3], found[4], entry[1] or false, epoch or '0'}
end
if not epoch then
  epoch = ARGV[7]
end
local seq = redis.call('INCR', KEYS[2])
local entry = seq .. ':' .. ARGV[3]
redis.call('ZADD', KEYS[3], seq, entry)
redis.call('HSET', KEYS[1], 'message_id', ARGV[1], 'seq', seq, 'ts', ARGV[2], 'delivered', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local limit = tonumber(ARGV[4])
if seq > limit then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', seq - limit)
end
redis.call('SET', KEYS[4], epoch, 'PX', ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return {'new', ARGV[1], seq, ARGV[2], '0', entry, epoch}
";

/// The head of a chat's log, making its epoch if it has none. KEYS: seq, epoch, log. ARGV:
/// new epoch, log ttl ms. Returns {epoch, last seq, oldest kept seq or false}.
const HEAD_LUA: &str = r"
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch, 'PX', ARGV[2])
end
local last = redis.call('GET', KEYS[1]) or '0'
local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
return {epoch, last, first[2] or false}
";

/// Lua prelude of the scripts that store pending items: `push_pending(counter, set, bytes,
/// item, limit, budget)` stores `item` once in a user's pending `set` (ids from `counter`),
/// keeps the newest `limit` items and, beyond the newest, no more than `budget` bytes (kept in
/// `bytes`); returns how many older items it dropped.
const PENDING_LUA: &str = r"
local function push_pending(counter, set, bytes, item, limit, budget)
  if redis.call('ZSCORE', set, item) then
    return 0
  end
  local dropped = 0
  local id = redis.call('INCR', counter)
  redis.call('ZADD', set, id, item)
  local held = redis.call('INCRBY', bytes, #item)
  local n = redis.call('ZCARD', set)
  while n > 1 and (n > limit or held > budget) do
    local oldest = redis.call('ZPOPMIN', set)
    held = redis.call('DECRBY', bytes, #oldest[1])
    n = n - 1
    dropped = dropped + 1
  end
  if held < 0 then redis.call('SET', bytes, 0) end
  return dropped
end
";

/// Stores a pending item for several users, once each. KEYS[1]: the id counter, then per
/// user two keys: the pending set and its byte counter. ARGV: item, count limit, byte limit.
/// Returns how many older items were dropped. (After [`PENDING_LUA`].)
const PUSH_PENDING_LUA: &str = r"
local limit = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local dropped = 0
for i = 2, #KEYS, 2 do
  dropped = dropped + push_pending(KEYS[1], KEYS[i], KEYS[i + 1], ARGV[1], limit, budget)
end
return dropped
";

/// The step of a chat send after its broadcast, in one script whatever the chat's size:
/// the members with no socket in the chat on any live node (one `SDIFF` of the members
/// against the live nodes' `here` sets, so a chat whose members are all in it costs no work
/// per member in Lua), each of them but the sender gets the item pending, and those with a
/// notifications topic joined on a live node are returned for a live push; the send key is
/// marked delivered. KEYS: nodes zset, members set, pending id counter, send key hash. ARGV:
/// chat target, sender, item, count limit, byte limit. Returns {dropped, {live users}}.
/// (After [`PENDING_LUA`].)
const ROUTE_LUA: &str = r"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], now_ms, '+inf')
local function here(node, target)
  return 'plume:here:' .. #node .. ':' .. node .. ':' .. target
end
local sets = {KEYS[2]}
for _, node in ipairs(nodes) do
  sets[#sets + 1] = here(node, ARGV[1])
end
local absent = redis.call('SDIFF', unpack(sets))
local limit = tonumber(ARGV[4])
local budget = tonumber(ARGV[5])
local dropped = 0
local live = {}
for _, user in ipairs(absent) do
  if user ~= ARGV[2] then
    dropped = dropped + push_pending(KEYS[3], 'plume:pending:' .. user,
      'plume:pending-bytes:' .. user, ARGV[3], limit, budget)
    for _, node in ipairs(nodes) do
      if redis.call('SISMEMBER', here(node, 'notifications'), user) == 1 then
        live[#live + 1] = user
        break
      end
    end
  end
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HSET', KEYS[4], 'delivered', 1)
end
return {dropped, live}
";

/// A socket left a target: its presence field goes, and the user leaves the node's `here`
/// set of the target unless another of their sockets on this node is still on it. KEYS:
/// presence hash, here set. ARGV: field, field prefix (`{node}|{target}|`), user.
const LEAVE_LUA: &str = r"
redis.call('HDEL', KEYS[1], ARGV[1])
local prefix = ARGV[2]
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #prefix) == prefix and string.find(string.sub(f, #prefix + 1), '^%d+$') then
    return 0
  end
end
redis.call('SREM', KEYS[2], ARGV[3])
return 1
";

/// Removes one pending item of a user and gives its bytes back. KEYS: set, byte counter.
/// ARGV: item.
const REMOVE_PENDING_ITEM_LUA: &str = r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('DECRBY', KEYS[2], #ARGV[1])
end
if redis.call('ZCARD', KEYS[1]) == 0 or tonumber(redis.call('GET', KEYS[2]) or '0') < 0 then
  redis.call('DEL', KEYS[2])
end
return 0
";

/// Removes a user's pending items with id up to ARGV[1] and gives their bytes back. KEYS:
/// set, byte counter.
const REMOVE_PENDING_LUA: &str = r"
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #gone > 0 then
  local size = 0
  for _, item in ipairs(gone) do size = size + #item end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
  redis.call('DECRBY', KEYS[2], size)
end
if redis.call('ZCARD', KEYS[1]) == 0 or tonumber(redis.call('GET', KEYS[2]) or '0') < 0 then
  redis.call('DEL', KEYS[2])
end
return #gone
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

/// Removes every presence record of a node, and its `here` sets. KEYS: node-users set,
/// node-targets set. ARGV: node.
const CLEAR_NODE_LUA: &str = r"
for _, target in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('DEL', 'plume:here:' .. #ARGV[1] .. ':' .. ARGV[1] .. ':' .. target)
end
redis.call('DEL', KEYS[2])
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

static PRESENT_MANY: LazyLock<Script> = LazyLock::new(|| with_live(PRESENT_MANY_LUA));
static APPEND: LazyLock<Script> = LazyLock::new(|| Script::new(APPEND_LUA));
static HEAD: LazyLock<Script> = LazyLock::new(|| Script::new(HEAD_LUA));
static MARK_DELIVERED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 1 then \
         return redis.call('HSET', KEYS[1], 'delivered', 1) end return 0",
    )
});
static MARK_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') \
         local new = tonumber(ARGV[2]) \
         if new > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return new end \
         return cur",
    )
});
static PUSH_PENDING: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{PENDING_LUA}{PUSH_PENDING_LUA}")));
static ROUTE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{PENDING_LUA}{ROUTE_LUA}")));
static LEAVE: LazyLock<Script> = LazyLock::new(|| Script::new(LEAVE_LUA));
static CLEAR_NODE: LazyLock<Script> = LazyLock::new(|| Script::new(CLEAR_NODE_LUA));
static REMOVE_PENDING_ITEM: LazyLock<Script> =
    LazyLock::new(|| Script::new(REMOVE_PENDING_ITEM_LUA));
static REMOVE_PENDING: LazyLock<Script> = LazyLock::new(|| Script::new(REMOVE_PENDING_LUA));

/// The keys of the append script, in its order.
fn append_keys(a: &AppendArgs<'_>) -> Vec<String> {
    let mut keys = vec![
        idem_key(a.user, a.chat, a.mobile_ref_id),
        seq_key(a.chat),
        log_key(a.chat),
        epoch_key(a.chat),
    ];
    if a.require_member {
        keys.push(members_key(a.chat));
    }
    keys
}

/// The append script's arguments, in its order (a tuple writes one argument per field).
fn append_argv<'a>(a: &AppendArgs<'a>) -> (&'a str, i64, &'a str, u64, u64, u64, String, &'a str) {
    (
        a.message_id,
        a.ts_ms,
        a.entry,
        a.limit.max(1) as u64,
        millis(a.idempotency_ttl),
        millis(a.log_ttl),
        a.new_epoch.to_string(),
        a.user,
    )
}

/// Reads the append script's answer.
fn append_reply(reply: &[redis::Value]) -> Result<AppendReply> {
    if let [redis::Value::BulkString(only)] = reply
        && only.as_slice() == b"not_member"
    {
        return Ok(AppendReply {
            kind: AppendKind::NotMember,
            message_id: String::new(),
            seq: 0,
            ts_ms: 0,
            delivered: false,
            entry: None,
            epoch: 0,
        });
    }
    let [kind, id, seq, ts, delivered, entry, epoch] = reply else {
        return Err(StateError::reply(
            "append",
            format!("{} values, not 7", reply.len()),
        ));
    };
    let kind: String =
        redis::from_redis_value(kind.clone()).map_err(StateError::parse("append", "kind"))?;
    let kind = match kind.as_str() {
        "new" => AppendKind::New,
        "own" => AppendKind::Own,
        _ => AppendKind::Retry,
    };
    let entry = match entry {
        redis::Value::Nil | redis::Value::Boolean(false) | redis::Value::Int(0) => None,
        v => {
            Some(redis::from_redis_value(v.clone()).map_err(StateError::parse("append", "entry"))?)
        }
    };
    Ok(AppendReply {
        kind,
        message_id: redis::from_redis_value(id.clone())
            .map_err(StateError::parse("append", "message id"))?,
        seq: parse_num("append", seq, "seq")?,
        ts_ms: parse_num("append", ts, "ts")?,
        delivered: parse_num::<i64>("append", delivered, "delivered")? != 0,
        entry,
        epoch: parse_num("append", epoch, "epoch")?,
    })
}

/// What kind of answer an append got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendKind {
    /// Appended now.
    New,
    /// Appended by an earlier run of this same append (same message id): treat as new.
    Own,
    /// The send key was used by an earlier send: nothing appended.
    Retry,
    /// The sender is not a member (asked with [`AppendArgs::require_member`]): nothing
    /// appended, and the other fields are empty.
    NotMember,
}

/// The answer of [`RedisState::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendReply {
    /// New, own or retry.
    pub kind: AppendKind,
    /// The message id of the (first) send.
    pub message_id: String,
    /// Its seq.
    pub seq: u64,
    /// Its timestamp (ms).
    pub ts_ms: i64,
    /// Whether its delivery was recorded as finished.
    pub delivered: bool,
    /// Its log entry (`{seq}:{entry}`), if the log still has it.
    pub entry: Option<String>,
    /// The chat's log epoch.
    pub epoch: u64,
}

/// The head of a chat's log in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHeadReply {
    /// The epoch.
    pub epoch: u64,
    /// Newest seq (0: none).
    pub last_seq: u64,
    /// Oldest kept seq, if any is kept.
    pub first_seq: Option<u64>,
}

/// What one append carries.
#[derive(Debug, Clone, Copy)]
pub struct AppendArgs<'a> {
    /// The sender.
    pub user: &'a str,
    /// The chat.
    pub chat: &'a str,
    /// The client's reference.
    pub mobile_ref_id: &'a str,
    /// The new message's id.
    pub message_id: &'a str,
    /// Its timestamp (ms).
    pub ts_ms: i64,
    /// Its log entry (stored after `{seq}:`).
    pub entry: &'a str,
    /// Entries kept per chat.
    pub limit: usize,
    /// How long the send key is kept.
    pub idempotency_ttl: Duration,
    /// How long the log lives after its last message.
    pub log_ttl: Duration,
    /// The epoch to use if the chat has none.
    pub new_epoch: u64,
    /// Append only if `user` is a member of `chat` (checked in the same script).
    pub require_member: bool,
}

/// The answer of [`RedisState::route`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteReply {
    /// Members not in the chat with their notifications topic joined somewhere (each got
    /// the item pending too).
    pub live: Vec<String>,
    /// Older pending items dropped to keep the limits.
    pub dropped: usize,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn parse_num<T: std::str::FromStr>(
    op: &'static str,
    v: &redis::Value,
    what: &'static str,
) -> Result<T> {
    let text: String = redis::from_redis_value(v.clone()).map_err(StateError::parse(op, what))?;
    text.parse()
        .map_err(|_| StateError::reply(op, format!("{what} is not a number: {text}")))
}

/// Shared cluster state in Redis.
#[derive(Clone)]
pub struct RedisState {
    pub(crate) conn: ConnectionManager,
    pub(crate) node: String,
    pub(crate) node_ttl: Duration,
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

    /// How long this node counts as alive after a heartbeat.
    pub fn node_ttl(&self) -> Duration {
        self.node_ttl
    }

    /// Runs a command, retrying once if the connection turned out to be dead (after a Redis
    /// restart the first command on the old connection fails before reaching Redis; the
    /// connection manager reconnects for the retry).
    pub(crate) async fn run<T, F, Fut>(&self, op: &'static str, call: F) -> Result<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match call(self.conn.clone()).await {
            Err(err) if err.is_connection_dropped() || err.is_io_error() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                call(self.conn.clone())
                    .await
                    .map_err(StateError::command(op))
            }
            other => other.map_err(StateError::command(op)),
        }
    }

    // Membership.

    /// Adds a member (and the chat to the user's chats, added at `added_ms` unless it was
    /// there already), in one transaction.
    pub async fn add_member(&self, chat: &str, user: &str, added_ms: i64) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .sadd(members_key(chat), user)
            .ignore()
            .cmd("ZADD")
            .arg(user_chats_key(user))
            .arg("NX")
            .arg(added_ms)
            .arg(chat)
            .ignore();
        self.run("add_member", |mut c| {
            let pipe = pipe.clone();
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .await
    }

    /// Removes a member; true if they were one.
    pub async fn remove_member(&self, chat: &str, user: &str) -> Result<bool> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .srem(members_key(chat), user)
            .zrem(user_chats_key(user), chat)
            .ignore();
        let (n,): (i64,) = self
            .run("remove_member", |mut c| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok(n > 0)
    }

    /// The chats `user` is a member of, with when they were added.
    pub async fn chats_of(&self, user: &str) -> Result<Vec<(String, i64)>> {
        let key = user_chats_key(user);
        self.run("chats_of", |mut c| {
            let key = key.clone();
            async move { c.zrange_withscores(key, 0, -1).await }
        })
        .await
    }

    /// How many members each chat has, in one pipeline.
    pub async fn count_members(&self, chats: &[String]) -> Result<Vec<usize>> {
        if chats.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for chat in chats {
            pipe.scard(members_key(chat));
        }
        self.run("count_members", |mut c| {
            let pipe = pipe.clone();
            async move { pipe.query_async(&mut c).await }
        })
        .await
    }

    /// Whether `user` is a member.
    pub async fn is_member(&self, chat: &str, user: &str) -> Result<bool> {
        let key = members_key(chat);
        self.run("is_member", |mut c| {
            let key = key.clone();
            async move { c.sismember(key, user).await }
        })
        .await
    }

    /// All members, sorted.
    pub async fn members(&self, chat: &str) -> Result<Vec<String>> {
        let key = members_key(chat);
        let mut members: Vec<String> = self
            .run("members", |mut c| {
                let key = key.clone();
                async move { c.smembers(key).await }
            })
            .await?;
        members.sort();
        Ok(members)
    }

    // The message log.

    /// Appends a message to a chat's log unless its send key was used (one script, safe to
    /// run twice: a second run finds its own append and answers [`AppendKind::Own`]).
    pub async fn append(&self, a: &AppendArgs<'_>) -> Result<AppendReply> {
        let keys = append_keys(a);
        let reply: Vec<redis::Value> = self
            .run("append", |mut c| {
                let mut call = APPEND.prepare_invoke();
                for key in &keys {
                    call.key(key);
                }
                call.arg(append_argv(a));
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        append_reply(&reply)
    }

    /// Several appends in one round trip, run by Redis in the order given (one request of
    /// `EVALSHA`s), answered in that order. For a channel's burst of sends: their seqs follow
    /// the order they were sent in, which separate requests could not promise (two commands
    /// waiting for a reconnection go out in any order). The whole batch is sent again after a
    /// dead connection or a flushed script cache, and the order still holds: each append is
    /// safe to run twice, so those that ran before the failure keep their seqs (answered
    /// `Own`) and the rest follow them in order. (A flushed cache fails every append of the
    /// batch, unless another client loads the script while Redis is part-way through it.)
    pub async fn append_many(&self, batch: &[AppendArgs<'_>]) -> Result<Vec<AppendReply>> {
        match batch {
            [] => return Ok(Vec::new()),
            [only] => return Ok(vec![self.append(only).await?]),
            _ => {}
        }
        let mut pipe = redis::pipe();
        for a in batch {
            let keys = append_keys(a);
            let cmd = pipe.cmd("EVALSHA").arg(APPEND.get_hash()).arg(keys.len());
            for key in &keys {
                cmd.arg(key);
            }
            cmd.arg(append_argv(a));
        }
        let replies: Vec<Vec<redis::Value>> = self
            .run("append", |mut c| {
                let pipe = pipe.clone();
                async move {
                    match pipe.query_async(&mut c).await {
                        Err(err)
                            if err.kind()
                                == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                        {
                            APPEND.prepare_invoke().load_async(&mut c).await?;
                            pipe.query_async(&mut c).await
                        }
                        other => other,
                    }
                }
            })
            .await?;
        if replies.len() != batch.len() {
            return Err(StateError::reply(
                "append",
                format!("{} replies for {} appends", replies.len(), batch.len()),
            ));
        }
        replies.iter().map(|reply| append_reply(reply)).collect()
    }

    /// Records that a send's delivery finished (only while its key exists, so it keeps
    /// its expiry).
    pub async fn mark_delivered(&self, user: &str, chat: &str, mobile_ref_id: &str) -> Result<()> {
        let key = idem_key(user, chat, mobile_ref_id);
        let _: i64 = self
            .run("mark_delivered", |mut c| {
                let call = MARK_DELIVERED.key(&key);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        Ok(())
    }

    /// The step of a chat send after its broadcast, one script: the members of `chat` with
    /// no socket in it on a live node (an `SDIFF` of the members against the live nodes'
    /// `here` sets, so members in the chat cost no work per member), each but `user` gets
    /// `item` pending, those of them listening on their notifications topic are returned,
    /// and the send key is marked delivered.
    pub async fn route(
        &self,
        user: &str,
        chat: &str,
        mobile_ref_id: &str,
        item: &str,
        limit: usize,
        bytes: usize,
    ) -> Result<RouteReply> {
        let keys = [
            NODES.to_owned(),
            members_key(chat),
            PENDING_ID.to_owned(),
            idem_key(user, chat, mobile_ref_id),
        ];
        let target = format!("chat:{chat}");
        let (dropped, live): (i64, Vec<String>) = self
            .run("route", |mut c| {
                let mut call = ROUTE.prepare_invoke();
                for key in &keys {
                    call.key(key);
                }
                call.arg(&target)
                    .arg(user)
                    .arg(item)
                    .arg(limit.max(1) as u64)
                    .arg(
                        u64::try_from(bytes)
                            .unwrap_or(u64::MAX)
                            .min(i64::MAX as u64),
                    );
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        Ok(RouteReply {
            live,
            dropped: dropped.max(0) as usize,
        })
    }

    /// The head of a chat's log (making its epoch if it has none).
    pub async fn log_head(
        &self,
        chat: &str,
        log_ttl: Duration,
        new_epoch: u64,
    ) -> Result<LogHeadReply> {
        let keys = [seq_key(chat), epoch_key(chat), log_key(chat)];
        let reply: Vec<redis::Value> = self
            .run("log_head", |mut c| {
                let mut call = HEAD.prepare_invoke();
                for key in &keys {
                    call.key(key);
                }
                call.arg(new_epoch.to_string()).arg(millis(log_ttl));
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        let [epoch, last, first] = reply.as_slice() else {
            return Err(StateError::reply(
                "log_head",
                format!("{} values, not 3", reply.len()),
            ));
        };
        let first_seq = match first {
            redis::Value::Nil | redis::Value::Boolean(false) | redis::Value::Int(0) => None,
            v => Some(parse_num::<f64>("log_head", v, "first seq")? as u64),
        };
        Ok(LogHeadReply {
            epoch: parse_num("log_head", epoch, "epoch")?,
            last_seq: parse_num("log_head", last, "last seq")?,
            first_seq,
        })
    }

    /// Up to `limit` log entries with seq above `after`, oldest first.
    pub async fn log_after(&self, chat: &str, after: u64, limit: usize) -> Result<Vec<String>> {
        let key = log_key(chat);
        self.run("log_after", |mut c| {
            let key = key.clone();
            async move {
                redis::cmd("ZRANGE")
                    .arg(key)
                    .arg(format!("({after}"))
                    .arg("+inf")
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut c)
                    .await
            }
        })
        .await
    }

    /// The newest `limit` log entries with seq below `before` (all when `None`), newest first.
    pub async fn log_before(
        &self,
        chat: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let key = log_key(chat);
        let max = before.map_or_else(|| "+inf".to_owned(), |b| format!("({b}"));
        self.run("log_before", |mut c| {
            let (key, max) = (key.clone(), max.clone());
            async move {
                redis::cmd("ZRANGE")
                    .arg(key)
                    .arg(max)
                    .arg("-inf")
                    .arg("BYSCORE")
                    .arg("REV")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut c)
                    .await
            }
        })
        .await
    }

    /// The log entries at these positions (`None` where the log has none), in one pipeline.
    pub async fn log_get(&self, refs: &[(String, u64)]) -> Result<Vec<Option<String>>> {
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (chat, seq) in refs {
            pipe.cmd("ZRANGE")
                .arg(log_key(chat))
                .arg(*seq)
                .arg(*seq)
                .arg("BYSCORE");
        }
        let found: Vec<Vec<String>> = self
            .run("log_get", |mut c| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok(found.into_iter().map(|mut v| v.pop()).collect())
    }

    /// The newest log entry of each chat (`None` where the log has none), in one pipeline.
    pub async fn log_latest(&self, chats: &[String]) -> Result<Vec<Option<String>>> {
        if chats.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for chat in chats {
            pipe.cmd("ZRANGE").arg(log_key(chat)).arg(-1).arg(-1);
        }
        let found: Vec<Vec<String>> = self
            .run("log_latest", |mut c| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok(found.into_iter().map(|mut v| v.pop()).collect())
    }

    /// For each `(chat, after)`, up to `limit` log entries with seq above `after`, oldest
    /// first, in one pipeline.
    pub async fn log_after_many(
        &self,
        positions: &[(String, u64)],
        limit: usize,
    ) -> Result<Vec<Vec<String>>> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (chat, after) in positions {
            pipe.cmd("ZRANGE")
                .arg(log_key(chat))
                .arg(format!("({after}"))
                .arg("+inf")
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(limit);
        }
        self.run("log_after_many", |mut c| {
            let pipe = pipe.clone();
            async move { pipe.query_async(&mut c).await }
        })
        .await
    }

    // Read positions.

    /// Moves a user's read position in a chat up to `seq` (never back); returns where it is.
    pub async fn mark_read(&self, user: &str, chat: &str, seq: u64) -> Result<u64> {
        let key = format!("plume:reads:{user}");
        self.run("mark_read", |mut c| {
            let mut call = MARK_READ.key(&key);
            call.arg(chat).arg(seq);
            async move { call.invoke_async(&mut c).await }
        })
        .await
    }

    /// A user's read position in a chat (0: none).
    pub async fn read_position(&self, user: &str, chat: &str) -> Result<u64> {
        let key = format!("plume:reads:{user}");
        let v: Option<u64> = self
            .run("read_position", |mut c| {
                let key = key.clone();
                async move { c.hget(key, chat).await }
            })
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// A user's read positions in several chats (0: none), in one command.
    pub async fn read_positions(&self, user: &str, chats: &[String]) -> Result<Vec<u64>> {
        if chats.is_empty() {
            return Ok(Vec::new());
        }
        let key = format!("plume:reads:{user}");
        let v: Vec<Option<u64>> = self
            .run("read_positions", |mut c| {
                let key = key.clone();
                async move {
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg(chats)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(v.into_iter().map(|p| p.unwrap_or(0)).collect())
    }

    // Pending notifications.

    /// Stores `item` in the pending sets of several users (once each: storing it again is a
    /// no-op), keeping each set's newest `limit` and, beyond its newest, at most `bytes` bytes
    /// of items; returns how many were dropped in total.
    pub async fn push_pending_many(
        &self,
        users: &[String],
        item: &str,
        limit: usize,
        bytes: usize,
    ) -> Result<usize> {
        if users.is_empty() {
            return Ok(0);
        }
        let keys: Vec<(String, String)> = users
            .iter()
            .map(|u| (pending_key(u), pending_bytes_key(u)))
            .collect();
        let dropped: i64 = self
            .run("push_pending_many", |mut c| {
                let mut call = PUSH_PENDING.key(PENDING_ID);
                for (set, counter) in &keys {
                    call.key(set).key(counter);
                }
                call.arg(item).arg(limit.max(1) as u64).arg(
                    u64::try_from(bytes)
                        .unwrap_or(u64::MAX)
                        .min(i64::MAX as u64),
                );
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        Ok(dropped.max(0) as usize)
    }

    /// A user's pending items with their ids, oldest first.
    pub async fn list_pending(&self, user: &str) -> Result<Vec<(u64, String)>> {
        let key = pending_key(user);
        let items: Vec<(String, f64)> = self
            .run("list_pending", |mut c| {
                let key = key.clone();
                async move { c.zrange_withscores(key, 0, -1).await }
            })
            .await?;
        Ok(items
            .into_iter()
            .map(|(item, id)| (id as u64, item))
            .collect())
    }

    /// Removes one pending item of a user.
    pub async fn remove_pending_item(&self, user: &str, item: &str) -> Result<()> {
        self.pending_script("remove_pending_item", &REMOVE_PENDING_ITEM, user, item)
            .await
    }

    /// Removes a user's pending items with id up to `upto`.
    pub async fn remove_pending(&self, user: &str, upto: u64) -> Result<()> {
        self.pending_script("remove_pending", &REMOVE_PENDING, user, upto)
            .await
    }

    /// Runs a script over a user's pending set and its byte counter, with one argument.
    async fn pending_script<A: redis::ToRedisArgs + Sync>(
        &self,
        op: &'static str,
        script: &Script,
        user: &str,
        arg: A,
    ) -> Result<()> {
        let keys = [pending_key(user), pending_bytes_key(user)];
        let _: i64 = self
            .run(op, |mut c| {
                let mut call = script.key(&keys[0]);
                call.key(&keys[1]).arg(&arg);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        Ok(())
    }

    // Presence.

    fn field(&self, target: &str, socket: u64) -> String {
        format!("{}|{target}|{socket}", self.node)
    }

    /// Socket `socket` of `user` on this node is on `target` (`chat:{id}`, `notifications`).
    /// One field per socket, so running it twice changes nothing.
    pub async fn enter(&self, user: &str, target: &str, socket: u64) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(presence_key(user), self.field(target, socket), 1)
            .ignore()
            .sadd(node_users_key(&self.node), user)
            .ignore()
            .sadd(here_key(&self.node, target), user)
            .ignore()
            .sadd(node_targets_key(&self.node), target)
            .ignore();
        self.run("presence_enter", |mut c| {
            let pipe = pipe.clone();
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .await
    }

    /// Socket `socket` of `user` on this node left `target`.
    pub async fn leave(&self, user: &str, target: &str, socket: u64) -> Result<()> {
        let keys = [presence_key(user), here_key(&self.node, target)];
        let field = self.field(target, socket);
        let prefix = format!("{}|{target}|", self.node);
        let _: i64 = self
            .run("presence_leave", |mut c| {
                let mut call = LEAVE.key(&keys[0]);
                call.key(&keys[1]).arg(&field).arg(&prefix).arg(user);
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
            .run("present_many", |mut c| {
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
            return Err(StateError::reply(
                "present_many",
                format!(
                    "{} answers for {} questions",
                    flat.len(),
                    users.len() * targets.len()
                ),
            ));
        }
        Ok(flat
            .chunks(targets.len())
            .map(|row| row.iter().map(|v| *v == 1).collect())
            .collect())
    }

    /// Refreshes this node's liveness and sweeps the records of nodes that died.
    pub async fn heartbeat(&self) -> Result<()> {
        let mut c = self.conn.clone();
        let dead: Vec<String> = Script::new(HEARTBEAT_LUA)
            .key(NODES)
            .arg(&self.node)
            .arg(self.node_ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await
            .map_err(StateError::command("heartbeat"))?;
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
        CLEAR_NODE
            .key(node_users_key(node))
            .key(node_targets_key(node))
            .arg(node)
            .invoke_async(&mut c)
            .await
            .map_err(StateError::command("clear_node"))
    }

    /// Leaves the cluster: clears this node's records and its liveness entry.
    pub async fn depart(&self) -> Result<()> {
        self.clear_node(&self.node).await?;
        let mut c = self.conn.clone();
        let _: i64 = c
            .zrem(NODES, &self.node)
            .await
            .map_err(StateError::command("depart"))?;
        Ok(())
    }
}
