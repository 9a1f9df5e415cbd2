//! Typed, layered settings: built-in defaults, then a TOML file, then `TOLLGATE_*`
//! environment variables (each field's upper-cased name, e.g. `TOLLGATE_STORE`).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::limiter::{HeaderNames, LimiterOptions};
use crate::rules::LoadOptions;
use crate::store::redis::RedisOptions;

/// Everything an operator can set. The README's configuration reference lists each
/// field with its reference-service equivalent.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where Envoy calls `ShouldRateLimit` (the reference's `GRPC_HOST:GRPC_PORT`).
    pub grpc_addr: SocketAddr,
    /// Health check, `/json`, config dump and metrics (the reference's `HOST:PORT`).
    pub http_addr: SocketAddr,
    /// Directory of YAML rule files.
    pub rules_dir: PathBuf,
    /// Reload the rules when the directory changes.
    pub watch_rules: bool,
    /// Combine files that declare the same domain (`MERGE_DOMAIN_CONFIG`).
    pub merge_domains: bool,
    /// `memory`, or a Redis URL: `redis://`, `rediss://`, `redis+sentinel://`, `redis+cluster://`.
    pub store: String,
    /// Longest wait for the store before the call fails with UNAVAILABLE, in milliseconds.
    pub store_deadline_ms: u64,
    /// Seconds a session's lifetime counters outlive its last request.
    pub session_idle_ttl_secs: u64,
    /// Seconds an unsettled budget reservation holds its budgets before it is released.
    pub reservation_ttl_secs: u64,
    /// Seconds a settled request id is remembered, so a repeated settlement is not charged.
    pub settled_ttl_secs: u64,
    /// PEM file of the CA certificates a `rediss` store's servers are verified against,
    /// instead of the public webpki roots (`REDIS_TLS_CACERT`).
    pub redis_tls_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate presented to Redis servers that ask for one;
    /// needs `redis_tls_client_key_file` (`REDIS_TLS_CLIENT_CERT`).
    pub redis_tls_client_cert_file: Option<PathBuf>,
    /// PEM file of that certificate's private key (`REDIS_TLS_CLIENT_KEY`).
    pub redis_tls_client_key_file: Option<PathBuf>,
    /// Prepended to every counter key (`CACHE_KEY_PREFIX`).
    pub key_prefix: String,
    /// Fraction of a limit past which hits count as near it (`NEAR_LIMIT_RATIO`).
    pub near_limit_ratio: f32,
    /// Global shadow mode: never answer OVER_LIMIT overall (`SHADOW_MODE`).
    pub shadow_mode: bool,
    /// Add rate-limit headers to responses (`LIMIT_RESPONSE_HEADERS_ENABLED`).
    pub response_headers: bool,
    /// `LIMIT_LIMIT_HEADER`.
    pub header_limit: String,
    /// `LIMIT_REMAINING_HEADER`.
    pub header_remaining: String,
    /// `LIMIT_RESET_HEADER`.
    pub header_reset: String,
    /// Return dynamic metadata (`RESPONSE_DYNAMIC_METADATA`).
    pub dynamic_metadata: bool,
    /// Do not count hits that would pass the limit (`STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT`).
    pub stop_incrementing_when_over_limit: bool,
    /// Over-limit keys remembered locally, in entries; 0 disables (`LOCAL_CACHE_SIZE_IN_BYTES`).
    pub local_cache_size: usize,
    /// Report unhealthy until a rules set with a domain is loaded
    /// (`HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED`).
    pub healthy_requires_rules: bool,
    /// On shutdown, seconds to keep serving after health turns NOT_SERVING, so load
    /// balancers stop sending traffic first.
    pub shutdown_delay_secs: u64,
    /// On shutdown, seconds in-flight calls get to finish.
    pub shutdown_grace_secs: u64,
    /// `text` or `json` log lines (`LOG_FORMAT`).
    pub log_format: LogFormat,
    /// The budget ledger and admin state: `sqlite://path` (created if missing) or
    /// `postgres://user:pass@host/db`.
    pub database_url: String,
    /// Apply pending database migrations at startup (else run `tollgate migrate`).
    pub migrate_on_start: bool,
    /// On first start (no admin token exists yet), this secret becomes an admin token.
    pub bootstrap_token: Option<String>,
    /// Seconds between full reloads of tenants, budgets and prices, as a backstop to
    /// change notifications.
    pub policy_resync_secs: u64,
    /// The memory store's usage outbox: settled usage events wait in this file until the
    /// ledger has them (created if missing; events an earlier run left are written first).
    /// Beside it, `<outbox_path>.acked` holds how far the ledger has got.
    pub outbox_path: PathBuf,
    /// Milliseconds between the ledger writer's drains of the outbox (it also drains at
    /// once after each settlement).
    pub ledger_writer_interval_ms: u64,
    /// Budget alerts are also POSTed as JSON to this `http://` or `https://` URL (none: only
    /// logged and counted). It may carry a secret, so it is never logged.
    pub alert_webhook_url: Option<String>,
    /// Longest wait for one alert webhook delivery, in milliseconds.
    pub alert_webhook_timeout_ms: u64,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Longest lifetime accepted for the quota TTL settings: a year.
