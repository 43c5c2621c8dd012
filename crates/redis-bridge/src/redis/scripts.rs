//! The Lua scripts that make each bus operation atomic in Redis. Redis runs one script
//! at a time, so within a room the order of PUBLISHes is the order of offsets
//! (DESIGN-NOTES.md section 1). Scripts are sent with EVALSHA and loaded on NOSCRIPT
//! (`redis::Script`), so a restarted Redis gets them back by itself.
//!
//! Envelopes: a room message's envelope is built by Rust without `offset`/`epoch` and
//! handed over in two byte strings (everything before the `msg` map's header, and the
//! map's fields) plus its field count; the publish script appends `offset` and `epoch`
//! and writes the new header. The application's `data` is never decoded in Lua (cmsgpack
//! would turn `{}` into `[]` and `1.0` into `1`). Member events, whose fields are all
//! strings, are built in Lua by `member_envelope`.
//!
//! On a Redis Cluster the same scripts SPUBLISH instead of PUBLISH (`Scripts::new`): a
//! room's channel carries the room's hash tag, so the script publishes from the shard
//! that runs it, to the slot of its keys. (Checked against Redis 7.0.15: SPUBLISH is
//! allowed in a script, and reaches the channel's SSUBSCRIBErs.)

use redis::Script;

/// Shared Lua helpers, prepended to the scripts that need them.
const HELPERS: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function member_envelope(node, kind, room, user)
  local p = cmsgpack.pack
  return '\131' .. p('v') .. p(1) .. p('node') .. p(node) .. p('msg') ..
    '\131' .. p('type') .. p(kind) .. p('room') .. p(room) .. p('user') .. p(user)
end
-- Removes expired presence entries (at most `max`), publishing member_left for every
-- user whose last connection that was. Returns how many entries were removed.
local function sweep(zset, users, channel, node, room, max)
  local expired = redis.call('ZRANGEBYSCORE', zset, '-inf', now_ms(), 'LIMIT', 0, max)
  for _, m in ipairs(expired) do
    redis.call('ZREM', zset, m)
    local user = string.match(m, '^([^\031]*)\031')
    if user then
      local n = redis.call('HINCRBY', users, user, -1)
      if n <= 0 then
        redis.call('HDEL', users, user)
        redis.call('PUBLISH', channel, member_envelope(node, 'member_left', room, user))
      end
    end
  end
  return #expired
end
"#;

/// Room publishes, a batch at a time (any rooms): for each message in order, dedupe,
/// next offset, history append, PUBLISH; then one expiry per touched room. One script
/// call for many messages is what keeps Redis from being the limit (a call costs far
/// more than the commands inside it).
///
/// KEYS, 4 per message: meta, history, room channel, dedupe (any key when it has none).
/// ARGV: history size, history ttl (ms), dedupe window (ms), envelope head (everything
/// before the `msg` map's header: the same for all of a node's messages), a fresh epoch
/// (for rooms whose history starts in this batch); then 4 per message: msg field count,
/// msg fields, volatile ('1'/'0'), has dedupe ('1'/'0').
/// Returns per message {duplicate (0/1), "<offset>:<epoch>"} (offset empty when volatile).
const PUBLISH: &str = r#"
local size, ttl, window, head, fresh = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local pack = cmsgpack.pack
local out = {}
-- per room in this batch: its epoch and last offset, read once and written back once
local rooms = {}
for i = 1, #KEYS / 4 do
  local k = 4 * (i - 1)
  local a = 5 + 4 * (i - 1)
  local meta, hist, chan, dedupe = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local has_dedupe = ARGV[a + 4] == '1'
  local st = rooms[meta]
  if not st then
    local e = redis.call('HMGET', meta, 'e', 's')
    st = {epoch = e[1] or nil, o = tonumber(e[2] or '0') or 0, hist = hist, dirty = false}
    rooms[meta] = st
  end
  local volatile = ARGV[a + 3] == '1'
  -- The result this message gets if it is new, known before anything is written.
  local offset, epoch = '', st.epoch or ''
  if not volatile then
    epoch = st.epoch or fresh
    offset = string.format('%d', st.o + 1)
  end
  local result = offset .. ':' .. epoch
  -- One call checks and claims the id (Redis >= 7.0): a repeat gets the first result.
  local prev = has_dedupe and redis.call('SET', dedupe, result, 'NX', 'GET', 'PX', window)
  if prev then
    out[i] = {1, prev}
  else
    local n = tonumber(ARGV[a + 1])
    local payload
    if volatile then
      payload = head .. string.char(128 + n) .. ARGV[a + 2]
    else
      if not st.epoch then
        -- a new history (first publish, or the old one was lost): new epoch, offsets from 1
        st.epoch = fresh
        st.o = 0
        redis.call('DEL', hist)
      end
      st.o = st.o + 1
      st.dirty = true
      st.tail = st.tail or (pack('epoch') .. pack(st.epoch))
      payload = head .. string.char(128 + n + 2) .. ARGV[a + 2] ..
        pack('offset') .. pack(st.o) .. st.tail
      redis.call('XADD', hist, 'MAXLEN', '~', size, offset .. '-0', 'd', payload)
    end
    redis.call('PUBLISH', chan, payload)
    out[i] = {0, result}
  end
