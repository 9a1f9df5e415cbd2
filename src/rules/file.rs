//! The YAML shape of one rules file, exactly as the reference service reads it.

use serde::{Deserialize, Deserializer};

/// One file: a domain and its descriptor tree.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default, deserialize_with = "scalar")]
    pub domain: String,
    #[serde(default)]
    pub descriptors: Vec<DescriptorYaml>,
}

/// One node of the descriptor tree.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorYaml {
    #[serde(default, deserialize_with = "scalar")]
    pub key: String,
    #[serde(default, deserialize_with = "optional_scalar")]
    pub value: Option<String>,
    pub rate_limit: Option<RateLimitYaml>,
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
#[serde(deny_unknown_fields)]
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
}

/// A reference to another limit, by name, that this one replaces.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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

fn optional_scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Scalar>::deserialize(d)?.map(Scalar::into_text))
}

/// Parses a file's text; the error is serde's, with the line and column.
pub fn parse(text: &str) -> Result<RulesFile, serde_norway::Error> {
    serde_norway::from_str(text)
}
