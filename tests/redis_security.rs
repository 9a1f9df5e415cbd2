//! AUTH and TLS against real, private Redis servers.
//!
//! Every test starts its own `redis-server` on a free port (no persistence, its own temp
//! directory), configured the way the test needs (`--requirepass`, ACL users, TLS only,
//! client certificates required, a TLS Sentinel or Cluster), and kills it when the test
//! ends, passes or fails. The shared Redis on 6379 is never touched. TLS certificates are
//! made with the `openssl` CLI: a throwaway CA, a server certificate it signs for
//! `localhost` and `127.0.0.1`, and a client certificate it signs.
//!
//! `#insecure` (skip verification) needs redis' `tls-rustls-insecure` feature: without it
//! every such connection fails with `InvalidClientConfig`, which the TLS tests catch.
//!
//! Without TLS files `rediss://` trusts the public webpki roots only, so a private CA's
//! server is refused; `redis_tls_ca_file` (`RedisOptions::tls_ca_file`) trusts that CA
//! instead, with the server's name still checked, and `redis_tls_client_cert_file` /
//! `redis_tls_client_key_file` answer servers that demand a client certificate
//! (`tls-auth-clients yes`): on one node, through Sentinel (sentinels and master) and
//! across a Cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use redis::{ClientTlsConfig, TlsCertificates};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tollgate::app::App;
use tollgate::clock::ManualClock;
use tollgate::settings::Settings;
use tollgate::store::redis::RedisOptions;
use tollgate::store::{CounterStore, CounterUpdate, RedisStore, StoreError};

#[path = "support/private_redis.rs"]
mod private_redis;
use private_redis::{PrivateRedis, Ready, base_args, free_cluster_port, free_port, split_args};

/// Per-call deadline and connect timeout given to the store under test.
const DEADLINE: Duration = Duration::from_secs(2);

/// What a failing call may take beyond its bound on a machine busy with builds.
const SLACK: Duration = Duration::from_secs(3);

/// Upper bound for every readiness loop (servers starting).
const PATIENCE: Duration = Duration::from_secs(20);

/// Upper bound for a whole test: a hang anywhere fails the test instead of stalling it.
const TEST_BUDGET: Duration = Duration::from_secs(90);

const PASSWORD: &str = "s3cret-Tollgate-pw";

/// Runs a test body, failing it if it takes longer than [`TEST_BUDGET`]. Dropping the
/// body on timeout drops its guards, which kill its servers.
async fn bounded(body: impl Future<Output = ()>) {
    if tokio::time::timeout(TEST_BUDGET, body).await.is_err() {
        panic!("the test did not finish within {TEST_BUDGET:?}");
    }
}

fn add(key: &str, hits: u64) -> CounterUpdate {
    CounterUpdate::window(key, hits, 60)
}

fn read(key: &str) -> CounterUpdate {
    add(key, 0)
}

fn options(url: &str) -> RedisOptions {
    let mut options = RedisOptions::new(url, DEADLINE);
    options.connect_timeout = DEADLINE;
    options
}

/// Options for `url` trusting `ca` (when given) and presenting `client` (when given).
fn tls_options(url: &str, ca: Option<&Certs>, client: Option<&Certs>) -> RedisOptions {
    let mut options = options(url);
    options.tls_ca_file = ca.map(|c| c.ca.clone());
    options.tls_client_cert_file = client.map(|c| c.client_cert.clone());
    options.tls_client_key_file = client.map(|c| c.client_key.clone());
    options
}

/// A URL, or full options, for the assertions below.
trait Target {
    fn options(self) -> RedisOptions;
}

impl Target for &str {
    fn options(self) -> RedisOptions {
        options(self)
    }
}

impl Target for &String {
    fn options(self) -> RedisOptions {
        options(self)
    }
}

impl Target for RedisOptions {
    fn options(self) -> RedisOptions {
        self
    }
}

/// A store for `target` that answers: healthy, counts, and reads its count back.
async fn assert_counts(target: impl Target) -> RedisStore {
    let store = RedisStore::connect_with(target.options())
        .await
        .expect("a valid URL gives a store");
    if !store.is_healthy() {
        let why = store.apply(&[read("k")]).await;
        panic!("{} is not healthy: {why:?}", store.describe());
    }
    assert_eq!(store.apply(&[add("k", 1)]).await.unwrap(), vec![0]);
    assert_eq!(store.apply(&[add("k", 2)]).await.unwrap(), vec![1]);
    assert_eq!(store.apply(&[read("k")]).await.unwrap(), vec![3]);
    assert!(store.is_healthy());
    store
}

/// A store for `url` that cannot talk to its server: it is still built (an unreachable
/// Redis never stops startup), reports unhealthy, and every call fails with an error
/// within its bound, never hangs. Returns the errors' texts (Display and Debug).
async fn assert_refused(target: impl Target) -> String {
    let started = Instant::now();
    let store = RedisStore::connect_with(target.options())
        .await
        .expect("a valid URL gives a store even when the server refuses it");
    let connecting = started.elapsed();
    assert!(
        connecting < DEADLINE + SLACK,
        "building the store took {connecting:?}"
    );
    assert!(!store.is_healthy(), "{} reports healthy", store.describe());
    let mut texts = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let result = store.apply(&[add("k", 1)]).await;
        let took = started.elapsed();
        let err = match result {
            Ok(values) => panic!("{}: a call succeeded: {values:?}", store.describe()),
            Err(err) => err,
        };
        assert!(
            took < DEADLINE + SLACK,
            "the failing call took {took:?}: {err}"
        );
        texts.push(format!("{err} / {err:?}"));
    }
    assert!(!store.is_healthy());
    texts.push(format!("{store:?} / {}", store.describe()));
    texts.join("\n")
}

