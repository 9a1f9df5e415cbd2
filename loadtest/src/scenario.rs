//! Scenarios: the rules a server loads and the requests the client sends, generated from
//! one description so the two always agree.
//!
//! Limits are generous by default (`--limit`, requests per window per counter), so almost
//! every answer is OK and a run measures the decision path, not rejections. Counters use
//! minute windows by default, so a run leaves nothing behind in Redis for longer than a
//! minute; the memory measurement asks for day windows (`rules --unit day`), so no counter
//! it fills expires before it is measured.

use std::fmt::Write as _;
use std::path::Path;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::google::protobuf::UInt64Value;
use serde::{Deserialize, Serialize};

/// What a run sends.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// One descriptor per request, matching one default-value rule (100 distinct keys).
    One,
    /// Five descriptors per request, each matching a rule (one nested two levels deep).
    Five,
    /// Two descriptors matching wildcard rules: a path among 20 `prefix*` siblings and a
    /// user agent under a shared-threshold `crawler*` rule.
    Wildcard,
    /// One descriptor whose value is drawn from `--keys` (default 1,000,000) distinct keys.
    HighCardinality,
    /// A config with `--rules` (default 10,000) exact-value rules; requests spread across all.
    #[value(name = "rules-10k")]
    #[serde(rename = "rules-10k")]
    Rules10k,
    /// The two-phase LLM flow against real budgets (a `quota:` domain; tenants, grants,
    /// prices and budgets set up through the admin API by `tollgate-load setup`): a
    /// request-path call (tenant, check-only tenant+model with `hits_addend` 0,
    /// tenant+session), then a stream-done call settling the input and output tokens
    /// (`hits_addend` = the token counts) under a request id used once.
    TokenBudget,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 6] = [
        Scenario::One,
        Scenario::Five,
        Scenario::Wildcard,
        Scenario::HighCardinality,
        Scenario::Rules10k,
        Scenario::TokenBudget,
    ];

    /// The name used on the command line, in file names and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::One => "one",
            Scenario::Five => "five",
            Scenario::Wildcard => "wildcard",
            Scenario::HighCardinality => "high-cardinality",
            Scenario::Rules10k => "rules-10k",
            Scenario::TokenBudget => "token-budget",
        }
    }

    /// The rate-limit domain of the scenario's rules and requests.
    pub fn domain(self) -> &'static str {
        match self {
            Scenario::One => "lt_one",
            Scenario::Five => "lt_five",
            Scenario::Wildcard => "lt_wildcard",
            Scenario::HighCardinality => "lt_high_cardinality",
            Scenario::Rules10k => "lt_rules",
            // The quota model's example domain; its rules carry `quota: {}`, and
            // `tollgate-load setup` gives it tenants, grants, prices and budgets.
            Scenario::TokenBudget => "ai-gateway",
        }
    }
}

/// The window of every generated rule (`rate_limit: {unit: ...}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unit {
    /// Counters live for at most a minute (the default: a run leaves nothing behind).
    #[default]
    Minute,
    /// Counters live until the next full hour.
    Hour,
    /// Counters live until midnight UTC: the memory measurement fills counters for longer
    /// than a minute and must read them all still held.
    Day,
}

impl Unit {
    /// The name in rule files.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
        }
    }
}

/// Knobs shared by rule generation and request generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// Distinct keys in `high-cardinality`.
    pub keys: u64,
    /// Rules in `rules-10k`.
    pub rules: u32,
    /// Requests per `unit` per counter, in every generated rule (token-budget's usage
    /// descriptors match no rule: its budgets count the tokens).
    pub limit: u32,
    /// The window of every generated rule.
    #[serde(default)]
    pub unit: Unit,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            keys: 1_000_000,
            rules: 10_000,
            limit: 1_000_000_000,
            unit: Unit::Minute,
        }
    }
}

/// Wildcard path rules in the `wildcard` scenario; a request's path matches one of them
/// uniformly, so the matcher scans half of them on average.
pub const WILDCARD_PATHS: u64 = 20;
/// Models in `five` and `token-budget`; tenants and sessions in `token-budget`.
pub const MODELS: u64 = 4;
pub const TENANTS: u64 = 20;
const SESSIONS: u64 = 10_000;

/// The id of tenant `i` in `token-budget` (and in `five`'s descriptors).
pub fn tenant_id(i: u64) -> String {
    format!("t{i}")
}

/// The `user_id` value of key `i` in `high-cardinality`.
pub fn user_id(i: u64) -> String {
    format!("u{i}")
}

/// One `high-cardinality` request charging the counters of keys `keys` once each (the
/// memory measurement fills a server with exactly that many counters; a range starting
/// past the keys charged before adds that many new ones).
pub fn fill_request(keys: std::ops::Range<u64>) -> RateLimitRequest {
    request(
        Scenario::HighCardinality.domain(),
        keys.map(|i| plain(&[("user_id", user_id(i))])).collect(),
    )
}

/// The name of model `i`.
pub fn model_name(i: u64) -> String {
    format!("m{i}")
}

