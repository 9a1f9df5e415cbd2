//! `POST /json`: the RLS request and response in proto3 JSON form.
//!
//! Field names are accepted in camelCase or snake_case, as protobuf's JSON mapping
//! allows; answers use camelCase, enum names, `"58s"` durations, and omit zero fields.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::limiter::{Code, Decision, Descriptor, LimitOverride, Request, Status};
use crate::rules::Unit;

/// A `RateLimitRequest` as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JsonRequest {
    #[serde(default)]
    domain: String,
    #[serde(default)]
    descriptors: Vec<JsonDescriptor>,
    #[serde(default, alias = "hits_addend")]
    hits_addend: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JsonDescriptor {
    #[serde(default)]
    entries: Vec<JsonEntry>,
    #[serde(default)]
    limit: Option<JsonOverride>,
    #[serde(default, alias = "hits_addend")]
    hits_addend: Option<Uint64>,
    #[serde(default, alias = "is_negative_hits")]
    is_negative_hits: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEntry {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JsonOverride {
    #[serde(default, alias = "requests_per_unit")]
    requests_per_unit: u32,
    #[serde(default)]
    unit: Option<JsonUnit>,
}

/// A 64-bit integer: proto3 JSON writes it as a string, but numbers are accepted.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Uint64 {
    Number(u64),
    Text(String),
}

/// An enum value by name or by number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonUnit {
    Name(String),
    Number(i32),
}

impl JsonRequest {
    /// The limiter's view of this request; `Err` says which field is wrong.
    pub fn to_request(&self) -> Result<Request<'_>, String> {
        let descriptors = self
            .descriptors
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let hits_addend = match &d.hits_addend {
                    None => None,
                    Some(Uint64::Number(n)) => Some(*n),
                    Some(Uint64::Text(s)) => Some(s.parse::<u64>().map_err(|_| {
                        format!("descriptors[{i}].hitsAddend: '{s}' is not an unsigned integer")
                    })?),
                };
                let limit = match &d.limit {
                    None => None,
                    Some(o) => Some(LimitOverride {
                        requests_per_unit: o.requests_per_unit,
                        unit: match &o.unit {
                            None => None,
                            Some(JsonUnit::Number(n)) => crate::edge::grpc::unit_from_wire(*n),
                            Some(JsonUnit::Name(name)) => Some(
                                name.parse::<Unit>()
                                    .map_err(|e| format!("descriptors[{i}].limit.unit: {e}"))?,
                            ),
                        },
                    }),
                };
                Ok(Descriptor {
                    entries: d
                        .entries
                        .iter()
                        .map(|e| (e.key.as_str(), e.value.as_str()))
                        .collect(),
                    limit,
                    hits_addend,
                    is_negative_hits: d.is_negative_hits,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Request {
            domain: &self.domain,
            descriptors,
            hits_addend: self.hits_addend,
        })
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::OverLimit => "OVER_LIMIT",
    }
}

/// The decision as a proto3-JSON `RateLimitResponse`.
pub fn response_json(decision: &Decision) -> Value {
    let mut out = Map::new();
    out.insert(
        "overallCode".into(),
        json!(code_name(decision.overall_code)),
    );
    if !decision.statuses.is_empty() {
        out.insert(
            "statuses".into(),
            decision.statuses.iter().map(status_json).collect(),
        );
    }
    if !decision.response_headers.is_empty() {
        let headers = decision
            .response_headers
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        out.insert("responseHeadersToAdd".into(), headers);
    }
    if let Some(meta) = &decision.dynamic_metadata {
        out.insert("dynamicMetadata".into(), Value::Object(meta.clone()));
    }
    if let Some(body) = &decision.raw_body {
        // proto3 JSON writes `bytes` in base64.
        out.insert("rawBody".into(), json!(base64(body.as_bytes())));
    }
    Value::Object(out)
}