end
for meta, st in pairs(rooms) do
  if st.dirty then
    redis.call('HSET', meta, 'e', st.epoch, 's', st.o)
    redis.call('PEXPIRE', meta, ttl)
    redis.call('PEXPIRE', st.hist, ttl)
  end
end
return out
"#;

/// Direct message: dedupe, PUBLISH.
///
/// KEYS: user channel, [dedupe]. ARGV: envelope, dedupe window (ms).
/// Returns 1 when it was a duplicate (nothing published), else 0.
const SEND: &str = r#"
if KEYS[2] then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
  redis.call('SET', KEYS[2], ':', 'PX', ARGV[2])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 0
"#;

/// History read, atomic with the room's position. Creates the room's meta (epoch,
/// offset 0) when it is missing, so that the epoch a joiner sees is the one the next
/// publish uses. A `since` in another epoch gets the current epoch from its start (up
/// to max recover), not recovered (docs/protocol.md section 3).
///
/// K (keys): meta, history. A (arguments): fresh epoch, history ttl (ms), history size,
/// since offset ('' for none), since epoch, limit, max recover.
/// Returns {epoch, offset, recovered (0/1), {envelope, ...}}.
const HISTORY_FN: &str = r#"
local function read_history(K, A)
  local epoch = redis.call('HGET', K[1], 'e')
  if not epoch then
    epoch = A[1]
    redis.call('DEL', K[2])
    redis.call('HSET', K[1], 'e', epoch, 's', 0)
    redis.call('PEXPIRE', K[1], A[2])
  end
  local top = tonumber(redis.call('HGET', K[1], 's') or '0')
  local first = top + 1
  local head = redis.call('XRANGE', K[2], '-', '+', 'COUNT', 1)
  if head[1] then first = tonumber(string.match(head[1][1], '^(%d+)')) end
  local size = tonumber(A[3])
  if first < top - size + 1 then first = top - size + 1 end
  local recovered = 0
  local from = top + 1
  local to = top
  local lost = false
  if A[4] ~= '' then
    local since = tonumber(A[4]) or 0
    if A[5] == epoch and since <= top and since + 1 >= first and top - since <= tonumber(A[7]) then
      recovered = 1
      from = since + 1
    elseif A[5] ~= epoch then
      -- an epoch the room no longer has (its history was lost): the current epoch from
      -- its first offset held, up to max recover, so that nothing acknowledged since the
      -- loss is missed
      lost = true
      from = first
      to = math.min(top, first + tonumber(A[7]) - 1)
    end
  end
  if recovered == 0 and not lost then
    local n = tonumber(A[6])
    if n > 0 then from = math.max(first, top - n + 1) end
  end
  local out = {}
  if from <= to then
    local range = redis.call('XRANGE', K[2], string.format('%d-0', from), string.format('%d-0', to))
    for i, e in ipairs(range) do out[i] = e[2][2] end
  end
  return {epoch, top, recovered, out}
end
"#;

/// The history read alone.
const HISTORY: &str = r#"
return read_history(KEYS, ARGV)
"#;

/// Adds (or refreshes) a presence entry; publishes member_joined on the user's first
/// connection in the room.
///
/// K (keys): presence zset, presence users hash, room channel.
/// A (arguments): entry, user, ttl (ms), member_joined envelope, key ttl (ms).
/// Returns 1 when the entry was new.
const PRESENCE_JOIN_FN: &str = r#"
local function add_presence(K, A)
  local added = redis.call('ZADD', K[1], now_ms() + tonumber(A[3]), A[1])
  if added == 1 then
    if redis.call('HINCRBY', K[2], A[2], 1) == 1 then
      redis.call('PUBLISH', K[3], A[4])
    end
  end
  redis.call('PEXPIRE', K[1], A[5])
  redis.call('PEXPIRE', K[2], A[5])
  return added
end
"#;

/// The presence add alone.
const PRESENCE_JOIN: &str = r#"
return add_presence(KEYS, ARGV)
"#;

