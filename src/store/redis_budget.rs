//! Budget calls and the usage outbox on Redis: the [`super::budget`] contract as Lua
//! scripts, behaving exactly as the memory store's [`super::budget_book`].
//!
//! Accuracy: a budget call is one script ([`BUDGET_SCRIPT`]), so its sweep, its checks
//! and its writes (the outbox append included) happen atomically; replicas never see half
//! a reservation or a charge without its event. Every key of a call lies in the
//! namespace's hash tag, so the call is one slot under Cluster. Amounts and counters are
//! compared as Lua numbers (doubles), exact below 2^53, which no token or money budget
//! approaches; the counters themselves are Redis integers. Counters, settled request ids
//! and reservation records expire by Redis' clock; reservation deadlines are judged by the
//! call's `now_ms` (the limiter's clock), like the memory store. What Redis loses (a flush,
//! a restart without persistence, a failover's last writes) is lost here too: the markers
//! go with the counters, so the limiter sees [`super::budget::BudgetOutcome::Unbuilt`] and
//! rebuilds from the ledger; settled events not yet read by the ledger writer are lost
//! with the stream.
//!
//! Data model, all under the namespace:
//! - counters: string integers; `EXPIRE` set when a counter is created, and on every
//!   change for an `idle` line;
//! - markers: plain keys living as long as the longest line of their rebuild; a settled
//!   request id: `SET ... EX`;
//! - a reservation: the hash `res:<request id>`, field = reserved counter, value = amount
//!   held (summed if two lines share a counter), plus a `deadline` field so a reservation
//!   of no lines still exists; its `PEXPIRE` outlives every counter it could give back to,
//!   a safety net for a namespace that stops being called (the sweep normally deletes it);
//! - the deadlines: the sorted set `reservations`, member = request id, score = deadline
//!   in ms (ties in member order, like the memory store's `(deadline, id)` set);
//! - the outbox: the stream `outbox`, one `event` field per entry, read through the
//!   consumer group [`GROUP`]: each store is one consumer, acknowledged entries are
//!   deleted, so the stream holds only what the ledger has not committed.

use std::cmp::Ordering;
use std::sync::LazyLock;

use redis::{Script, ScriptInvocation};

use super::StoreError;
use super::budget::{
    BudgetCall, BudgetOp, BudgetOutcome, BudgetReply, OutboxEntry, SWEEP_MAX, deadlines_key,
    namespace, outbox_key, reservation_key, settled_key,
};
use super::redis::RedisStore;