const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 8081)),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            rules_dir: PathBuf::from("config"),
            watch_rules: true,
            merge_domains: false,
            store: "memory".into(),
            store_deadline_ms: 10,
            session_idle_ttl_secs: crate::limiter::quota::DEFAULT_SESSION_IDLE_TTL.as_secs(),
            reservation_ttl_secs: crate::limiter::DEFAULT_RESERVATION_TTL.as_secs(),
            settled_ttl_secs: crate::limiter::DEFAULT_SETTLED_TTL.as_secs(),
            redis_tls_ca_file: None,
            redis_tls_client_cert_file: None,
            redis_tls_client_key_file: None,
            key_prefix: String::new(),
            near_limit_ratio: 0.8,
            shadow_mode: false,
            response_headers: false,
            header_limit: "RateLimit-Limit".into(),
            header_remaining: "RateLimit-Remaining".into(),
            header_reset: "RateLimit-Reset".into(),
            dynamic_metadata: false,
            stop_incrementing_when_over_limit: false,
            local_cache_size: 0,
            healthy_requires_rules: false,
            shutdown_delay_secs: 0,
            shutdown_grace_secs: 10,
            log_format: LogFormat::Text,
            database_url: "sqlite://tollgate.db".into(),
            migrate_on_start: true,
            bootstrap_token: None,
            policy_resync_secs: 30,
            outbox_path: PathBuf::from("tollgate-outbox.jsonl"),
            ledger_writer_interval_ms: 200,
            alert_webhook_url: None,
            alert_webhook_timeout_ms: 5_000,
        }
    }
}