/// First joins, any number of them (the joiner's batch; one per call when joins come one
/// at a time): for each, the presence add, then the history read. One round trip, one pool
/// checkout and one script run for the batch, where each join used to send two scripts.
/// Every key of a join carries its room's hash tag (on a Redis Cluster a batch is split by
/// slot, as publishes are).
///
/// ARGV[1..5]: presence ttl (ms), presence keys' ttl (ms), history ttl (ms), history size,
/// max recover. Then per join i (from 0), KEYS[5i+1..5i+5]: presence zset, presence users
/// hash, room channel, meta, history; ARGV[5+7i+1..5+7i+7]: entry, user, member_joined
/// envelope, fresh epoch, since offset ('' for none), since epoch, limit.
/// Returns one history answer per join, in order.
const JOIN: &str = r#"
local out = {}
for i = 0, #KEYS / 5 - 1 do
  local k, a = 5 * i, 5 + 7 * i
  add_presence({KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]},
    {ARGV[a + 1], ARGV[a + 2], ARGV[1], ARGV[a + 3], ARGV[2]})
  out[i + 1] = read_history({KEYS[k + 4], KEYS[k + 5]},
    {ARGV[a + 4], ARGV[3], ARGV[4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[5]})
end
return out
"#;

/// Removes a presence entry; publishes member_left when it was the user's last one.
///
/// KEYS: presence zset, presence users hash, room channel.
/// ARGV: entry, user, member_left envelope.
const PRESENCE_LEAVE: &str = r#"
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
  local n = redis.call('HINCRBY', KEYS[2], ARGV[2], -1)
  if n <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
    redis.call('PUBLISH', KEYS[3], ARGV[3])
  end
end
return removed
"#;

/// Removes a room's expired entries (a dead node's).
///
/// KEYS: presence zset, presence users hash, room channel.
/// ARGV: node id, room, max entries.
const PRESENCE_SWEEP: &str = r#"
return sweep(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], tonumber(ARGV[3]))
"#;

/// Sweeps, then reads a room's presence: every user when there are at most `full`
/// (the caller sorts and cuts them), else about `want` of them found by HSCAN, so that
/// a read costs Redis O(limit), not O(room), however big the room.
///
/// KEYS: presence zset, presence users hash, room channel.
/// ARGV: node id, room, max entries to sweep, full, want.
/// Returns {users, connections, {user, count, user, count, ...}}.
const PRESENCE_READ: &str = r#"
sweep(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], tonumber(ARGV[3]))
local users = redis.call('HLEN', KEYS[2])
local conns = redis.call('ZCARD', KEYS[1])
local want = tonumber(ARGV[5])
if users <= tonumber(ARGV[4]) then
  return {users, conns, redis.call('HGETALL', KEYS[2])}
end
local out = {}
local cursor = '0'
repeat
  local r = redis.call('HSCAN', KEYS[2], cursor, 'COUNT', want)
  cursor = r[1]
  local kv = r[2]
  for i = 1, #kv, 2 do
    if #out >= 2 * want then break end
    out[#out + 1] = kv[i]
    out[#out + 1] = kv[i + 1]
  end
until cursor == '0' or #out >= 2 * want
return {users, conns, out}
"#;

/// A failover lost acknowledged publishes (asynchronous replication): the room's stored
/// top offset is below one a node already delivered, so the next publish would reuse an
/// offset clients hold. Starts a new epoch, once: only while the room still has the epoch
/// the node knows and its offset is still below the one the node delivered (compare and
/// set; another node that saw the same loss finds the new epoch and only reports it).
///
/// Also when the offset is not below but the stream holds another message at the
/// delivered offset than the one delivered (its SHA-1 given): lost, then re-used.
///
/// KEYS: meta, history. ARGV: known epoch, delivered offset, new epoch, history ttl (ms),
/// SHA-1 of the delivered message ('' when unknown).
/// Returns 1 when this call started the new epoch, 0 when the room had moved on.
const EPOCH_CAS: &str = r#"
local e = redis.call('HMGET', KEYS[1], 'e', 's')
if e[1] ~= ARGV[1] then return 0 end
if (tonumber(e[2] or '0') or 0) >= tonumber(ARGV[2]) then
  if ARGV[5] == '' then return 0 end
  local id = ARGV[2] .. '-0'
  local at = redis.call('XRANGE', KEYS[2], id, id)
  if not at[1] or redis.sha1hex(at[1][2][2]) == ARGV[5] then return 0 end
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'e', ARGV[3], 's', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"#;

/// The loaded scripts.
pub(crate) struct Scripts {
    pub(crate) publish: Script,
    pub(crate) send: Script,
    pub(crate) history: Script,
    pub(crate) presence_join: Script,
    pub(crate) join: Script,
    pub(crate) presence_leave: Script,
    pub(crate) presence_sweep: Script,
    pub(crate) presence_read: Script,
    pub(crate) epoch_cas: Script,
}

impl Scripts {
    /// The scripts; `cluster`: their room and user messages are SPUBLISHed (sharded).
    pub(crate) fn new(cluster: bool) -> Self {
        let text = |body: &str| {
            if cluster {
                body.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'")
            } else {
                body.to_string()
            }
        };
        let plain = |body: &str| Script::new(&text(body));
        let with_helpers = |body: &str| Script::new(&text(&format!("{HELPERS}\n{body}")));
        Scripts {
            publish: plain(PUBLISH),
            send: plain(SEND),
            history: plain(&format!("{HISTORY_FN}\n{HISTORY}")),
            presence_join: with_helpers(&format!("{PRESENCE_JOIN_FN}\n{PRESENCE_JOIN}")),
            join: with_helpers(&format!("{PRESENCE_JOIN_FN}\n{HISTORY_FN}\n{JOIN}")),
            presence_leave: plain(PRESENCE_LEAVE),
            presence_sweep: with_helpers(PRESENCE_SWEEP),
            presence_read: with_helpers(PRESENCE_READ),
            epoch_cas: Script::new(EPOCH_CAS),
        }
    }
}