/// The rule files for `scenario`: `(file name, YAML)`.
pub fn rules_yaml(scenario: Scenario, params: &Params) -> Vec<(String, String)> {
    let limit = format!(
        "{{unit: {}, requests_per_unit: {}}}",
        params.unit.name(),
        params.limit
    );
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Generated by `tollgate-load rules --scenario {}`.",
        scenario.name()
    );
    let _ = writeln!(y, "domain: {}", scenario.domain());
    if scenario == Scenario::TokenBudget {
        y.push_str("quota: {}\n");
    }
    y.push_str("descriptors:\n");
    match scenario {
        Scenario::One => {
            let _ = writeln!(y, "  - key: api_key\n    rate_limit: {limit}");
        }
        Scenario::Five => {
            let _ = write!(
                y,
                "  - key: remote_address\n    rate_limit: {limit}\n\
                 \x20 - key: api_key\n    rate_limit: {limit}\n    descriptors:\n\
                 \x20     - key: path\n        value: /v1/chat/completions\n        rate_limit: {limit}\n\
                 \x20 - key: tenant_id\n    descriptors:\n\
                 \x20     - key: model\n        rate_limit: {limit}\n\
                 \x20 - key: user_agent\n    rate_limit: {limit}\n"
            );
        }
        Scenario::Wildcard => {
            for i in 0..WILDCARD_PATHS {
                let _ = writeln!(
                    y,
                    "  - key: path\n    value: /svc{i:02}/*\n    rate_limit: {limit}"
                );
            }
            let _ = writeln!(
                y,
                "  - key: user_agent\n    value: crawler*\n    share_threshold: true\n    rate_limit: {limit}"
            );
        }
        Scenario::HighCardinality => {
            let _ = writeln!(y, "  - key: user_id\n    rate_limit: {limit}");
        }
        Scenario::Rules10k => {
            for i in 0..params.rules {
                let _ = writeln!(
                    y,
                    "  - key: route\n    value: r{i}\n    rate_limit: {limit}"
                );
            }
        }
        Scenario::TokenBudget => {
            // The quota block (default keys) makes the domain check tenants and models,
            // guard the request path with the budgets and settle stream-done usage; the
            // rules are ordinary limits next to them. Usage descriptors (with a token type)
            // match no rule: the budgets count them.
            let _ = write!(
                y,
                "  - key: tenant_id\n    rate_limit: {limit}\n    descriptors:\n\
                 \x20     - key: model\n        rate_limit: {limit}\n\
                 \x20     - key: session_id\n        rate_limit: {limit}\n"
            );
        }
    }
    vec![(format!("{}.yaml", scenario.name()), y)]
}

/// Writes the scenario's rule files into `dir` (created if missing), replacing any other
/// rule files there so the server loads exactly this scenario.
pub fn write_rules(
    dir: &Path,
    scenario: Scenario,
    params: &Params,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if is_yaml && path.is_file() {
            std::fs::remove_file(&path)?;
        }
    }
    let mut written = Vec::new();
    for (name, text) in rules_yaml(scenario, params) {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

/// A small, fast, seedable random source (SplitMix64); the load generator must stay cheap.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (n > 0); the tiny modulo bias does not matter here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The second call of a token-budget flow, waiting to be sent.
#[derive(Debug, Clone)]
struct StreamDone {
    tenant: u64,
    model: u64,
    session: u64,
    request_id: String,
}

/// Makes one worker's requests for a scenario.
#[derive(Debug, Clone)]
pub struct Generator {
    scenario: Scenario,
    params: Params,
    rng: Rng,
    worker: u64,
    run: u64,
    seq: u64,
    pending: Option<StreamDone>,
}

impl Generator {
    /// The generator of worker `worker` (each worker gets its own random sequence).
    pub fn new(scenario: Scenario, params: Params, worker: u64) -> Self {
        Self {
            scenario,
            params,
            rng: Rng::new(0x5EED ^ worker.wrapping_mul(0x2545_F491_4F6C_DD1D)),
            worker,
            run: 0,
            seq: 0,
            pending: None,
        }
    }

    /// The same generator for run `run`: request ids (token-budget) name the run, so
    /// runs against one server never repeat one (a repeated settlement is not charged).
    pub fn in_run(mut self, run: u64) -> Self {
        self.run = run;
        self
    }

    /// The next request.
    pub fn next_request(&mut self) -> RateLimitRequest {
        self.seq += 1;
        let rng = &mut self.rng;
        let descriptors = match self.scenario {
            Scenario::One => vec![plain(&[("api_key", format!("key-{}", rng.below(100)))])],
            Scenario::Five => {
                let api_key = format!("key-{}", rng.below(100));
                let tenant = rng.below(100);
                vec![
                    plain(&[(
                        "remote_address",
                        format!("10.0.{}.{}", rng.below(4), rng.below(250)),
                    )]),
                    plain(&[("api_key", api_key.clone())]),
                    plain(&[
                        ("api_key", api_key),
                        ("path", "/v1/chat/completions".into()),
                    ]),
                    plain(&[
                        ("tenant_id", format!("t{tenant}")),
                        ("model", format!("m{}", tenant % MODELS)),
                    ]),
                    plain(&[("user_agent", format!("client/{}", rng.below(10)))]),
                ]
            }
            Scenario::Wildcard => vec![
                plain(&[(
                    "path",
                    format!(
                        "/svc{:02}/items/{}",
                        rng.below(WILDCARD_PATHS),
                        rng.below(1000)
                    ),
                )]),
                plain(&[("user_agent", format!("crawler-{}", rng.below(1000)))]),
            ],
            Scenario::HighCardinality => {
                vec![plain(&[("user_id", user_id(rng.below(self.params.keys)))])]
            }
            Scenario::Rules10k => vec![plain(&[(
                "route",
                format!("r{}", rng.below(u64::from(self.params.rules))),
            )])],
            Scenario::TokenBudget => return self.next_token_budget(),
        };
        request(self.scenario.domain(), descriptors)
    }

    /// Alternates the two calls of one LLM request: request path, then stream done.
    fn next_token_budget(&mut self) -> RateLimitRequest {
        let domain = self.scenario.domain();
        if let Some(flow) = self.pending.take() {
            let (t, m, s) = (
                tenant_id(flow.tenant),
                model_name(flow.model),
                format!("s{}", flow.session),
            );
            let usage = |token_type: &str, hits: u64| {
                with_hits(
                    &[
                        ("tenant_id", t.clone()),
                        ("model", m.clone()),
                        ("session_id", s.clone()),
                        ("request_id", flow.request_id.clone()),
                        ("token_type", token_type.to_owned()),
                    ],
                    hits,
                )
            };
            let input = 200 + self.rng.below(1800);
            let output = 50 + self.rng.below(950);
            return request(domain, vec![usage("input", input), usage("output", output)]);
        }
        let session = self.rng.below(SESSIONS);
        let tenant = session % TENANTS;
        let model = self.rng.below(MODELS);
        let (t, m, s) = (tenant_id(tenant), model_name(model), format!("s{session}"));
        self.pending = Some(StreamDone {
            tenant,
            model,
            session,
            request_id: format!("r-{:x}-{}-{}", self.run, self.worker, self.seq),
        });
        request(
            domain,
            vec![
                plain(&[("tenant_id", t.clone())]),
                with_hits(&[("tenant_id", t.clone()), ("model", m)], 0),
                plain(&[("tenant_id", t), ("session_id", s)]),
            ],
        )
    }
}

fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors,
        hits_addend: 0,
    }
}

