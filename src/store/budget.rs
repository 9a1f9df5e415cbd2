//! Budget steps: the atomic multi-counter operations that token and money budgets need,
//! beside the per-counter updates of [`super::CounterUpdate`].
//!
//! A [`BudgetCall`] names every budget counter one request touches ([`BudgetLine`]: the
//! period's settled usage and what reservations hold in it) and one [`BudgetOp`]. A store
//! runs the whole call as one atomic step (one Lua script on Redis, one lock in memory),
//! so a reservation is taken on every line or none, and a settlement's counters, its
//! idempotency marker and its usage event in the outbox are written together.
//!
//! Every call, in order:
//! 1. releases reservations whose deadline has passed (up to [`SWEEP_MAX`]): their amounts
//!    leave the reserved counters and they are counted in [`BudgetReply::expired`];
//! 2. for [`BudgetOp::Rebuild`]: if the marker (`markers[0]`) exists, does nothing
//!    (another replica rebuilt first); else sets each line's used counter to its amount
//!    (living `ttl_secs`), clears its reserved counter and sets the marker, living as long
//!    as the longest line (a marker names one budget period, so it goes with it). Done.
//! 3. if any of `markers` is missing, answers [`BudgetOutcome::Unbuilt`] and changes
//!    nothing: the counters were lost (a Redis flush or restart) and must be rebuilt from
//!    the ledger before anything is decided on them;
//! 4. runs the op:
//!    - [`BudgetOp::Check`] changes nothing;
//!    - [`BudgetOp::Reserve`]: a request id already reserved or settled answers
//!      [`BudgetOutcome::Duplicate`] (a retry holds nothing twice). Else, if any line with
//!      a limit has `used + reserved + amount > limit`, answers
//!      [`BudgetOutcome::Refused`] with the first such line and changes nothing; else
//!      adds each amount to its reserved counter and remembers the reservation until its
//!      deadline;
//!    - [`BudgetOp::Settle`]: a request id already settled answers
//!      [`BudgetOutcome::Duplicate`] and changes nothing. Else releases the request's
//!      reservation (if any), adds each amount to its used counter, marks the request id
//!      settled for `settled_ttl_secs`, and appends `event` to the outbox.
//!
//! The reply holds each line's used and reserved counters after the call.
//!
//! Keys: everything lives under one namespace ([`namespace`]) whose braces make it one
//! Redis Cluster hash tag, so a call's counters, markers, reservations and outbox share a
//! slot and one script can touch them all. Budget calls are two per LLM request (slow,
//! seconds-long requests), so one slot carries them easily; the per-request rate limits
//! stay spread over the cluster.

/// Most expired reservations one call releases (the rest go on the next calls).
pub const SWEEP_MAX: usize = 64;

/// The namespace of every budget key for a deployment's key `prefix`.
pub fn namespace(prefix: &str) -> String {
    format!("{prefix}{{tollgate}}:")
}

/// One budget counter a call touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetLine {
    /// Settled usage in the budget's current period.
    pub used_key: String,
    /// What reservations of requests in flight hold in the same period.
    pub reserved_key: String,
    /// How long the period's counters live from their creation; for an `idle` line, from
    /// every change (a session's lifetime, forgotten once the session is idle).
    pub ttl_secs: u64,
    pub idle: bool,
    /// A hard budget's limit: a reservation may not take `used + reserved` past it. `None`
    /// for a soft budget, which only counts.
    pub limit: Option<u64>,
    /// What to reserve, charge or rebuild to (0 in a check).
    pub amount: u64,
}

/// What a call does once its lines are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetOp {
    /// Reads the lines.
    Check,
    /// Holds `amount` on every line until the request settles or `expires_at_ms` passes.
    Reserve {
        request_id: String,
        expires_at_ms: u64,
    },
    /// Charges the actual usage once per request id and queues its usage event.
    Settle {
        request_id: String,
        /// The usage event (JSON) for the ledger writer.
        event: String,
        /// How long a settled request id is remembered (well beyond any retry).
        settled_ttl_secs: u64,
    },
    /// Sets the lines from the ledger after the counters were lost; `markers` holds the
    /// one marker the lines belong to.
    Rebuild,
}

/// One atomic budget step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetCall {
    /// From [`namespace`]; every key of the call starts with it.
    pub namespace: String,
    /// Markers that must exist for the lines to be trusted (see the module doc).
    pub markers: Vec<String>,
    pub lines: Vec<BudgetLine>,
    pub op: BudgetOp,
    /// The limiter's clock, so replicas and tests agree on deadlines.
    pub now_ms: u64,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetOutcome {
    /// The op was applied (for a check or a rebuild already done: nothing to apply).
    Done,
    /// A reservation did not fit under line `line`'s limit; nothing was reserved.
    Refused { line: usize },
    /// The request id was already reserved or settled; nothing changed.
    Duplicate,
    /// Marker `marker` is missing; nothing changed. Rebuild, then call again.
    Unbuilt { marker: usize },
}

/// What a budget call answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetReply {
    pub outcome: BudgetOutcome,
    /// Each line's used counter after the call.
    pub used: Vec<u64>,
    /// Each line's reserved counter after the call.
    pub reserved: Vec<u64>,
    /// Reservations this call released because their deadline had passed.
    pub expired: u64,
}

/// A usage event waiting in the outbox for the ledger writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The outbox's own id: acknowledge with it.
    pub id: String,
    /// The event, as given to [`BudgetOp::Settle`].
    pub event: String,
}

/// The key of the marker saying that `tenant`'s budget counters are trustworthy.
pub fn tenant_marker(namespace: &str, tenant: &str) -> String {
    format!("{namespace}built:t:{tenant}")
}

/// The key of the marker saying that the global budgets' counters are trustworthy.
pub fn global_marker(namespace: &str) -> String {
    format!("{namespace}built:global")
}

/// The key of a settled request id.
pub fn settled_key(namespace: &str, request_id: &str) -> String {
    format!("{namespace}settled:{request_id}")
}

/// The key of a request's reservation record.
pub fn reservation_key(namespace: &str, request_id: &str) -> String {
    format!("{namespace}res:{request_id}")
}

/// The key of the reservations' deadlines (a sorted set on Redis).
pub fn deadlines_key(namespace: &str) -> String {
    format!("{namespace}reservations")
}

/// The key of the outbox (a stream on Redis).
pub fn outbox_key(namespace: &str) -> String {
    format!("{namespace}outbox")
}
