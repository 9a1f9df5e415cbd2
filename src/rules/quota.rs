//! tollgate's per-domain `quota:` block: which descriptor keys carry the tenant, session,
//! model, token type, request id and token estimate of LLM traffic.
//!
//! Opt-in: a file without the block loads exactly as the reference would, and the domain's
//! decisions never consult the tenant policy. With it (`quota: {}` takes every default),
//! descriptors that carry the tenant key are checked against the in-memory policy before
//! their ordinary rules apply (see `limiter::quota`).
//!
//! ```yaml
//! domain: ai-gateway
//! quota: {tenant_key: tenant_id, model_key: model}
//! descriptors: [...]
//! ```

use serde_norway::Value;

/// The block's fields, their defaults, and where each lands in [`QuotaKeys`].
const FIELDS: [(&str, &str); 6] = [
    ("tenant_key", "tenant_id"),
    ("session_key", "session_id"),
    ("model_key", "model"),
    ("token_type_key", "token_type"),
    ("request_id_key", "request_id"),
    ("estimate_key", "estimate"),
];

/// The descriptor keys a quota domain reads, compiled from its `quota:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaKeys {
    /// The tenant slug (default `tenant_id`); a descriptor with it is checked.
    pub tenant: String,
    /// The MCP session id (default `session_id`).
    pub session: String,
    /// The model (default `model`); checked against the tenant's granted models.
    pub model: String,
    /// The token type of a usage descriptor on stream done (default `token_type`).
    pub token_type: String,
    /// The request id that groups a request's reservation and usage (default `request_id`).
    pub request_id: String,
    /// A token estimate to reserve on the request path (default `estimate`).
    pub estimate: String,
}

impl Default for QuotaKeys {
    fn default() -> Self {
        let [tenant, session, model, token_type, request_id, estimate] =
            FIELDS.map(|(_, default)| default.to_owned());
        Self {
            tenant,
            session,
            model,
            token_type,
            request_id,
            estimate,
        }
    }
}

impl QuotaKeys {
    /// Compiles a file's `quota:` value; the error says which field is wrong and why.
    pub fn from_yaml(value: &Value) -> Result<QuotaKeys, String> {
        let Value::Mapping(map) = value else {
            return Err("quota must be a mapping of descriptor key names (use `quota: {}` for the defaults)".to_owned());
        };
        let mut keys: [Option<String>; 6] = Default::default();
        for (field, given) in map {
            let Value::String(field) = field else {
                return Err(format!(
                    "quota: field names must be strings, found {field:?}"
                ));
            };
            let Some(slot) = FIELDS.iter().position(|(name, _)| name == field) else {
                let expected: Vec<&str> = FIELDS.iter().map(|(name, _)| *name).collect();
                return Err(format!(
                    "quota: unknown field '{field}' (expected one of {})",
                    expected.join(", ")
                ));
            };
            match given {
                Value::String(key) if !key.trim().is_empty() => keys[slot] = Some(key.clone()),
                Value::String(_) | Value::Null => {
                    return Err(format!(
                        "quota.{field} must not be empty (omit it for the default '{}')",
                        FIELDS[slot].1
                    ));
                }
                other => {
                    return Err(format!(
                        "quota.{field} must be a descriptor key name, found {other:?}"
                    ));
                }
            }
        }
        let [tenant, session, model, token_type, request_id, estimate] =
            std::array::from_fn(|i| keys[i].take().unwrap_or_else(|| FIELDS[i].1.to_owned()));
        let compiled = QuotaKeys {
            tenant,
            session,
            model,
            token_type,
            request_id,
            estimate,
        };
        compiled.check_distinct()?;
        Ok(compiled)
    }

    /// Every key with its field name, in the block's order.
    pub fn fields(&self) -> [(&'static str, &str); 6] {
        [
            (FIELDS[0].0, &self.tenant),
            (FIELDS[1].0, &self.session),
            (FIELDS[2].0, &self.model),
            (FIELDS[3].0, &self.token_type),
            (FIELDS[4].0, &self.request_id),
            (FIELDS[5].0, &self.estimate),
        ]
    }

    /// Two meanings cannot share one descriptor key.
    fn check_distinct(&self) -> Result<(), String> {
        let fields = self.fields();
        for (i, (a, key)) in fields.iter().enumerate() {
            if let Some((b, _)) = fields[i + 1..].iter().find(|(_, other)| other == key) {
                return Err(format!(
                    "quota.{a} and quota.{b} both name descriptor key '{key}'; each must be distinct"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<QuotaKeys, String> {
        QuotaKeys::from_yaml(&serde_norway::from_str(yaml).unwrap())
    }

    #[test]
    fn an_empty_block_takes_every_default() {
        let keys = compile("{}").unwrap();
        assert_eq!(keys, QuotaKeys::default());
        assert_eq!(keys.tenant, "tenant_id");
        assert_eq!(keys.session, "session_id");
        assert_eq!(keys.model, "model");
        assert_eq!(keys.token_type, "token_type");
        assert_eq!(keys.request_id, "request_id");
        assert_eq!(keys.estimate, "estimate");
    }

    #[test]
    fn given_fields_replace_their_default_only() {
        let keys = compile("{tenant_key: x-tenant, model_key: llm}").unwrap();
        assert_eq!(keys.tenant, "x-tenant");
        assert_eq!(keys.model, "llm");
        assert_eq!(keys.session, "session_id");
    }

    #[test]
    fn an_unknown_field_is_named_with_the_expected_ones() {
        let err = compile("{tenant: t}").unwrap_err();
        assert!(
            err.contains("unknown field 'tenant'") && err.contains("tenant_key"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_or_null_key_name_is_rejected() {
        assert!(
            compile("{tenant_key: ''}")
                .unwrap_err()
                .contains("quota.tenant_key must not be empty")
        );
        assert!(
            compile("{model_key: }")
                .unwrap_err()
                .contains("quota.model_key must not be empty")
        );
        assert!(
            compile("{model_key: [a]}")
                .unwrap_err()
                .contains("quota.model_key must be a descriptor key name")
        );
    }

    #[test]
    fn a_block_that_is_not_a_mapping_is_rejected() {
        assert!(
            compile("~")
                .unwrap_err()
                .contains("quota must be a mapping")
        );
        assert!(
            compile("tenant_id")
                .unwrap_err()
                .contains("quota must be a mapping")
        );
    }

    #[test]
    fn two_meanings_cannot_share_a_key() {
        let err = compile("{tenant_key: model}").unwrap_err();
        assert!(
            err.contains("quota.tenant_key and quota.model_key both name descriptor key 'model'"),
            "{err}"
        );
    }
}