fn plain(entries: &[(&str, String)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| Entry {
                key: (*key).to_owned(),
                value: value.clone(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

fn with_hits(entries: &[(&str, String)], hits: u64) -> RateLimitDescriptor {
    RateLimitDescriptor {
        hits_addend: Some(UInt64Value { value: hits }),
        ..plain(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_worker_generates_the_same_sequence() {
        let mut a = Generator::new(Scenario::HighCardinality, Params::default(), 3);
        let mut b = Generator::new(Scenario::HighCardinality, Params::default(), 3);
        let mut c = Generator::new(Scenario::HighCardinality, Params::default(), 4);
        let first: Vec<_> = (0..5).map(|_| a.next_request()).collect();
        assert_eq!(first, (0..5).map(|_| b.next_request()).collect::<Vec<_>>());
        assert_ne!(first, (0..5).map(|_| c.next_request()).collect::<Vec<_>>());
    }

    #[test]
    fn five_sends_five_descriptors() {
        let mut g = Generator::new(Scenario::Five, Params::default(), 0);
        assert_eq!(g.next_request().descriptors.len(), 5);
    }

    #[test]
    fn high_cardinality_values_stay_within_the_key_count() {
        let params = Params {
            keys: 7,
            ..Params::default()
        };
        let mut g = Generator::new(Scenario::HighCardinality, params, 0);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            seen.insert(g.next_request().descriptors[0].entries[0].value.clone());
        }
        assert_eq!(seen.len(), 7);
    }

    #[test]
    fn token_budget_alternates_request_path_and_stream_done_of_one_request() {
        let mut g = Generator::new(Scenario::TokenBudget, Params::default(), 1);
        let path = g.next_request();
        let done = g.next_request();
        assert_eq!(path.descriptors.len(), 3);
        assert_eq!(
            path.descriptors[1].hits_addend,
            Some(UInt64Value { value: 0 })
        );
        assert_eq!(done.descriptors.len(), 2);
        let session = &path.descriptors[2].entries[1].value;
        assert_eq!(&done.descriptors[0].entries[2].value, session);
        assert!(
            done.descriptors
                .iter()
                .all(|d| d.hits_addend.is_some_and(|h| h.value > 0))
        );
        assert_eq!(g.next_request().descriptors.len(), 3);
    }

    #[test]
    fn token_budget_request_ids_name_the_run() {
        let request_id = |run: u64| {
            let mut g = Generator::new(Scenario::TokenBudget, Params::default(), 1).in_run(run);
            g.next_request();
            let done = g.next_request();
            done.descriptors[0].entries[3].value.clone()
        };
        assert_eq!(request_id(7), request_id(7));
        assert_ne!(request_id(7), request_id(8));
    }
}
