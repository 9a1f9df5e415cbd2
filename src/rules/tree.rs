//! The compiled rules: a tree per domain, matched level by level.
//!
//! Each level indexes its children three ways, so a lookup costs one hash probe for the
//! exact `key`+`value`, then a scan of only the wildcard siblings of that key (in config
//! order), then one probe for the key's default node. Exact siblings never slow it down.
//!
//! The maps hash with foldhash rather than SipHash: lookups run on every descriptor, and
//! their keys are the config's own (a request's values are only looked up, never
//! inserted, so they cannot crowd a map).

use std::collections::HashMap;
use std::sync::Arc;

/// The rule tree's maps.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use super::pattern::Pattern;
use super::quota::QuotaKeys;
use super::unit::Unit;
use crate::telemetry::RuleStats;

/// All domains of a loaded rules directory.
#[derive(Default)]
pub struct RuleSet {
    domains: Map<String, Domain>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("domains", &self.domain_names())
            .finish()
    }
}

impl RuleSet {
    /// A rule set holding `domains`.
    pub fn new(domains: HashMap<String, Domain>) -> Self {
        Self {
            domains: domains.into_iter().collect(),
        }
    }

    /// The domain's rules, if it is configured.
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    /// Domain names, sorted.
    pub fn domain_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.domains.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Every limited node in the reference's config-dump form, one per line, sorted.
    pub fn dump(&self) -> String {
        let mut lines = Vec::new();
        for domain in self.domains.values() {
            domain.root.dump_into(&mut lines);
        }
        lines.sort_unstable();
        let mut out = lines.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        out
    }
}

/// The rules of one domain.
pub struct Domain {
    pub name: String,
    pub(crate) root: Level,
    /// tollgate: the descriptor keys of tenant traffic, when the file has a `quota:` block.
    pub quota: Option<QuotaKeys>,
}

impl Domain {
    /// Walks the tree along `entries` and returns the matched node of every level, if
    /// every entry matched. No backtracking: an exact match that dead-ends does not try
    /// the default. Deeper requests than the tree, or shallower, simply dead-end or stop
    /// at a node; the caller applies only the last node's limit.
    pub fn find<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Option<Vec<&Node>> {
        let mut level = &self.root;
        let mut path = Vec::with_capacity(4);
        for (key, value) in entries {
            let node = level.child(key, value)?;
            level = &node.children;
            path.push(node);
        }
        (!path.is_empty()).then_some(path)
    }

    /// What [`Domain::find`] finds, without collecting the path: the last matched node,
    /// and whether the path is *plain*: no level shares one counter across a wildcard's
    /// values (`share_threshold`) and none puts request values into statistics
    /// (`value_to_metric`, or `detailed_metric` on the last node). The decision path
    /// needs the whole path only when it is not plain, and then asks [`Domain::find`].
    pub fn find_last<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Option<(&Node, bool)> {
        let mut level = &self.root;
        let mut last: Option<&Node> = None;
        let mut plain = true;
        for (key, value) in entries {
            let node = level.child(key, value)?;
            level = &node.children;
            plain &= !(node.value_to_metric || node.share_threshold && node.value.is_some());
            last = Some(node);
        }
        let node = last?;
        Some((node, plain && !node.detailed_metric))
    }
}

/// The children of one node (or of the domain root).
#[derive(Default)]
pub(crate) struct Level {
    exact: Map<String, Map<String, Node>>,
    wildcards: Map<String, Vec<Node>>,
    defaults: Map<String, Node>,
}

impl Level {
    /// Exact value first, then wildcards in config order, then the key's default.
    fn child(&self, key: &str, value: &str) -> Option<&Node> {
        if let Some(node) = self.exact.get(key).and_then(|values| values.get(value)) {
            return Some(node);
        }
        if let Some(node) = self.wildcards.get(key).and_then(|nodes| {
            nodes
                .iter()
                .find(|n| n.pattern.as_ref().is_some_and(|p| p.matches(value)))
        }) {
            return Some(node);
        }
        self.defaults.get(key)
    }

    /// Adds a node; `Err` names the composite key already present at this level.
    pub(crate) fn insert(&mut self, node: Node) -> Result<(), String> {
        let duplicate = match (&node.value, &node.pattern) {
            (None, _) => self.defaults.contains_key(&node.key),
            (Some(_), Some(p)) => self
                .wildcards
                .get(&node.key)
                .is_some_and(|nodes| nodes.iter().any(|n| n.value.as_deref() == Some(p.as_str()))),
            (Some(v), None) => self.exact.get(&node.key).is_some_and(|m| m.contains_key(v)),
        };
        if duplicate {
            return Err(node.composite_key());
        }
        match (&node.value, &node.pattern) {
            (None, _) => {
                self.defaults.insert(node.key.clone(), node);
            }
            (Some(_), Some(_)) => self
                .wildcards
                .entry(node.key.clone())
                .or_default()
                .push(node),
            (Some(v), None) => {
                let v = v.clone();
                self.exact
                    .entry(node.key.clone())
                    .or_default()
                    .insert(v, node);
            }
        }
        Ok(())
    }

    fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.exact
            .values()
            .flat_map(Map::values)
            .chain(self.wildcards.values().flatten())
            .chain(self.defaults.values())
    }

    fn dump_into(&self, lines: &mut Vec<String>) {
        for node in self.nodes() {
            for limit in &node.limits {
                lines.push(format!("{}: {}", node.stat_key, limit.describe(node)));
            }
            node.children.dump_into(lines);
        }
    }
}

/// One descriptor node of the config.
pub struct Node {
    pub key: String,
    /// `None` for the key's default node; the pattern's text for a wildcard.
    pub value: Option<String>,
    pub(crate) pattern: Option<Pattern>,
    /// The reference's stat key for this node: `domain.key_value.subkey`.
    pub stat_key: String,
    /// The node's limits: none, the reference's one, or several (`rate_limits`).
    pub limits: Vec<Arc<Limit>>,
    pub(crate) children: Level,
    pub shadow_mode: bool,
    pub quota_mode: bool,
    pub detailed_metric: bool,
    pub value_to_metric: bool,
    pub share_threshold: bool,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Node {
    /// `key` or `key_value`, as the reference names a node in its stat keys and errors.
    pub fn composite_key(&self) -> String {
        match &self.value {
            Some(v) => format!("{}_{}", self.key, v),
            None => self.key.clone(),
        }
    }

    /// Whether this node matched through a wildcard value.
    pub fn is_wildcard(&self) -> bool {
        self.pattern.is_some()
    }
}

/// How a limit's windows are laid out in time.
#[derive(Debug, Clone, PartialEq)]
pub enum Period {
    /// Windows of this many seconds, aligned to the Unix epoch so replicas agree.
    Fixed(u64),
    /// Calendar days, ISO weeks (from Monday), months or years in a timezone.
    Calendar {
        unit: Unit,
        timezone: jiff::tz::TimeZone,
    },
}

/// How a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// A count per window, reset at the window's end (the reference's only algorithm).
    FixedWindow,
    /// The current window's count plus the previous window's, weighted by overlap.
    SlidingWindow,
    /// Tokens return at `requests_per_unit` per window; up to `burst` are held.
    TokenBucket { burst: u64 },
}

impl Algorithm {
    /// The name used in the YAML and the config dump.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::TokenBucket { .. } => "token_bucket",
        }
    }
}

/// A limit attached to a node.
#[derive(Clone)]
pub struct Limit {
    pub requests_per_unit: u32,
    /// The unit reported to Envoy in `current_limit`.
    pub unit: Unit,
    pub period: Period,
    pub algorithm: Algorithm,
    /// Matches without counting; reported with no `current_limit`.
    pub unlimited: bool,
    pub name: Option<String>,
    /// Names of limits this one drops when both match a request.
    pub replaces: Vec<String>,
    /// Declared in `rate_limits`: its statistics carry a `limit` label with its name.
    pub listed: bool,
    /// Set apart in counter keys so a node's limits never share a counter; empty for a
    /// plain reference limit, whose keys keep the reference's shape.
    pub key_tag: String,
    /// The reference's per-rule statistics, registered once at load.
    pub stats: RuleStats,
}

impl Limit {
    /// The window length in seconds for epoch-aligned periods (calendar periods vary).
    pub fn fixed_seconds(&self) -> Option<u64> {
        match self.period {
            Period::Fixed(secs) => Some(secs),
            Period::Calendar { .. } => None,
        }
    }

    /// The reference's dump line body: `unit=MINUTE requests_per_unit=5, shadow_mode: false,
    /// quota_mode: false` (unlimited rules print `unit=UNKNOWN requests_per_unit=0`), then
    /// the name and any of tollgate's extensions in use.
    fn describe(&self, node: &Node) -> String {
        let (unit, rpu) = if self.unlimited {
            ("UNKNOWN", 0)
        } else {
            (self.unit.name(), self.requests_per_unit)
        };
        let mut text = format!(
            "unit={unit} requests_per_unit={rpu}, shadow_mode: {}, quota_mode: {}",
            node.shadow_mode, node.quota_mode
        );
        if let Some(name) = &self.name {
            text.push_str(&format!(", name: {name}"));
        }
        match &self.period {
            Period::Fixed(secs) if *secs != self.unit.seconds() => {
                text.push_str(&format!(", window: {secs}s"))
            }
            Period::Fixed(_) => {}
            Period::Calendar { timezone, .. } => text.push_str(&format!(
                ", calendar: {}",
                timezone.iana_name().unwrap_or("UTC")
            )),
        }
        match self.algorithm {
            Algorithm::FixedWindow => {}
            Algorithm::SlidingWindow => text.push_str(", algorithm: sliding_window"),
            Algorithm::TokenBucket { burst } => {
                text.push_str(&format!(", algorithm: token_bucket, burst: {burst}"))
            }
        }
        text
    }
}