/// The settings could not be read or are invalid; the message names the field and source.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{0}")]
    Source(#[from] Box<figment::Error>),
    #[error("setting '{field}': {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

impl Settings {
    /// Defaults, then `file` (if given), then the process's `TOLLGATE_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(SettingsError::Invalid {
                    field: "config file",
                    problem: format!("{} does not exist or is not a file", file.display()),
                });
            }
            figment = figment.merge(Toml::file(file));
        }
        // `TOLLGATE_CONFIG` names the settings file itself, and `TOLLGATE_TEST_*` belong to
        // the test suite (which databases to use): neither is a setting.
        let env = Env::prefixed("TOLLGATE_")
            .ignore(&["config"])
            .filter(|key| {
                !key.as_str()
                    .get(..5)
                    .is_some_and(|p| p.eq_ignore_ascii_case("test_"))
            });
        let settings: Settings = figment.merge(env).extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |field, problem: &str| {
            Err(SettingsError::Invalid {
                field,
                problem: problem.to_owned(),
            })
        };
        if !(self.near_limit_ratio > 0.0 && self.near_limit_ratio <= 1.0) {
            return invalid("near_limit_ratio", "must be greater than 0 and at most 1");
        }
        if self.key_prefix.contains(['{', '}']) {
            return invalid(
                "key_prefix",
                "must not contain '{' or '}' (they would override the Redis Cluster hash tag)",
            );
        }
        if self.store_deadline_ms == 0 {
            return invalid("store_deadline_ms", "must be at least 1");
        }
        for (field, secs) in [
            ("session_idle_ttl_secs", self.session_idle_ttl_secs),
            ("reservation_ttl_secs", self.reservation_ttl_secs),
            ("settled_ttl_secs", self.settled_ttl_secs),
        ] {
            if !(1..=MAX_TTL_SECS).contains(&secs) {
                return invalid(field, "must be between 1 and 31536000 seconds (a year)");
            }
        }
        let known = [
            "memory",
            "redis://",
            "rediss://",
            "redis+sentinel://",
            "rediss+sentinel://",
            "redis+cluster://",
            "rediss+cluster://",
        ];
        if !known
            .iter()
            .any(|k| self.store == *k || (k.ends_with("://") && self.store.starts_with(k)))
        {
            return invalid(
                "store",
                "must be 'memory' or a redis://, rediss://, redis+sentinel:// or redis+cluster:// URL",
            );
        }
        self.validate_redis_tls()?;
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|p| self.database_url.starts_with(p))
        {
            return invalid(
                "database_url",
                "must be a sqlite:// path or a postgres:// URL",
            );
        }
        if self.bootstrap_token.as_ref().is_some_and(|t| t.len() < 32) {
            return invalid("bootstrap_token", "must be at least 32 characters");
        }
        if self.policy_resync_secs == 0 {
            return invalid("policy_resync_secs", "must be at least 1");
        }
        if self.ledger_writer_interval_ms == 0 {
            return invalid("ledger_writer_interval_ms", "must be at least 1");
        }
        if let Some(url) = &self.alert_webhook_url
            && let Err(problem) = crate::alerts::check_webhook_url(url)
        {
            return invalid("alert_webhook_url", &problem);
        }
        if self.alert_webhook_timeout_ms == 0 {
            return invalid("alert_webhook_timeout_ms", "must be at least 1");
        }
        for (field, name) in [
            ("header_limit", &self.header_limit),
            ("header_remaining", &self.header_remaining),
            ("header_reset", &self.header_reset),
        ] {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                return invalid(
                    field,
                    "must be a non-empty header name (letters, digits, '-' and '_')",
                );
            }
        }
        Ok(())
    }

    /// The Redis TLS files: given only with a TLS store, the client certificate and key
    /// together, each one readable PEM of the right kind, the key the certificate's.
    fn validate_redis_tls(&self) -> Result<(), SettingsError> {
        let files = [
            ("redis_tls_ca_file", &self.redis_tls_ca_file),
            (
                "redis_tls_client_cert_file",
                &self.redis_tls_client_cert_file,
            ),
            ("redis_tls_client_key_file", &self.redis_tls_client_key_file),
        ];
        let Some((field, _)) = files.iter().find(|(_, file)| file.is_some()) else {
            return Ok(());
        };
        let tls = ["rediss://", "rediss+sentinel://", "rediss+cluster://"];
        if !tls.iter().any(|p| self.store.starts_with(p)) {
            return Err(SettingsError::Invalid {
                field,
                problem: format!(
                    "only applies to a TLS Redis store (rediss://, rediss+sentinel:// or rediss+cluster://), and store is {}",
                    redact_url(&self.store)
                ),
            });
        }
        match self.redis_options().tls_certificates() {
            Ok(_) => Ok(()),
            Err(e) => Err(SettingsError::Invalid {
                field: e.file.setting(),
                problem: e.problem,
            }),
        }
    }

    /// How to reach the Redis store (when `store` names one).
    pub fn redis_options(&self) -> RedisOptions {
        let mut options = RedisOptions::new(self.store.clone(), self.store_deadline());
        options.tls_ca_file = self.redis_tls_ca_file.clone();
        options.tls_client_cert_file = self.redis_tls_client_cert_file.clone();
        options.tls_client_key_file = self.redis_tls_client_key_file.clone();
        // The store reads its usage outbox under the same prefix the limiter writes.
        options.key_prefix = self.key_prefix.clone();
        options
    }

    /// The limiter's options.
    pub fn limiter_options(&self) -> LimiterOptions {
        LimiterOptions {
            key_prefix: self.key_prefix.clone(),
            near_limit_ratio: self.near_limit_ratio,
            global_shadow_mode: self.shadow_mode,
            stop_incrementing_when_over_limit: self.stop_incrementing_when_over_limit,
            response_headers: self.response_headers.then(|| HeaderNames {
                limit: self.header_limit.clone(),
                remaining: self.header_remaining.clone(),
                reset: self.header_reset.clone(),
            }),
            dynamic_metadata: self.dynamic_metadata,
            store_deadline: self.store_deadline(),
            local_cache_size: self.local_cache_size,
            session_idle_ttl: Duration::from_secs(self.session_idle_ttl_secs),
            reservation_ttl: Duration::from_secs(self.reservation_ttl_secs),
            settled_ttl: Duration::from_secs(self.settled_ttl_secs),
        }
    }

    /// How budget alerts are delivered.
    pub fn alerter_options(&self) -> crate::alerts::AlerterOptions {
        crate::alerts::AlerterOptions {
            webhook_url: self.alert_webhook_url.clone(),
            webhook_timeout: Duration::from_millis(self.alert_webhook_timeout_ms),
            ..crate::alerts::AlerterOptions::default()
        }
    }

    /// How rule files are loaded.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            merge_domains: self.merge_domains,
        }
    }

    /// How often the ledger writer drains the outbox.
    pub fn ledger_writer_interval(&self) -> Duration {
        Duration::from_millis(self.ledger_writer_interval_ms)
    }

    /// The store deadline as a duration.
    pub fn store_deadline(&self) -> Duration {
        Duration::from_millis(self.store_deadline_ms)
    }
}