/// Runs one [`BudgetCall`] atomically (see [`super::budget`] for the steps).
///
/// `KEYS`:
/// - `[1]` the deadlines sorted set, `[2]` the outbox stream, `[3]` the request's settled
///   marker, `[4]` its reservation hash (for a check or a rebuild, both for the empty
///   request id, and untouched);
/// - `[5 .. 4+m]` the markers;
/// - then, per line, its used and its reserved counter.
///
/// `ARGV`:
/// - `[1]` the op: `c` check, `r` reserve, `s` settle, `b` rebuild;
/// - `[2]` now, in ms; `[3]` m, the number of markers; `[4]` the namespace; `[5]` the
///   most expired reservations to release;
/// - `[6]` the request id; `[7]` reserve: the deadline in ms, settle: seconds the
///   settled id is remembered (at least 1); `[8]` settle: the event;
/// - then, per line, four: seconds the counter lives (at least 1), `1` if idle else `0`,
///   the limit (empty for none), the amount.
///
/// The sweep names keys that are not in `KEYS`: an expired reservation's hash is
/// `<namespace>res:<id>`, known only once the sorted set is read. That is safe under
/// Cluster because the namespace carries the `{tollgate}` hash tag: every such key is in
/// the slot of `KEYS[1]`, on the node running the script. (It must match
/// [`reservation_key`].)
///
/// Returns strings: the outcome code (`0` done, `1` refused, `2` duplicate, `3`
/// unbuilt), the refused line's or missing marker's index (0-based), the number of
/// expired reservations released, then every line's used counter, then every line's
/// reserved counter, after the call.
pub const BUDGET_SCRIPT: &str = r#"
local op = ARGV[1]
local now = tonumber(ARGV[2])
local m = tonumber(ARGV[3])
local ns = ARGV[4]
local deadlines, outbox, settled, reservation = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local lines = (#KEYS - 4 - m) / 2

-- Integers as Redis reads them (tostring would write large ones as 1e+15).
local function int(n) return string.format('%.0f', n) end
local function used_key(i) return KEYS[4 + m + 2 * i - 1] end
local function reserved_key(i) return KEYS[4 + m + 2 * i] end
local function ttl(i) return ARGV[8 + 4 * i - 3] end
local function idle(i) return ARGV[8 + 4 * i - 2] == '1' end
local function limit(i) return ARGV[8 + 4 * i - 1] end
local function amount(i) return ARGV[8 + 4 * i] end
local function value(key) return tonumber(redis.call('GET', key) or '0') end

-- Adds a line's amount: a new counter lives its ttl; an idle line's expiry moves on.
local function add(i, key)
  local fresh = redis.call('EXISTS', key) == 0
  redis.call('INCRBY', key, amount(i))
  if fresh or idle(i) then
    redis.call('EXPIRE', key, ttl(i))
  end
end

-- Gives a reservation's amounts back (never below zero, expiries untouched) and forgets it.
local function release(key, id)
  local holds = redis.call('HGETALL', key)
  for j = 1, #holds, 2 do
    if holds[j] ~= 'deadline' then
      local held = redis.call('GET', holds[j])
      if held then
        redis.call('DECRBY', holds[j], int(math.min(tonumber(held), tonumber(holds[j + 1]))))
      end
    end
  end
  redis.call('DEL', key)
  redis.call('ZREM', deadlines, id)
end

local due = redis.call('ZRANGEBYSCORE', deadlines, '-inf', ARGV[2], 'LIMIT', 0, ARGV[5])
for _, id in ipairs(due) do
  release(ns .. 'res:' .. id, id)
end

local function reply(code, index)
  local out = {tostring(code), tostring(index), tostring(#due)}
  for i = 1, lines do out[#out + 1] = redis.call('GET', used_key(i)) or '0' end
  for i = 1, lines do out[#out + 1] = redis.call('GET', reserved_key(i)) or '0' end
  return out
end

if op == 'b' then
  if m > 0 and redis.call('EXISTS', KEYS[5]) == 0 then
    local longest = 1
    for i = 1, lines do
      redis.call('SET', used_key(i), amount(i), 'EX', ttl(i))
      redis.call('DEL', reserved_key(i))
      longest = math.max(longest, tonumber(ttl(i)))
    end
    -- A marker names one budget period: it lives as long as the longest line.
    redis.call('SET', KEYS[5], '1', 'EX', int(longest))
  end
  return reply(0, 0)
end

for j = 1, m do
  if redis.call('EXISTS', KEYS[4 + j]) == 0 then
    return reply(3, j - 1)
  end
end

if op == 'r' then
  if redis.call('EXISTS', reservation) == 1 or redis.call('EXISTS', settled) == 1 then
    return reply(2, 0)
  end
  for i = 1, lines do
    if limit(i) ~= '' and
        value(used_key(i)) + value(reserved_key(i)) + tonumber(amount(i)) > tonumber(limit(i)) then
      return reply(1, i - 1)
    end
  end
  local longest = 0
  for i = 1, lines do
    add(i, reserved_key(i))
    redis.call('HINCRBY', reservation, reserved_key(i), amount(i))
    longest = math.max(longest, tonumber(ttl(i)))
  end
  redis.call('HSET', reservation, 'deadline', ARGV[7])
  redis.call('ZADD', deadlines, ARGV[7], ARGV[6])
  -- Past the deadline by the longest counter life (and a minute of clock skew): by then
  -- every counter the reservation holds amounts in has expired, should no sweep come.
  local until_deadline = math.max(tonumber(ARGV[7]) - now, 0)
  redis.call('PEXPIRE', reservation, int(until_deadline + longest * 1000 + 60000))
elseif op == 's' then
  if redis.call('EXISTS', settled) == 1 then
    return reply(2, 0)
  end
  -- The event first: if it cannot be kept, nothing is charged.
  redis.call('XADD', outbox, '*', 'event', ARGV[8])
  release(reservation, ARGV[6])
  for i = 1, lines do
    add(i, used_key(i))
  end
  redis.call('SET', settled, '1', 'EX', ARGV[7])
end
return reply(0, 0)
"#;

/// [`BUDGET_SCRIPT`], hashed once (sent as `EVALSHA`, loaded on `NOSCRIPT`).
static BUDGET: LazyLock<Script> = LazyLock::new(|| Script::new(BUDGET_SCRIPT));

/// Reads up to `max` outbox entries for one consumer of the ledger group, oldest first.
///
/// `KEYS[1]`: the outbox stream. `ARGV`: `[1]` the group, `[2]` this consumer, `[3]` the
/// most entries to return, `[4]` ms after which another consumer's unacknowledged entries
/// are claimed (it died or hangs), `[5]` ms after which a consumer holding no entries is
/// forgotten (every restart adds a consumer).
///
/// In order: this consumer's own unacknowledged entries (read before, never acknowledged),
/// then entries claimed from idle consumers, then new ones. The group is created at the
/// stream's start when missing (the first read, or after a flush), so events settled
/// before any reader are read too. Returns id, event, id, event, ...
pub const OUTBOX_READ_SCRIPT: &str = r#"
local key, group, me = KEYS[1], ARGV[1], ARGV[2]
local max = tonumber(ARGV[3])
local out, seen = {}, {}

local function keep(entries)
  for _, entry in ipairs(entries) do
    local id, fields = entry[1], entry[2]
    if not seen[id] then
      seen[id] = true
      if fields then
        local event = ''
        for j = 1, #fields, 2 do
          if fields[j] == 'event' then event = fields[j + 1] end
        end
        out[#out + 1] = id
        out[#out + 1] = event
      else
        -- Deleted while pending: nothing to deliver.
        redis.call('XACK', key, group, id)
      end
    end
  end
end

local function read(from, count)
  local reply = redis.call('XREADGROUP', 'GROUP', group, me, 'COUNT', count, 'STREAMS', key, from)
  if reply then return reply[1][2] end
  return {}
end

-- No stream yet: nothing was ever settled (and a Redis without usage holds no outbox key).
if redis.call('EXISTS', key) == 0 then
  return {}
end

local mine = redis.pcall('XREADGROUP', 'GROUP', group, me, 'COUNT', max, 'STREAMS', key, '0')
if type(mine) == 'table' and mine.err then
  if not string.find(mine.err, 'NOGROUP', 1, true) then
    return mine
  end
  redis.call('XGROUP', 'CREATE', key, group, '0')
  mine = read('0', max)
elseif mine then
  mine = mine[1][2]
else
  mine = {}
end
keep(mine)

local left = max - #out / 2
if left > 0 then
  keep(redis.call('XAUTOCLAIM', key, group, me, ARGV[4], '0-0', 'COUNT', left)[2])
  left = max - #out / 2
end
if left > 0 then
  keep(read('>', left))
end

for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', key, group)) do
  local info = {}
  for j = 1, #consumer, 2 do info[consumer[j]] = consumer[j + 1] end
  if info['name'] ~= me and info['pending'] == 0 and info['idle'] > tonumber(ARGV[5]) then
    redis.call('XGROUP', 'DELCONSUMER', key, group, info['name'])
  end
end
return out
"#;

static OUTBOX_READ: LazyLock<Script> = LazyLock::new(|| Script::new(OUTBOX_READ_SCRIPT));

/// Acknowledges outbox entries and deletes them from the stream.
///
/// `KEYS[1]`: the outbox stream. `ARGV`: `[1]` the group, then the entry ids. A missing
/// group (after a flush) is no error: the entries went with it.
pub const OUTBOX_ACK_SCRIPT: &str = r#"
local first = 2
while first <= #ARGV do
  local last = math.min(first + 999, #ARGV)
  redis.pcall('XACK', KEYS[1], ARGV[1], unpack(ARGV, first, last))
  redis.call('XDEL', KEYS[1], unpack(ARGV, first, last))
  first = last + 1
end
return 0
"#;

static OUTBOX_ACK: LazyLock<Script> = LazyLock::new(|| Script::new(OUTBOX_ACK_SCRIPT));

/// The consumer group the ledger writers read the outbox through.
pub const GROUP: &str = "ledger";

/// Unacknowledged entries idle this long are taken over from their consumer (a replica
/// that died, or hangs, between reading and acknowledging).
const CLAIM_IDLE_MS: u64 = 30_000;

/// Consumers holding nothing and idle this long leave the group.
const FORGET_CONSUMER_MS: u64 = 24 * 3600 * 1000;

/// Runs one budget call on `store`.
pub(super) async fn budget(
    store: &RedisStore,
    call: &BudgetCall,
) -> Result<BudgetReply, StoreError> {
    let raw: Vec<String> = store.invoke(&invocation(call)).await?;
    reply(call, &raw)
}

/// One store's view of the outbox: its deployment's stream, read as one consumer.
#[derive(Debug)]
pub(super) struct OutboxReader {
    stream: String,
    /// Unique per store: a restarted replica is a new consumer, and what the old one held
    /// unacknowledged is claimed after [`CLAIM_IDLE_MS`].
    consumer: String,
}

impl OutboxReader {
    /// The reader of the outbox under `key_prefix`'s namespace.
    pub(super) fn new(key_prefix: &str) -> Self {
        Self {
            stream: outbox_key(&namespace(key_prefix)),
            consumer: format!("tollgate-{}", uuid::Uuid::now_v7()),
        }
    }

    /// Up to `max` unacknowledged events, oldest first.
    pub(super) async fn pending(
        &self,
        store: &RedisStore,
        max: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut call = OUTBOX_READ.prepare_invoke();
        call.key(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(max)
            .arg(CLAIM_IDLE_MS)
            .arg(FORGET_CONSUMER_MS);
        let raw: Vec<String> = store.invoke(&call).await?;
        entries(raw)
    }

    /// Acknowledges `ids` (from [`Self::pending`]) and removes them from the stream.
    pub(super) async fn ack(&self, store: &RedisStore, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut call = OUTBOX_ACK.prepare_invoke();
        call.key(&self.stream).arg(GROUP);
        for id in ids {
            call.arg(id);
        }
        store.invoke::<i64>(&call).await.map(drop)
    }
}

/// The script call for `call`, keys and arguments laid out as [`BUDGET_SCRIPT`] expects.
fn invocation(call: &BudgetCall) -> ScriptInvocation<'static> {
    let ns = &call.namespace;
    let (op, request_id, number, event) = match &call.op {
        BudgetOp::Check => ("c", "", 0, ""),
        BudgetOp::Reserve {
            request_id,
            expires_at_ms,
        } => ("r", request_id.as_str(), *expires_at_ms, ""),
        BudgetOp::Settle {
            request_id,
            event,
            settled_ttl_secs,
        } => (
            "s",
            request_id.as_str(),
            (*settled_ttl_secs).max(1),
            event.as_str(),
        ),
        BudgetOp::Rebuild => ("b", "", 0, ""),
    };
    let mut script = BUDGET.prepare_invoke();
    script
        .key(deadlines_key(ns))
        .key(outbox_key(ns))
        .key(settled_key(ns, request_id))
        .key(reservation_key(ns, request_id));
    for marker in &call.markers {
        script.key(marker);
    }
    for line in &call.lines {
        script.key(&line.used_key).key(&line.reserved_key);
    }
    script
        .arg(op)
        .arg(call.now_ms)
        .arg(call.markers.len())
        .arg(ns)
        .arg(SWEEP_MAX)
        .arg(request_id)
        .arg(number)
        .arg(event);
    for line in &call.lines {
        script
            .arg(line.ttl_secs.max(1))
            .arg(if line.idle { "1" } else { "0" });
        match line.limit {
            Some(limit) => script.arg(limit),
            None => script.arg(""),
        };
        script.arg(line.amount);
    }
    script
}

/// Reads [`BUDGET_SCRIPT`]'s answer.
fn reply(call: &BudgetCall, raw: &[String]) -> Result<BudgetReply, StoreError> {
    let lines = call.lines.len();
    if raw.len() != 3 + 2 * lines {
        return Err(unexpected(format!(
            "{} values for {lines} lines",
            raw.len()
        )));
    }
    let numbers = raw
        .iter()
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| unexpected(format!("`{v}` is no count")))
        })
        .collect::<Result<Vec<u64>, _>>()?;
    let index = numbers[1] as usize;
    let outcome = match numbers[0] {
        0 => BudgetOutcome::Done,
        1 => BudgetOutcome::Refused { line: index },
        2 => BudgetOutcome::Duplicate,
        3 => BudgetOutcome::Unbuilt { marker: index },
        code => return Err(unexpected(format!("outcome code {code}"))),
    };
    Ok(BudgetReply {
        outcome,
        used: numbers[3..3 + lines].to_vec(),
        reserved: numbers[3 + lines..].to_vec(),
        expired: numbers[2],
    })
}

/// Reads [`OUTBOX_READ_SCRIPT`]'s answer, sorted by stream id (own, claimed and new
/// entries come back in three runs).
fn entries(raw: Vec<String>) -> Result<Vec<OutboxEntry>, StoreError> {
    if !raw.len().is_multiple_of(2) {
        return Err(unexpected("an outbox id without its event".to_owned()));
    }
    let mut raw = raw.into_iter();
    let mut entries = Vec::with_capacity(raw.len() / 2);
    while let (Some(id), Some(event)) = (raw.next(), raw.next()) {
        entries.push(OutboxEntry { id, event });
    }
    entries.sort_by(|a, b| stream_order(&a.id, &b.id));
    Ok(entries)
}

/// Orders stream ids (`<ms>-<seq>`) by time, then sequence.
fn stream_order(a: &str, b: &str) -> Ordering {
    let parts = |id: &str| {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    parts(a).cmp(&parts(b))
}

fn unexpected(what: String) -> StoreError {
    StoreError::Unavailable(format!("unexpected budget script reply: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::budget::BudgetLine;

    fn line(name: &str) -> BudgetLine {
        BudgetLine {
            used_key: format!("{{tollgate}}:u:{name}"),
            reserved_key: format!("{{tollgate}}:r:{name}"),
            ttl_secs: 0,
            idle: false,
            limit: None,
            amount: 5,
        }
    }

    #[test]
    fn a_call_passes_four_fixed_keys_the_markers_and_two_keys_per_line() {
        let call = BudgetCall {
            namespace: namespace(""),
            markers: vec!["m1".into(), "m2".into()],
            lines: vec![line("a"), line("b"), line("c")],
            op: BudgetOp::Check,
            now_ms: 1,
        };
        let shown = format!("{:?}", invocation(&call));
        assert!(
            shown.contains("keys: 12") && shown.contains("args: 20"),
            "{shown}"
        );
    }

    #[test]
    fn a_reply_is_read_as_outcome_expired_used_then_reserved() {
        let call = BudgetCall {
            namespace: namespace(""),
            markers: vec![],
            lines: vec![line("a"), line("b")],
            op: BudgetOp::Check,
            now_ms: 1,
        };
        let raw: Vec<String> = ["1", "1", "4", "10", "20", "3", "0"]
            .map(String::from)
            .to_vec();
        let reply = reply(&call, &raw).unwrap();
        assert_eq!(reply.outcome, BudgetOutcome::Refused { line: 1 });
        assert_eq!(reply.expired, 4);
        assert_eq!(reply.used, [10, 20]);
        assert_eq!(reply.reserved, [3, 0]);
        assert!(super::reply(&call, &raw[..6]).is_err());
    }

    #[test]
    fn stream_ids_sort_by_time_then_sequence_not_as_text() {
        let mut ids = ["10-0", "9-5", "9-10", "100-0"];
        ids.sort_by(|a, b| stream_order(a, b));
        assert_eq!(ids, ["9-5", "9-10", "10-0", "100-0"]);
    }
}