/// The error of one call through a store that is refused, which must come at once
/// rather than when the deadline runs out: the server said no, nothing was left hanging.
async fn prompt_refusal(target: impl Target) -> StoreError {
    let options = target.options();
    let url = options.url.clone();
    let store = RedisStore::connect_with(options).await.unwrap();
    let started = Instant::now();
    let err = store
        .apply(&[add("k", 1)])
        .await
        .expect_err("the call should fail");
    let took = started.elapsed();
    assert!(took < DEADLINE, "{url}: the refusal took {took:?}: {err}");
    err
}

/// The configuration error `RedisStore::connect_with` gives for `options`.
async fn config_error(options: RedisOptions) -> String {
    match RedisStore::connect_with(options).await {
        Ok(store) => panic!("{} was built", store.describe()),
        Err(err) => err.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// AUTH
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_password_in_the_url_authenticates() {
    bounded(async {
        let redis = SecureRedis::start(Plain, &["--requirepass", PASSWORD]).await;
        let url = format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port());
        let store = assert_counts(&url).await;

        // The count is really in that server: read it behind the store's back.
        let mut conn = direct(&url).await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys, vec!["k".to_owned()]);
        let value: u64 = redis::cmd("GET")
            .arg("k")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(value, 3);

        // What the store shows of itself hides the password.
        let shown = format!("{store:?} {}", store.describe());
        assert!(!shown.contains(PASSWORD), "{shown}");
        assert!(shown.contains(":***@"), "{shown}");
    })
    .await;
}

#[tokio::test]
async fn a_wrong_or_missing_password_fails_cleanly_and_never_shows_the_password() {
    bounded(async {
        let redis = SecureRedis::start(Plain, &["--requirepass", PASSWORD]).await;
        let port = redis.port();

        let wrong = "Wrong-pw-7f3a9c";
        let texts = assert_refused(&format!("redis://:{wrong}@127.0.0.1:{port}")).await;
        assert!(!texts.contains(wrong), "the wrong password shows:\n{texts}");
        assert!(
            !texts.contains(PASSWORD),
            "the real password shows:\n{texts}"
        );
        let err = prompt_refusal(&format!("redis://:{wrong}@127.0.0.1:{port}")).await;
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(
            err.to_string().contains("authentication failed"),
            "the error should say why: {err}"
        );

        // The default user named explicitly, with the wrong password.
        let texts = assert_refused(&format!("redis://default:{wrong}@127.0.0.1:{port}")).await;
        assert!(!texts.contains(wrong), "{texts}");

        // No password at all.
        let texts = assert_refused(&format!("redis://127.0.0.1:{port}")).await;
        assert!(
            texts.contains("NOAUTH"),
            "the error should say why:\n{texts}"
        );

        // The server itself was fine all along.
        assert_counts(&format!("redis://:{PASSWORD}@127.0.0.1:{port}")).await;
    })
    .await;
}