/// Standard base64 with padding (RFC 4648), as proto3 JSON writes `bytes`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn status_json(status: &Status) -> Value {
    let mut out = Map::new();
    out.insert("code".into(), json!(code_name(status.code)));
    if let Some(limit) = &status.current_limit {
        let mut l = Map::new();
        if let Some(name) = &limit.name {
            l.insert("name".into(), json!(name));
        }
        if limit.requests_per_unit != 0 {
            l.insert("requestsPerUnit".into(), json!(limit.requests_per_unit));
        }
        if let Some(unit) = limit.unit {
            l.insert("unit".into(), json!(unit.name()));
        }
        out.insert("currentLimit".into(), Value::Object(l));
    }
    if status.limit_remaining != 0 {
        out.insert("limitRemaining".into(), json!(status.limit_remaining));
    }
    if let Some(secs) = status.duration_until_reset {
        out.insert("durationUntilReset".into(), json!(format!("{secs}s")));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_and_snake_case_fields_are_both_accepted() {
        let camel: JsonRequest = serde_json::from_str(
            r#"{"domain":"d","hitsAddend":2,"descriptors":[{"entries":[{"key":"k","value":"v"}],"hitsAddend":"0"}]}"#,
        )
        .unwrap();
        let snake: JsonRequest = serde_json::from_str(
            r#"{"domain":"d","hits_addend":2,"descriptors":[{"entries":[{"key":"k","value":"v"}],"hits_addend":0}]}"#,
        )
        .unwrap();
        for r in [camel, snake] {
            let req = r.to_request().unwrap();
            assert_eq!(req.hits_addend, 2);
            assert_eq!(req.descriptors[0].hits_addend, Some(0));
            assert_eq!(req.descriptors[0].entries, vec![("k", "v")]);
        }
    }

    #[test]
    fn a_bad_override_unit_names_the_field() {
        let r: JsonRequest = serde_json::from_str(
            r#"{"domain":"d","descriptors":[{"entries":[{"key":"k"}],"limit":{"requestsPerUnit":1,"unit":"fortnight"}}]}"#,
        )
        .unwrap();
        let err = r.to_request().unwrap_err();
        assert!(err.contains("descriptors[0].limit.unit"), "{err}");
    }

    #[test]
    fn base64_matches_rfc_4648_test_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn a_raw_body_is_base64_and_a_unitless_limit_omits_its_unit() {
        let decision = Decision {
            overall_code: Code::OverLimit,
            statuses: vec![Status {
                code: Code::OverLimit,
                current_limit: Some(crate::limiter::CurrentLimit {
                    requests_per_unit: 0,
                    unit: None,
                    name: Some("tenant_not_active".into()),
                }),
                ..Status::default()
            }],
            raw_body: Some("{}".into()),
            ..Decision::default()
        };
        assert_eq!(
            response_json(&decision),
            json!({"overallCode":"OVER_LIMIT","statuses":[{"code":"OVER_LIMIT","currentLimit":{"name":"tenant_not_active"}}],"rawBody":"e30="})
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<JsonRequest>(r#"{"domain":"d","bogus":1}"#).is_err());
    }

    #[test]
    fn zero_fields_are_omitted_and_durations_are_strings() {
        let decision = Decision {
            overall_code: Code::OverLimit,
            statuses: vec![Status {
                code: Code::OverLimit,
                current_limit: Some(crate::limiter::CurrentLimit {
                    requests_per_unit: 5,
                    unit: Some(Unit::Minute),
                    name: None,
                }),
                limit_remaining: 0,
                duration_until_reset: Some(58),
            }],
            ..Decision::default()
        };
        assert_eq!(
            response_json(&decision),
            json!({"overallCode":"OVER_LIMIT","statuses":[{"code":"OVER_LIMIT","currentLimit":{"requestsPerUnit":5,"unit":"MINUTE"},"durationUntilReset":"58s"}]})
        );
    }
}
