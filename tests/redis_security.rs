//! AUTH and TLS against real, private Redis servers.
//!
//! Every test starts its own `redis-server` on a free port (no persistence, its own temp
//! directory), configured the way the test needs (`--requirepass`, ACL users, TLS only),
//! and kills it when the test ends, passes or fails. The shared Redis on 6379 is never
//! touched. TLS certificates are made per server with the `openssl` CLI: a throwaway CA
//! and a server certificate it signs for `localhost` and `127.0.0.1`.
//!
//! `#insecure` (skip verification) needs redis' `tls-rustls-insecure` feature: without it
//! every such connection fails with `InvalidClientConfig`, which the TLS tests catch.
//!
//! What the store cannot do, and these tests pin down:
//! - trust a private CA: `rediss://` verifies against the webpki (public) roots only and
//!   [`RedisOptions`] has no CA setting, so a private deployment needs `#insecure`;
//! - present a client certificate: a server that requires one (`tls-auth-clients yes`)
//!   refuses the store, even with `#insecure`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tollgate::app::App;
use tollgate::clock::ManualClock;
use tollgate::settings::Settings;
use tollgate::store::redis::RedisOptions;
use tollgate::store::{CounterStore, CounterUpdate, RedisStore, StoreError};

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

/// A store for `url` that answers: healthy, counts, and reads its count back.
async fn assert_counts(url: &str) -> RedisStore {
    let store = RedisStore::connect_with(options(url))
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
async fn assert_refused(url: &str) -> String {
    let started = Instant::now();
    let store = RedisStore::connect_with(options(url))
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
async fn prompt_refusal(url: &str) -> StoreError {
    let store = RedisStore::connect_with(options(url)).await.unwrap();
    let started = Instant::now();
    let err = store
        .apply(&[add("k", 1)])
        .await
        .expect_err("the call should fail");
    let took = started.elapsed();
    assert!(took < DEADLINE, "{url}: the refusal took {took:?}: {err}");
    err
}

// ---------------------------------------------------------------------------------------
// AUTH
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_password_in_the_url_authenticates() {
    bounded(async {
        let redis = PrivateRedis::start(Plain, &["--requirepass", PASSWORD]).await;
        let url = format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port);
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
        let redis = PrivateRedis::start(Plain, &["--requirepass", PASSWORD]).await;
        let port = redis.port;

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
        let redis = PrivateRedis::start(
            Plain,
            &[
                "--user default off",
                "--user alice on >pw ~* +@all",
                "--user bob on >p@ss:w/rd% ~* +@all",
                "--user carol on >pw ~elsewhere:* +@all",
            ],
        )
        .await;
        let port = redis.port;

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
        let redis = PrivateRedis::start(
            Tls {
                client_certs: false,
            },
            &[],
        )
        .await;
        let port = redis.port;
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
        let redis = PrivateRedis::start(
            Tls {
                client_certs: false,
            },
            &["--requirepass", PASSWORD],
        )
        .await;
        let port = redis.port;
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
        // way but trust, and the store has no way to be told to trust that CA.
        let redis = PrivateRedis::start(
            Tls {
                client_certs: false,
            },
            &[],
        )
        .await;
        let port = redis.port;
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
        let redis = PrivateRedis::start(
            Tls {
                client_certs: false,
            },
            &[],
        )
        .await;
        let port = redis.port;
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
        let redis = PrivateRedis::start(Plain, &[]).await;
        let port = redis.port;
        assert_refused(&format!("rediss://localhost:{port}#insecure")).await;
        assert_counts(&format!("redis://127.0.0.1:{port}")).await;
    })
    .await;
}

#[tokio::test]
async fn a_server_that_requires_a_client_certificate_refuses_the_store_cleanly() {
    bounded(async {
        // mutual TLS: the store has no client certificate to offer.
        let redis = PrivateRedis::start(Tls { client_certs: true }, &[]).await;
        let url = format!("rediss://localhost:{}#insecure", redis.port);
        let texts = assert_refused(&url).await;
        // rustls: "received fatal alert: CertificateRequired".
        assert!(texts.to_lowercase().contains("certificate"), "{texts}");
        prompt_refusal(&url).await;
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
        let rules = TempDir::new().unwrap();
        let data = TempDir::new().unwrap();
        std::fs::write(
            rules.path().join("rules.yaml"),
            "domain: tls\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 3}\n",
        )
        .unwrap();
        let settings = Settings {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            rules_dir: rules.path().to_owned(),
            watch_rules: false,
            store,
            store_deadline_ms: DEADLINE.as_millis() as u64,
            shutdown_grace_secs: 1,
            database_url: format!("sqlite://{}", data.path().join("ledger.db").display()),
            ..Settings::default()
        };
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
        let redis = PrivateRedis::start(
            Tls {
                client_certs: false,
            },
            &[],
        )
        .await;
        let app = RunningApp::start(format!("rediss://localhost:{}#insecure", redis.port)).await;

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
        let mut conn = direct(&format!("rediss://localhost:{}/#insecure", redis.port)).await;
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

// ---------------------------------------------------------------------------------------
// Private Redis servers: started on free ports, killed when dropped.
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

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A direct connection to a private server, for looking behind the store's back.
async fn direct(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("a valid URL");
    tokio::time::timeout(PATIENCE, client.get_multiplexed_async_connection())
        .await
        .expect("the direct connection did not time out")
        .expect("a direct connection")
}

struct PrivateRedis {
    child: Child,
    port: u16,
    /// Working directory, log and certificates; removed when dropped (after the kill).
    _dir: TempDir,
}

impl PrivateRedis {
    /// Starts a server on a free port; `extra` are more options, split at whitespace
    /// (`"--user alice on >pw ~* +@all"`).
    async fn start(mode: Mode, extra: &[&str]) -> Self {
        let mut last_log = String::new();
        for _ in 0..5 {
            match Self::try_start(mode, free_port(), extra).await {
                Ok(redis) => return redis,
                Err(log) => last_log = log,
            }
        }
        panic!("could not start a private redis-server; its last log:\n{last_log}");
    }

    /// Starts a server on `port`; on failure (the port was taken meanwhile), its log.
    async fn try_start(mode: Mode, port: u16, extra: &[&str]) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("redis.log");
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--logfile".into(),
            log.display().to_string(),
        ];
        match mode {
            Plain => args.extend(["--port".into(), port.to_string()]),
            Tls { client_certs } => {
                let certs = make_certs(dir.path());
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
                ]);
            }
        }
        args.extend(
            extra
                .iter()
                .flat_map(|s| s.split_whitespace())
                .map(str::to_owned),
        );
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH for these tests");
        let mut redis = Self {
            child,
            port,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if redis.child.try_wait().unwrap().is_some() {
                return Err(text); // dropping `redis` cleans up
            }
            if text.contains("Ready to accept connections") {
                return Ok(redis);
            }
            if started.elapsed() > PATIENCE {
                return Err(format!("not ready after {PATIENCE:?}:\n{text}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `_dir` is removed after this, once the server is gone.
    }
}

struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A throwaway CA and a server certificate it signs for `localhost` and `127.0.0.1`.
fn make_certs(dir: &Path) -> Certs {
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    openssl(
        dir,
        &format!(
            "req -x509 {ec} -keyout ca.key -out ca.crt -days 2 -subj /CN=tollgate-test-CA \
             -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign"
        ),
    );
    openssl(
        dir,
        &format!("req -new {ec} -keyout server.key -out server.csr -subj /CN=localhost"),
    );
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
         -out server.crt -days 2 -extfile server.ext",
    );
    Certs {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
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