#[tokio::test]
async fn an_acl_user_and_password_authenticate_and_nothing_else_does() {
    bounded(async {
        // `default` is off, so only a named user gets in; `bob`'s password needs
        // percent-encoding in a URL; `carol` may not touch the store's keys.
        let redis = SecureRedis::start(
            Plain,
            &[
                "--user default off",
                "--user alice on >pw ~* +@all",
                "--user bob on >p@ss:w/rd% ~* +@all",
                "--user carol on >pw ~elsewhere:* +@all",
            ],
        )
        .await;
        let port = redis.port();

        assert_counts(&format!("redis://alice:pw@127.0.0.1:{port}")).await;
        // Percent-encoded credentials are decoded before AUTH.
        assert_counts(&format!(
            "redis://bob:p%40ss%3Aw%2Frd%25@127.0.0.1:{port}/1"
        ))
        .await;

        let texts = assert_refused(&format!("redis://alice:not-pw@127.0.0.1:{port}")).await;
        assert!(!texts.contains("not-pw"), "{texts}");
        assert!(texts.contains("authentication failed"), "{texts}");
        // The right password under no user is the (disabled) default user's.
        assert_refused(&format!("redis://:pw@127.0.0.1:{port}")).await;
        assert_refused(&format!("redis://mallory:pw@127.0.0.1:{port}")).await;
        assert_refused(&format!("redis://127.0.0.1:{port}")).await;

        // Authenticated but not allowed these keys: the call fails with Redis' reason
        // (the probe's PING is allowed, so the store still reports healthy).
        let store =
            RedisStore::connect_with(options(&format!("redis://carol:pw@127.0.0.1:{port}")))
                .await
                .unwrap();
        let err = store
            .apply(&[add("k", 1)])
            .await
            .expect_err("carol may not write k");
        assert!(err.to_string().to_lowercase().contains("noperm"), "{err}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn tls_without_verification_works_by_name_and_by_address() {
    bounded(async {
        let redis = SecureRedis::start(
            Tls {
                client_certs: false,
            },
            &[],
        )
        .await;
        let port = redis.port();
        assert_counts(&format!("rediss://localhost:{port}#insecure")).await;
        let store = assert_counts(&format!("rediss://127.0.0.1:{port}/1#insecure")).await;
        assert!(
            store.describe().starts_with("rediss://"),
            "{}",
            store.describe()
        );

        // The counts went over TLS to that server (it has no plain port).
        let mut conn = direct(&format!("rediss://localhost:{port}/1#insecure")).await;
        let value: u64 = redis::cmd("GET")
            .arg("k")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(value, 3);
    })
    .await;
}

#[tokio::test]
async fn tls_and_a_password_together() {
    bounded(async {
        let redis = SecureRedis::start(
            Tls {
                client_certs: false,
            },
            &["--requirepass", PASSWORD],
        )
        .await;
        let port = redis.port();
        assert_counts(&format!("rediss://:{PASSWORD}@localhost:{port}#insecure")).await;
        let texts = assert_refused(&format!("rediss://:nope-pw@localhost:{port}#insecure")).await;
        assert!(!texts.contains("nope-pw"), "{texts}");
        assert!(texts.contains("authentication failed"), "{texts}");
    })
    .await;
}

#[tokio::test]
async fn tls_with_a_certificate_the_store_does_not_trust_fails_cleanly() {
    bounded(async {
        // Signed by a private CA, valid for localhost and 127.0.0.1: correct in every
        // way but trust, and the store is not told to trust that CA.
        let redis = SecureRedis::start(
            Tls {
                client_certs: false,
            },
            &[],
        )
        .await;
        let port = redis.port();
        for url in [
            format!("rediss://localhost:{port}"),
            format!("rediss://127.0.0.1:{port}"),
            format!("rediss://:{PASSWORD}@localhost:{port}"),
        ] {
            let texts = assert_refused(&url).await;
            // rustls: "invalid peer certificate: UnknownIssuer".
            let lower = texts.to_lowercase();
            assert!(
                lower.contains("certificate") && lower.contains("issuer"),
                "{url}: the error should say the certificate is not trusted:\n{texts}"
            );
            assert!(!texts.contains(PASSWORD), "{texts}");
            let err = prompt_refusal(&url).await;
            assert!(matches!(err, StoreError::Unavailable(_)), "{url}: {err:?}");
        }
        // The same server with verification off answers: the failure was the trust.
        assert_counts(&format!("rediss://localhost:{port}#insecure")).await;
    })
    .await;
}

#[tokio::test]
async fn plain_redis_against_a_tls_port_fails_cleanly() {
    bounded(async {
        let redis = SecureRedis::start(
            Tls {
                client_certs: false,
            },
            &[],
        )
        .await;
        let port = redis.port();
        assert_refused(&format!("redis://127.0.0.1:{port}")).await;
        let err = prompt_refusal(&format!("redis://127.0.0.1:{port}")).await;
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn tls_against_a_plain_port_fails_cleanly() {
    bounded(async {
        // The server reads the ClientHello as the start of an inline command and waits
        // for its end while the client waits for a ServerHello: neither side says no, so
        // this one fails only when the connect timeout runs out, not at once.
        let redis = SecureRedis::start(Plain, &[]).await;
        let port = redis.port();
        assert_refused(&format!("rediss://localhost:{port}#insecure")).await;
        assert_counts(&format!("redis://127.0.0.1:{port}")).await;
    })
    .await;
}

#[tokio::test]
async fn a_server_that_requires_a_client_certificate_refuses_the_store_cleanly() {
    bounded(async {
        // mutual TLS, and the store is given no client certificate to offer.
        let redis = SecureRedis::start(Tls { client_certs: true }, &[]).await;
        let url = format!("rediss://localhost:{}#insecure", redis.port());
        let texts = assert_refused(&url).await;
        // rustls: "received fatal alert: CertificateRequired".
        assert!(texts.to_lowercase().contains("certificate"), "{texts}");
        prompt_refusal(&url).await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// TLS with a private CA and client certificates
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_private_ca_verifies_the_server_by_name_and_by_address() {
    bounded(async {
        // Also listening on 127.0.0.2, an address its certificate does not name.
        let redis = SecureRedis::start(
            Tls {
                client_certs: false,
            },
            &["--requirepass", PASSWORD, "--bind 127.0.0.1 127.0.0.2"],
        )
        .await;
        let (port, certs) = (redis.port(), redis.certs());
        let verified = |url: String| tls_options(&url, Some(certs), None);

        assert_counts(verified(format!("rediss://:{PASSWORD}@localhost:{port}"))).await;
        let store =
            assert_counts(verified(format!("rediss://:{PASSWORD}@127.0.0.1:{port}/1"))).await;
        assert!(
            !store.describe().contains("insecure"),
            "{}",
            store.describe()
        );
        let shown = format!("{store:?}");
        assert!(!shown.contains(PASSWORD), "{shown}");

        // The name is still checked: the same server, reached by an address its
        // certificate does not name, is refused.
        let url = format!("rediss://:{PASSWORD}@127.0.0.2:{port}");
        let texts = assert_refused(verified(url.clone())).await;
        // rustls: "invalid peer certificate: certificate not valid for name ...".
        assert!(
            texts.to_lowercase().contains("not valid for name"),
            "the error should say the name does not match:\n{texts}"
        );
        prompt_refusal(verified(url)).await;

        // A wrong password is still refused over verified TLS.
        let texts = assert_refused(verified(format!("rediss://:nope-pw@localhost:{port}"))).await;
        assert!(texts.contains("authentication failed"), "{texts}");
    })
    .await;
}

#[tokio::test]
async fn a_wrong_ca_fails_cleanly() {
    bounded(async {
        let redis = SecureRedis::start(
            Tls {
                client_certs: false,
            },
            &[],
        )
        .await;
        let port = redis.port();
        let stranger_dir = TempDir::new().unwrap();
        let stranger = make_certs(stranger_dir.path());
        for url in [
            format!("rediss://localhost:{port}"),
            format!("rediss://127.0.0.1:{port}"),
        ] {
            let texts = assert_refused(tls_options(&url, Some(&stranger), None)).await;
            let lower = texts.to_lowercase();
            assert!(
                lower.contains("certificate") && lower.contains("issuer"),
                "{url}: the error should say the certificate is not trusted:\n{texts}"
            );
            let err = prompt_refusal(tls_options(&url, Some(&stranger), None)).await;
            assert!(matches!(err, StoreError::Unavailable(_)), "{url}: {err:?}");
        }
        // The right CA is trusted on the same server.
        assert_counts(tls_options(
            &format!("rediss://localhost:{port}"),
            Some(redis.certs()),
            None,
        ))
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_server_that_requires_a_client_certificate_accepts_one_its_ca_signed() {
    bounded(async {
        let redis = SecureRedis::start(Tls { client_certs: true }, &[]).await;
        let (port, certs) = (redis.port(), redis.certs());
        let url = format!("rediss://localhost:{port}");
        let stranger_dir = TempDir::new().unwrap();
        let stranger = make_certs(stranger_dir.path());

        // Verified both ways.
        let store = assert_counts(tls_options(&url, Some(certs), Some(certs))).await;
        let shown = format!("{store:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        // A client certificate works without a CA file too, with verification off.
        assert_counts(tls_options(&format!("{url}/1#insecure"), None, Some(certs))).await;

        // No client certificate: refused.
        let texts = assert_refused(tls_options(&url, Some(certs), None)).await;
        // rustls: "received fatal alert: CertificateRequired".
        assert!(texts.to_lowercase().contains("certificate"), "{texts}");
        prompt_refusal(tls_options(&url, Some(certs), None)).await;

        // A client certificate the server's CA did not sign: refused.
        let texts = assert_refused(tls_options(&url, Some(certs), Some(&stranger))).await;
        // rustls: "received fatal alert: UnknownCA" (or the server closes the connection).
        assert!(
            texts.to_lowercase().contains("alert") || texts.to_lowercase().contains("closed"),
            "{texts}"
        );
    })
    .await;
}

#[tokio::test]
async fn sentinel_over_verified_mutual_tls_reaches_the_master() {
    bounded(async {
        let master = SecureRedis::start(Tls { client_certs: true }, &[]).await;
        let certs = master.certs();
        let sentinel = SecureRedis::sentinel(master.port(), certs).await;
        let url = format!("rediss+sentinel://localhost:{}/tgmaster", sentinel.port());

        // The sentinel is reached by name, the master at the address it reports.
        assert_counts(tls_options(&url, Some(certs), Some(certs))).await;
        let mut conn = direct_tls(&format!("rediss://127.0.0.1:{}", master.port()), certs).await;
        let value: u64 = redis::cmd("GET")
            .arg("k")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(value, 3, "the count is on the master");

        // Without the client certificate the sentinels (and the master) refuse it.
        let texts = assert_refused(tls_options(&url, Some(certs), None)).await;
        assert!(texts.to_lowercase().contains("certificate"), "{texts}");
    })
    .await;
}

#[tokio::test]
async fn cluster_over_verified_mutual_tls_counts_on_every_node() {
    bounded(async {
        let cluster = TlsCluster::start().await;
        let certs = &cluster.certs;
        let url = format!("rediss+cluster://localhost:{}", cluster.ports[0]);

        // Keys with different hash tags land on different nodes; every node is reached
        // at the address the cluster reports, and verified.
        let keys: Vec<String> = (0..12).map(|i| format!("{{t{i}}}k")).collect();
        for options in [
            tls_options(&url, Some(certs), Some(certs)),
            // `#insecure` stays insecure with a client certificate (and still sends it).
            tls_options(&format!("{url}#insecure"), None, Some(certs)),
        ] {
            let store = RedisStore::connect_with(options).await.unwrap();
            let updates: Vec<CounterUpdate> = keys.iter().map(|k| add(k, 1)).collect();
            let first = eventually_applied(&store, &updates).await;
            let second = store.apply(&updates).await.unwrap();
            assert_eq!(
                second
                    .iter()
                    .zip(&first)
                    .filter(|(b, a)| **b != **a + 1)
                    .count(),
                0,
                "each counter went up by one: {first:?} then {second:?}"
            );
        }
        let mut on_nodes = 0;
        for port in &cluster.ports {
            let mut conn = direct_tls(&format!("rediss://127.0.0.1:{port}"), certs).await;
            let found: Vec<String> = redis::cmd("KEYS")
                .arg("*")
                .query_async(&mut conn)
                .await
                .unwrap();
            on_nodes += usize::from(!found.is_empty());
        }
        assert!(on_nodes >= 2, "the keys should spread over the nodes");

        // Without the client certificate: refused.
        assert_refused(tls_options(&url, Some(certs), None)).await;
    })
    .await;
}

/// `updates` applied once the store answers (a cluster's slots can take a moment to
/// settle), with the values.
async fn eventually_applied(store: &RedisStore, updates: &[CounterUpdate]) -> Vec<u64> {
    let started = Instant::now();
    loop {
        match store.apply(updates).await {
            Ok(values) => return values,
            Err(err) if started.elapsed() > PATIENCE => panic!("{}: {err}", store.describe()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn tls_files_that_do_not_suit_the_url_are_refused_when_the_store_is_built() {
    bounded(async {
        let dir = TempDir::new().unwrap();
        let certs = make_certs(dir.path());

        let err = config_error(tls_options("redis://127.0.0.1:1", Some(&certs), None)).await;
        assert!(
            err.contains("redis_tls_ca_file") && err.contains("does not use TLS"),
            "{err}"
        );
        let err = config_error(tls_options(
            "rediss://localhost:1#insecure",
            Some(&certs),
            None,
        ))
        .await;
        assert!(
            err.contains("redis_tls_ca_file") && err.contains("#insecure"),
            "{err}"
        );
        let err = config_error(tls_options(
            "rediss+sentinel://localhost:1/m#insecure",
            None,
            Some(&certs),
        ))
        .await;
        assert!(
            err.contains("redis_tls_client_cert_file") && err.contains("Sentinel"),
            "{err}"
        );
        let mut missing = tls_options("rediss://localhost:1", Some(&certs), None);
        missing.tls_ca_file = Some(dir.path().join("nope.crt"));
        let err = config_error(missing).await;
        assert!(
            err.contains("redis_tls_ca_file")
                && err.contains("nope.crt")
                && err.contains("does not exist"),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn redis_tls_settings_are_checked_at_startup() {
    bounded(async {
        let dir = TempDir::new().unwrap();
        let certs = make_certs(dir.path());
        let stranger_dir = TempDir::new().unwrap();
        let stranger = make_certs(stranger_dir.path());
        let not_pem = dir.path().join("notes.txt");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.pem");

        let base = Settings {
            store: "rediss://localhost:6380".into(),
            ..Settings::default()
        };
        let with = |ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>| Settings {
            redis_tls_ca_file: ca.map(Path::to_owned),
            redis_tls_client_cert_file: cert.map(Path::to_owned),
            redis_tls_client_key_file: key.map(Path::to_owned),
            ..base.clone()
        };
        let error = |settings: Settings| match settings.validate() {
            Ok(()) => panic!("{settings:?} validated"),
            Err(err) => err.to_string(),
        };
        let (ca, cert, key) = (&certs.ca, &certs.client_cert, &certs.client_key);

        // Valid: a CA alone, a client certificate alone, both.
        with(Some(ca), None, None).validate().unwrap();
        with(None, Some(cert), Some(key)).validate().unwrap();
        with(Some(ca), Some(cert), Some(key)).validate().unwrap();

        let cases: Vec<(Settings, &str, Vec<String>)> = vec![
            (
                with(Some(&missing), None, None),
                "redis_tls_ca_file",
                vec![missing.display().to_string(), "does not exist".into()],
            ),
            (
                with(None, Some(cert), None),
                "redis_tls_client_key_file",
                vec!["not set".into(), cert.display().to_string()],
            ),
            (
                with(None, None, Some(key)),
                "redis_tls_client_cert_file",
                vec!["not set".into(), key.display().to_string()],
            ),
            (
                with(None, Some(&missing), Some(key)),
                "redis_tls_client_cert_file",
                vec!["does not exist".into()],
            ),
            (
                with(None, Some(cert), Some(&missing)),
                "redis_tls_client_key_file",
                vec!["does not exist".into()],
            ),
            (
                with(Some(&not_pem), None, None),
                "redis_tls_ca_file",
                vec![not_pem.display().to_string(), "no PEM certificate".into()],
            ),
            (
                with(Some(key), None, None),
                "redis_tls_ca_file",
                vec!["no PEM certificate".into()],
            ),
            (
                with(Some(dir.path()), None, None),
                "redis_tls_ca_file",
                vec!["cannot be read".into()],
            ),
            (
                with(None, Some(key), Some(key)),
                "redis_tls_client_cert_file",
                vec!["no PEM certificate".into()],
            ),
            (
                with(None, Some(cert), Some(cert)),
                "redis_tls_client_key_file",
                vec!["no PEM private key".into()],
            ),
            (
                with(None, Some(cert), Some(&stranger.client_key)),
                "redis_tls_client_key_file",
                vec![
                    "is not the key of the certificate".into(),
                    cert.display().to_string(),
                ],
            ),
            (
                Settings {
                    store: "redis://localhost:6379".into(),
                    ..with(Some(ca), None, None)
                },
                "redis_tls_ca_file",
                vec!["only applies to a TLS Redis store".into()],
            ),
            (
                Settings {
                    store: "memory".into(),
                    ..with(None, Some(cert), Some(key))
                },
                "redis_tls_client_cert_file",
                vec!["only applies to a TLS Redis store".into()],
            ),
        ];
        for (settings, field, says) in cases {
            let err = error(settings);
            assert!(
                err.contains(&format!("'{field}'")),
                "should name {field}: {err}"
            );
            for said in says {
                assert!(err.contains(&said), "should say {said:?}: {err}");
            }
        }

        // The app will not start with them either.
        let err = match App::build(with(Some(&missing), None, None)).await {
            Ok(_) => panic!("the app was built"),
            Err(err) => format!("{err:#}"),
        };
        assert!(
            err.contains("redis_tls_ca_file") && err.contains("missing.pem"),
            "{err}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// A whole app over TLS
// ---------------------------------------------------------------------------------------

/// The app's clock: the start of an hour.
const HOUR_START_SECS: u64 = 1_800_000_000;
const _: () = assert!(HOUR_START_SECS.is_multiple_of(3600));

/// A running app, stopped when dropped.
struct RunningApp {
    grpc: RateLimitServiceClient<tonic::transport::Channel>,
    http: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dirs: (TempDir, TempDir),
}

impl RunningApp {
    async fn start(store: String) -> Self {
        Self::start_with(store, |_| {}).await
    }

    /// Starts an app on `store`, with `adjust` applied to its settings.
    async fn start_with(store: String, adjust: impl FnOnce(&mut Settings)) -> Self {
        let rules = TempDir::new().unwrap();
        let data = TempDir::new().unwrap();
        std::fs::write(
            rules.path().join("rules.yaml"),
            "domain: tls\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 3}\n",
        )
        .unwrap();
        let mut settings = Settings {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            rules_dir: rules.path().to_owned(),
            watch_rules: false,
            store,
            store_deadline_ms: DEADLINE.as_millis() as u64,
            shutdown_grace_secs: 1,
            database_url: format!("sqlite://{}", data.path().join("ledger.db").display()),
            outbox_path: data.path().join("outbox.jsonl"),
            ..Settings::default()
        };
        adjust(&mut settings);
        // A hand-held clock at the start of an hour: the hour's window cannot roll over
        // in the middle of the test.
        let clock = ManualClock::at_secs(HOUR_START_SECS);
        let app = App::build_with_clock(settings, Arc::new(clock))
            .await
            .expect("the app builds");
        let grpc_addr = app.grpc_addr();
        let http = format!("http://{}", app.http_addr());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        let grpc = RateLimitServiceClient::connect(format!("http://{grpc_addr}"))
            .await
            .expect("gRPC connects");
        Self {
            grpc,
            http,
            stop: Some(stop),
            task: Some(task),
            _dirs: (rules, data),
        }
    }

    async fn should_rate_limit(&self, value: &str) -> Code {
        let request = RateLimitRequest {
            domain: "tls".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "k".into(),
                    value: value.into(),
                }],
                ..RateLimitDescriptor::default()
            }],
            hits_addend: 0,
        };
        let response = self
            .grpc
            .clone()
            .should_rate_limit(request)
            .await
            .expect("ShouldRateLimit answers")
            .into_inner();
        Code::try_from(response.overall_code).unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the app stops")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_app_over_tls_counts_to_the_limit() {
    bounded(async {
        let redis = SecureRedis::start(
            Tls {
                client_certs: false,
            },
            &[],
        )
        .await;
        let app = RunningApp::start(format!("rediss://localhost:{}#insecure", redis.port())).await;

        let health = reqwest::get(format!("{}/healthcheck", app.http))
            .await
            .unwrap();
        assert!(health.status().is_success(), "{:?}", health.text().await);

        let codes = [
            app.should_rate_limit("a").await,
            app.should_rate_limit("a").await,
            app.should_rate_limit("a").await,
            app.should_rate_limit("a").await,
            app.should_rate_limit("a").await,
        ];
        use Code::{Ok, OverLimit};
        assert_eq!(codes, [Ok, Ok, Ok, OverLimit, OverLimit]);
        // Another value has its own counter.
        assert_eq!(app.should_rate_limit("b").await, Ok);

        // The counters live in the TLS server.
        let mut conn = direct(&format!("rediss://localhost:{}/#insecure", redis.port())).await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys.len(), 2, "{keys:?}");
        let mut counts = Vec::new();
        for key in &keys {
            let count: u64 = redis::cmd("GET")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            counts.push(count);
        }
        counts.sort_unstable();
        // Over-limit hits are counted too (stop_incrementing_when_over_limit is off).
        assert_eq!(counts, vec![1, 5], "{keys:?}");

        app.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_app_over_verified_mutual_tls_answers() {
    bounded(async {
        let redis = SecureRedis::start(Tls { client_certs: true }, &[]).await;
        let certs = redis.certs().clone();
        let url = format!("rediss://localhost:{}", redis.port());
        let app = RunningApp::start_with(url.clone(), |settings| {
            settings.redis_tls_ca_file = Some(certs.ca.clone());
            settings.redis_tls_client_cert_file = Some(certs.client_cert.clone());
            settings.redis_tls_client_key_file = Some(certs.client_key.clone());
        })
        .await;

        let health = reqwest::get(format!("{}/healthcheck", app.http))
            .await
            .unwrap();
        assert!(health.status().is_success(), "{:?}", health.text().await);
        use Code::{Ok, OverLimit};
        let mut codes = Vec::new();
        for _ in 0..4 {
            codes.push(app.should_rate_limit("a").await);
        }
        assert_eq!(codes, [Ok, Ok, Ok, OverLimit]);

        // The counter lives in that server.
        let mut conn = direct_tls(&url, &certs).await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let count: u64 = redis::cmd("GET")
            .arg(&keys[0])
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(count, 4);

        app.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Private Redis servers (tests/support/private_redis.rs), plain or TLS.
// ---------------------------------------------------------------------------------------

/// How a private server listens.
#[derive(Clone, Copy)]
enum Mode {
    /// Plain TCP.
    Plain,
    /// TLS only (no plain port), with a certificate from a throwaway CA; `client_certs`
    /// makes it demand a client certificate too.
    Tls { client_certs: bool },
}
use Mode::{Plain, Tls};

/// A direct connection to a private server, for looking behind the store's back.
async fn direct(url: &str) -> redis::aio::MultiplexedConnection {
    connect_direct(redis::Client::open(url).expect("a valid URL")).await
}

/// A direct, verified TLS connection with `certs`' CA and client certificate.
async fn direct_tls(url: &str, certs: &Certs) -> redis::aio::MultiplexedConnection {
    let tls = TlsCertificates {
        client_tls: Some(ClientTlsConfig {
            client_cert: std::fs::read(&certs.client_cert).unwrap(),
            client_key: std::fs::read(&certs.client_key).unwrap(),
        }),
        root_cert: Some(std::fs::read(&certs.ca).unwrap()),
    };
    connect_direct(redis::Client::build_with_tls(url, tls).expect("a valid URL")).await
}

async fn connect_direct(client: redis::Client) -> redis::aio::MultiplexedConnection {
    tokio::time::timeout(PATIENCE, client.get_multiplexed_async_connection())
        .await
        .expect("the direct connection did not time out")
        .expect("a direct connection")
}

/// A private server as these tests need it (tests/support/private_redis.rs starts and
/// kills it): plain or TLS, in a directory of its own that holds its log and, unless they
/// were given, its certificates.
struct SecureRedis {
    /// Killed first, when dropped.
    redis: PrivateRedis,
    /// The TLS files it uses, when it speaks TLS.
    certs: Option<Certs>,
    /// Working directory, log and certificates; removed after the kill.
    _dir: TempDir,
}

impl SecureRedis {
    /// Starts a server on a free port; `extra` are more options, split at whitespace
    /// (`"--user alice on >pw ~* +@all"`).
    async fn start(mode: Mode, extra: &[&str]) -> Self {
        Self::start_with(mode, None, free_port, extra).await
    }

    /// Starts a server on a port `pick` chooses, using `certs` (when given) rather than
    /// making its own.
    async fn start_with(
        mode: Mode,
        certs: Option<&Certs>,
        pick: fn() -> u16,
        extra: &[&str],
    ) -> Self {
        let mut last_log = String::new();
        for _ in 0..5 {
            match Self::try_start(mode, certs, pick(), extra).await {
                Ok(redis) => return redis,
                Err(log) => last_log = log,
            }
        }
        panic!("could not start a private redis-server; its last log:\n{last_log}");
    }

    /// The port it listens on (its TLS port when it speaks TLS).
    fn port(&self) -> u16 {
        self.redis.port
    }

    /// The TLS files of a TLS server.
    fn certs(&self) -> &Certs {
        self.certs.as_ref().expect("a TLS server")
    }

    /// Starts a server on `port`; on failure (the port was taken meanwhile), its log.
    async fn try_start(
        mode: Mode,
        certs: Option<&Certs>,
        port: u16,
        extra: &[&str],
    ) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("redis.log");
        let mut args = base_args(dir.path());
        args.extend(["--logfile".into(), log.display().to_string()]);
        let mut used = None;
        match mode {
            Plain => args.extend(["--port".into(), port.to_string()]),
            Tls { client_certs } => {
                let certs = certs.cloned().unwrap_or_else(|| make_certs(dir.path()));
                args.extend([
                    "--port".into(),
                    "0".into(),
                    "--tls-port".into(),
                    port.to_string(),
                    "--tls-cert-file".into(),
                    certs.cert.display().to_string(),
                    "--tls-key-file".into(),
                    certs.key.display().to_string(),
                    "--tls-ca-cert-file".into(),
                    certs.ca.display().to_string(),
                    "--tls-auth-clients".into(),
                    if client_certs { "yes" } else { "no" }.into(),
                    // What it presents when it is the client (cluster bus, replication).
                    "--tls-client-cert-file".into(),
                    certs.client_cert.display().to_string(),
                    "--tls-client-key-file".into(),
                    certs.client_key.display().to_string(),
                ]);
                used = Some(certs);
            }
        }
        args.extend(split_args(extra));
        Self::launch(args, port, used, dir, &log, "Ready to accept connections").await
    }

    /// A TLS sentinel on a free port, demanding client certificates, watching the TLS
    /// master on `master_port` (which uses `certs` too) under the name `tgmaster`.
    async fn sentinel(master_port: u16, certs: &Certs) -> Self {
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let log = dir.path().join("sentinel.log");
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port 0\ntls-port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                     tls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
                     tls-auth-clients yes\ntls-replication yes\n\
                     tls-client-cert-file {client_cert}\ntls-client-key-file {client_key}\n\
                     sentinel monitor tgmaster 127.0.0.1 {master_port} 1\n\
                     sentinel down-after-milliseconds tgmaster 60000\n",
                    dir = dir.path().display(),
                    log = log.display(),
                    cert = certs.cert.display(),
                    key = certs.key.display(),
                    ca = certs.ca.display(),
                    client_cert = certs.client_cert.display(),
                    client_key = certs.client_key.display(),
                ),
            )
            .unwrap();
            let args = vec![conf.display().to_string(), "--sentinel".into()];
            // A sentinel never logs "Ready to accept connections"; it listens before this.
            let ready = "+monitor master tgmaster";
            match Self::launch(args, port, Some(certs.clone()), dir, &log, ready).await {
                Ok(sentinel) => return sentinel,
                Err(text) => last_log = text,
            }
        }
        panic!("could not start a private sentinel; its last log:\n{last_log}");
    }

    /// Runs `redis-server args` and waits until its log says `ready`.
    async fn launch(
        args: Vec<String>,
        port: u16,
        certs: Option<Certs>,
        dir: TempDir,
        log: &Path,
        ready: &str,
    ) -> Result<Self, String> {
        let redis = PrivateRedis::launch(args, port, Ready::Logged { log, text: ready }).await?;
        Ok(Self {
            redis,
            certs,
            _dir: dir,
        })
    }
}

/// Three TLS-only masters, no replicas, all slots assigned, the cluster bus over TLS,
/// client certificates demanded; one CA for all.
struct TlsCluster {
    _nodes: Vec<SecureRedis>,
    ports: Vec<u16>,
    certs: Certs,
    _dir: TempDir,
}

impl TlsCluster {
    async fn start() -> Self {
        let dir = TempDir::new().unwrap();
        let certs = make_certs(dir.path());
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let extra = [
                "--cluster-enabled yes",
                "--cluster-config-file nodes.conf",
                "--tls-cluster yes",
            ];
            nodes.push(
                SecureRedis::start_with(
                    Tls { client_certs: true },
                    Some(&certs),
                    free_cluster_port,
                    &extra,
                )
                .await,
            );
        }
        let ports: Vec<u16> = nodes.iter().map(SecureRedis::port).collect();
        let out = Command::new("redis-cli")
            .arg("--tls")
            .arg("--cacert")
            .arg(&certs.ca)
            .arg("--cert")
            .arg(&certs.client_cert)
            .arg("--key")
            .arg(&certs.client_key)
            .args(["--cluster", "create"])
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be on PATH for these tests");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for port in &ports {
            let mut conn = direct_tls(&format!("rediss://127.0.0.1:{port}"), &certs).await;
            let started = Instant::now();
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    started.elapsed() < PATIENCE,
                    "the cluster is not ok:\n{info}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Self {
            _nodes: nodes,
            ports,
            certs,
            _dir: dir,
        }
    }
}

/// A throwaway CA's files: the CA, a server certificate for `localhost` and `127.0.0.1`,
/// and a client certificate.
#[derive(Clone)]
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// A throwaway CA, a server certificate it signs for `localhost` and `127.0.0.1`, and a
/// client certificate it signs.
fn make_certs(dir: &Path) -> Certs {
    // Each CA has its own name, so a server certificate from another one is an unknown
    // issuer, as it would be in life.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    openssl(
        dir,
        &format!(
            "req -x509 {ec} -keyout ca.key -out ca.crt -days 2 -subj /CN=tollgate-test-CA-{n} \
             -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign"
        ),
    );
    for (name, subject, ext) in [
        (
            "server",
            "/CN=localhost",
            "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        ),
        (
            "client",
            "/CN=tollgate-test-client",
            "extendedKeyUsage=clientAuth\n",
        ),
    ] {
        openssl(
            dir,
            &format!("req -new {ec} -keyout {name}.key -out {name}.csr -subj {subject}"),
        );
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}"),
        )
        .unwrap();
        openssl(
            dir,
            &format!(
                "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
                 -out {name}.crt -days 2 -extfile {name}.ext"
            ),
        );
    }
    Certs {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}

/// Runs `openssl` in `dir` with `args` (split at whitespace).
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl must be on PATH for these tests");
    assert!(
        out.status.success(),
        "openssl {args} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