/// The store URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field("rules_dir", &self.rules_dir)
            .field("store", &redact_url(&self.store))
            .field("key_prefix", &self.key_prefix)
            .field("database_url", &redact_url(&self.database_url))
            .field(
                "bootstrap_token",
                &self.bootstrap_token.as_ref().map(|_| "***"),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
// figment::Jail returns its large error type by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_reference_ports() {
        let s = Settings::default();
        assert_eq!(s.grpc_addr.port(), 8081);
        assert_eq!(s.http_addr.port(), 8080);
        assert_eq!(s.store, "memory");
        assert!(s.validate().is_ok());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        let s = Settings {
            store: "rediss://:pw@h:1".into(),
            ..Settings::default()
        };
        assert!(!format!("{s:?}").contains("pw"));
    }

    #[test]
    fn invalid_values_name_their_field() {
        let bad = Settings {
            near_limit_ratio: 1.5,
            ..Settings::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("near_limit_ratio")
        );
        let bad = Settings {
            store: "mysql://x".into(),
            ..Settings::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("'store'"));
        let bad = Settings {
            key_prefix: "{x}".into(),
            ..Settings::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn an_alert_webhook_must_be_an_http_url() {
        let with = |url: &str| Settings {
            alert_webhook_url: Some(url.into()),
            ..Settings::default()
        };
        assert!(
            with("https://hooks.example.com/T0/B0/secret")
                .validate()
                .is_ok()
        );
        assert!(with("http://127.0.0.1:9000/alerts").validate().is_ok());
        for bad in ["ftp://example.com/x", "hooks.example.com/x", "https://", ""] {
            let err = with(bad).validate().unwrap_err().to_string();
            assert!(err.contains("'alert_webhook_url'"), "{bad:?}: {err}");
        }
        let err = with("https://user:hunter2@/x")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let bad = Settings {
            alert_webhook_timeout_ms: 0,
            ..Settings::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("'alert_webhook_timeout_ms'")
        );
    }

    #[test]
    fn the_outbox_has_a_default_file_and_the_writer_a_positive_interval() {
        let s = Settings::default();
        assert_eq!(s.outbox_path, PathBuf::from("tollgate-outbox.jsonl"));
        assert_eq!(s.ledger_writer_interval(), Duration::from_millis(200));
        let bad = Settings {
            ledger_writer_interval_ms: 0,
            ..Settings::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("'ledger_writer_interval_ms'")
        );
    }

    #[test]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "store = \"redis://127.0.0.1:6379\"\nkey_prefix = \"file\"\n",
            )?;
            jail.set_env("TOLLGATE_KEY_PREFIX", "env");
            jail.set_env("TOLLGATE_STORE_DEADLINE_MS", "25");
            let s = Settings::load(Some(Path::new("t.toml"))).expect("loads");
            assert_eq!(s.store, "redis://127.0.0.1:6379");
            assert_eq!(s.key_prefix, "env");
            assert_eq!(s.store_deadline_ms, 25);
            Ok(())
        });
    }

    #[test]
    fn a_bad_environment_value_names_the_variable() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TOLLGATE_STORE_DEADLINE_MS", "soon");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(
                err.contains("STORE_DEADLINE_MS") && err.contains("TOLLGATE_"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment::Error
    fn redis_tls_files_come_from_the_environment_and_are_checked() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TOLLGATE_STORE", "rediss://localhost:6380");
            jail.set_env("TOLLGATE_REDIS_TLS_CA_FILE", "missing-ca.pem");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(
                err.contains("'redis_tls_ca_file'")
                    && err.contains("missing-ca.pem")
                    && err.contains("does not exist"),
                "{err}"
            );
            jail.create_file("not-a-cert.pem", "hello\n")?;
            jail.set_env("TOLLGATE_REDIS_TLS_CA_FILE", "not-a-cert.pem");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(
                err.contains("'redis_tls_ca_file'") && err.contains("no PEM certificate"),
                "{err}"
            );
            jail.clear_env();
            jail.set_env("TOLLGATE_STORE", "rediss://localhost:6380");
            jail.set_env("TOLLGATE_REDIS_TLS_CLIENT_CERT_FILE", "client.pem");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(
                err.contains("'redis_tls_client_key_file'") && err.contains("not set"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn test_suite_variables_are_not_settings() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TOLLGATE_TEST_POSTGRES_URL", "postgres://x@127.0.0.1/y");
            jail.set_env("TOLLGATE_KEY_PREFIX", "p:");
            let s = Settings::load(None).expect("test variables are ignored");
            assert_eq!(s.key_prefix, "p:");
            jail.set_env("TOLLGATE_STROE", "memory");
            assert!(
                Settings::load(None)
                    .unwrap_err()
                    .to_string()
                    .contains("stroe")
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("t.toml", "stroe = \"memory\"\n")?;
            let err = Settings::load(Some(Path::new("t.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("stroe"), "{err}");
            Ok(())
        });
    }
}
