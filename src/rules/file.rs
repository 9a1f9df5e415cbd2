//! The YAML shape of one rules file, exactly as the reference service reads it.
//!
//! Keys are checked the reference's way before the typed parse: every mapping key, at any
//! depth, must be one of [`VALID_KEYS`] (free-form `metadata` excepted). A known key in an
//! unusual place is ignored rather than rejected, so every file the reference accepts
//! loads here unchanged.

use serde::{Deserialize, Deserializer};
use serde_norway::Value;

/// Every key the format knows, accepted at any level as the reference does.
pub const VALID_KEYS: &[&str] = &[
    "domain",
    "key",
    "value",
    "descriptors",
    "rate_limit",
    "unit",
    "requests_per_unit",
    "unlimited",
    "shadow_mode",
    "quota_mode",
    "name",
    "replaces",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
    // tollgate's opt-in extensions.
    "rate_limits",
    "window",
    "algorithm",
    "burst",
    "calendar",
    "timezone",
    // tollgate's per-domain quota block (top level only; see `rules::quota`).
    "quota",
    "tenant_key",
    "session_key",
    "model_key",
    "token_type_key",
    "request_id_key",
    "estimate_key",
];

/// One file: a domain and its descriptor tree.
#[derive(Debug, Default, Deserialize)]
pub struct RulesFile {
    #[serde(default, deserialize_with = "scalar")]
    pub domain: String,
    #[serde(default)]
    pub descriptors: Vec<DescriptorYaml>,
    /// tollgate: the domain's quota keys, compiled by `rules::quota` (`Some(Null)` for a
    /// bare `quota:`, which is an error there rather than silently absent).
    #[serde(default, deserialize_with = "present")]
    pub quota: Option<Value>,
}

/// One node of the descriptor tree.
#[derive(Debug, Deserialize)]
pub struct DescriptorYaml {
    #[serde(default, deserialize_with = "scalar")]
    pub key: String,
    #[serde(default, deserialize_with = "optional_scalar")]
    pub value: Option<String>,
    pub rate_limit: Option<RateLimitYaml>,
    /// tollgate: several limits on one node, each named.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitYaml>,
    #[serde(default)]
    pub descriptors: Vec<DescriptorYaml>,
    #[serde(default)]
    pub shadow_mode: bool,
    #[serde(default)]
    pub quota_mode: bool,
    #[serde(default)]
    pub detailed_metric: bool,
    #[serde(default)]
    pub value_to_metric: bool,
    #[serde(default)]
    pub share_threshold: bool,
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A node's limit.
#[derive(Debug, Deserialize)]
pub struct RateLimitYaml {
    #[serde(default, deserialize_with = "optional_scalar")]
    pub unit: Option<String>,
    #[serde(default)]
    pub requests_per_unit: u32,
    #[serde(default)]
    pub unlimited: bool,
    #[serde(default, deserialize_with = "optional_scalar")]
    pub name: Option<String>,
    #[serde(default)]
    pub replaces: Vec<ReplacesYaml>,
    /// tollgate: the window as a duration (`30s`, `5m`, `1h`) instead of one unit.
    #[serde(default, deserialize_with = "optional_scalar")]
    pub window: Option<String>,
    /// tollgate: `fixed_window` (the default), `sliding_window` or `token_bucket`.
    #[serde(default, deserialize_with = "optional_scalar")]
    pub algorithm: Option<String>,
    /// tollgate: a token bucket's capacity (default: `requests_per_unit`).
    pub burst: Option<u64>,
    /// tollgate: day, week, month and year follow the calendar in `timezone`.
    #[serde(default)]
    pub calendar: bool,
    /// tollgate: the IANA timezone of calendar periods (default UTC).
    #[serde(default, deserialize_with = "optional_scalar")]
    pub timezone: Option<String>,
}

/// A reference to another limit, by name, that this one replaces.
#[derive(Debug, Deserialize)]
pub struct ReplacesYaml {
    #[serde(default, deserialize_with = "scalar")]
    pub name: String,
}

/// YAML scalars of any type (`value: 200`, `value: true`) read as their text, as the
/// reference's Go YAML decoder does for string fields.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_text(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Unsigned(n) => n.to_string(),
            Scalar::Signed(n) => n.to_string(),
            Scalar::Float(n) => n.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<Scalar>::deserialize(d)?
        .map(Scalar::into_text)
        .unwrap_or_default())
}

/// Any value, kept as given; `Some` even for an explicit null.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn optional_scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Scalar>::deserialize(d)?.map(Scalar::into_text))
}

/// Why a file could not be read as rules; messages follow the reference's.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("error loading config file: {0}")]
    Yaml(#[from] serde_norway::Error),
    #[error("config error, unknown key '{0}'")]
    UnknownKey(String),
    #[error("config error, key is not of type string: {0}")]
    KeyNotString(String),
    #[error("config error, yaml file contains list of type other than map: {0}")]
    ListOfNonMap(String),
    #[error("config error, quota is only allowed at the top level of a file, beside domain")]
    MisplacedQuota,
}

/// Parses a file's text: syntax, then key names, then types.
pub fn parse(text: &str) -> Result<RulesFile, FileError> {
    let value: Value = serde_norway::from_str(text)?;
    if value.is_null() {
        // An empty file: the loader reports its missing domain.
        return Ok(RulesFile::default());
    }
    check_keys(&value, true)?;
    Ok(serde_norway::from_value(value)?)
}

/// Checks every key at and below `value`; `top` is the file's own mapping.
fn check_keys(value: &Value, top: bool) -> Result<(), FileError> {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                let Value::String(key) = key else {
                    return Err(FileError::KeyNotString(scalar_text(key)));
                };
                if !VALID_KEYS.contains(&key.as_str()) {
                    return Err(FileError::UnknownKey(key.clone()));
                }
                // A misplaced quota block would silently turn tenant checks off: rejected,
                // unlike other known keys. Its fields are checked when it is compiled.
                if key == "quota" && !top {
                    return Err(FileError::MisplacedQuota);
                }
                if key != "metadata" && key != "quota" {
                    check_keys(child, false)?;
                }
            }
            Ok(())
        }
        Value::Sequence(items) => items.iter().try_for_each(|item| match item {
            Value::Mapping(_) => check_keys(item, false),
            other => Err(FileError::ListOfNonMap(scalar_text(other))),
        }),
        _ => Ok(()),
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "<nil>".into(),
        other => format!("{other:?}"),
    }
}
