//! The shared counter store: counters in Redis, so every replica counts against one limit.
//!
//! Accuracy: a request's updates are applied by one Lua script ([`APPLY_SCRIPT`]), so each
//! counter's increment, cap check, refund floor and first expiry happen atomically and no
//! increment is lost between replicas. Under Cluster a batch whose keys carry different hash
//! tags is split into one script call per tag: each call is atomic, the batch as a whole is
//! not (a failure can leave some groups applied). Windows expire by Redis' clock (`EXPIRE`
//! set once, when the key is created), not by the replica's; a counter whose key outlives
//! its window is harmless because the window start is part of the key. When Redis is slow
//! or down, calls fail with [`StoreError`] within the deadline and the limiter decides
//! (fail open or closed); nothing is queued or replayed, so counts during an outage are lost.
//! A Sentinel failover can lose the last writes acknowledged by the old master (Redis
//! replication is asynchronous); a Redis restart without persistence resets every counter.
//!
//! # URL forms
//!
//! - `redis://[user:pass@]host[:port][/db]`: one node (port 6379 by default).
//! - `rediss://...`: the same over TLS (rustls).
//! - `redis+sentinel://[user:pass@]host1[:port1],host2[:port2]/<master-name>[/db]`: the
//!   master that Sentinel names (sentinel port 26379 by default); `rediss+sentinel://`
//!   speaks TLS to the sentinels and the master. The credentials are the master's; the
//!   sentinels' own are in [`RedisOptions`].
//! - `redis+cluster://[user:pass@]host1[:port1],host2[:port2]`: Redis Cluster, seeded from
//!   any of the listed nodes (database 0 only); `rediss+cluster://` over TLS.
//!
//! User and password may be percent-encoded (`p%40ss` for `p@ss`); `:pass@` alone gives a
//! password without a user. IPv6 hosts go in brackets (`[::1]:6379`).
//!
//! # TLS
//!
//! A `rediss` URL verifies the server's certificate, and the name it is reached by, against
//! the public webpki roots, or, when [`RedisOptions::tls_ca_file`] is set, against the CA
//! certificates in that file only (a private CA). [`RedisOptions::tls_client_cert_file`]
//! and [`RedisOptions::tls_client_key_file`] (always both) give a client certificate for
//! servers that demand one (`tls-auth-clients yes`). The same CA and client certificate
//! serve every connection: the node, every Cluster node, and both the sentinels and the
//! master under Sentinel. Cluster nodes and the Sentinel master are reached at the
//! addresses the cluster or the sentinels report, usually IP addresses, which their
//! certificates must then name. The files are read and checked (PEM, the key matching the
//! certificate) when the store is built; a problem fails the build, naming the setting and
//! the path ([`TlsFileError`]).
//!
//! A `#insecure` fragment on a TLS URL skips certificate verification (tests only). A
//! client certificate still works with it, except under Sentinel: redis 1.x presents no
//! client certificate to the master when verification is off, so that combination is
//! refused when the store is built, as is a CA file with `#insecure` (the CA would never
//! be consulted) and any TLS file with a URL that is not `rediss`.
//!
//! # Connections
//!
//! One multiplexed connection per node: concurrent requests share it, and their script
//! calls are pipelined on it rather than waiting for each other, so there is no pool to
//! size. Connecting never blocks startup for long: [`RedisStore::connect`] waits at most
//! [`RedisOptions::connect_timeout`] for a first PING and returns the store either way.
//! While Redis is unreachable calls fail fast (or at the deadline) and a background probe
//! PINGs every second, which keeps reconnecting and keeps [`CounterStore::is_healthy`]
//! current:
//! - single node: redis' `ConnectionManager` reconnects on a dropped connection (one
//!   attempt per call or probe, no backoff queue that callers would wait behind); after
//!   three probe timeouts in a row (a black-holed socket never errors) it is replaced;
//! - Sentinel: the master's connection is dropped on a connection error, a `READONLY`
//!   reply (the old master after a failover) or a probe timeout, and the next call asks
//!   the sentinels for the master again;
//! - Cluster: redis' cluster connection reconnects to nodes and refreshes slots itself.
//!
//! # Micro-batching
//!
//! Concurrent requests' updates are coalesced into one script call: a request's updates
//! go to a batcher task, which sends whatever has queued as one call, with at most
//! [`MAX_IN_FLIGHT`] calls outstanding. An idle store sends each request at once; a busy
//! one sends fewer, larger calls, so Redis runs one script for many requests. Decisions
//! stay exact: the script applies the updates one after another, atomically, exactly as
//! if the requests had been sent one by one in that order. Plain charges of one counter
//! in a call are merged into one update first ([`super::coalesce`]), so a hot counter
//! costs Redis one command per call, not one per request. A failed call fails every
//! request in it.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo,
    FromRedisValue, IntoConnectionInfo, RedisConnectionInfo, RedisError, RedisResult, Script,
    ScriptInvocation, TlsCertificates, TlsMode,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::budget::{BudgetCall, BudgetReply, OutboxEntry};
use super::coalesce::coalesce;
use super::redis_budget::{self, OutboxReader};
use super::{CounterKind, CounterStore, CounterUpdate, StoreError, keys};

/// Script calls outstanding at once; requests arriving meanwhile share the next call.
const MAX_IN_FLIGHT: usize = 4;
/// Most updates coalesced into one script call.
const MAX_BATCH_UPDATES: usize = 1024;

/// One request's updates waiting for the batcher.
struct Job {
    updates: Vec<CounterUpdate>,
    reply: oneshot::Sender<Result<Vec<u64>, StoreError>>,
}

/// Applies one request's counter updates atomically, in one round trip.
///
/// Each update takes six `ARGV` slots and one `KEYS` entry (two for a sliding window):
/// - `ARGV[i]`: the kind: `w` fixed window, `i` idle-expiring count, `s` sliding window,
///   `b` token bucket (GCRA);
/// - `ARGV[i+1]`: hits, a non-negative integer; `0` only reads (no key created, expiry
///   untouched, nothing consumed);
/// - `ARGV[i+2]`: `1` to give the hits back (never below empty), else `0`;
/// - `w`: `ARGV[i+3]` seconds the counter lives, set only when this call creates it;
///   `ARGV[i+4]` the cap (empty for none): hits that would pass it are not counted;
/// - `i`: as `w`, except that every charge (hits above zero, not a refund) sets the expiry
///   to `ARGV[i+3]` seconds, counted or not; a refused charge creates no key;
/// - `s`: `ARGV[i+3]` ttl as for `w`; `ARGV[i+4]` the limit: hits are counted only while
///   the estimate stays within it; `ARGV[i+5]` the previous window's weight in
///   millionths; the next `KEYS` entry is the previous window's counter;
/// - `b`: `ARGV[i+3]` now, `ARGV[i+4]` the interval between tokens, both in microseconds;
///   `ARGV[i+5]` the capacity. The key holds the theoretical arrival time (TAT).
///
/// An uncapped charge of a `w` or `i` count is one `INCRBY` (and an `EXPIRE` when it
/// creates the key, or for `i`); everything else reads the count first. Batches are large
/// under load, so the calls per update are most of what Redis spends.
///
/// Returns, per update, the capacity in use before it (the count, the estimate, or the
/// tokens in use), in order. The arithmetic mirrors `MemoryStore` exactly: integers, the
/// weighted previous count rounded down, tokens in use rounded up. Lua numbers are
/// doubles, exact below 2^53 (microsecond timestamps are about 2^51); the weighted
/// previous count is computed in two parts because previous count * weight passes 2^53
/// from about nine billion (tokens), where the memory store's u128 stays exact.
pub const APPLY_SCRIPT: &str = r#"
local out = {}
local n = 0
local k = 1
-- floor(previous * weight / 1e6) without forming previous * weight: whole millions of
-- the count times the weight, plus the rest's share (each product stays below 2^53
-- while the estimate does).
local function weighted(previous, weight)
  local rest = math.fmod(previous, 1000000)
  return (previous - rest) / 1000000 * weight + math.floor(rest * weight / 1000000)
end
local function give_back(key, raw, before, hits, hits_text)
  if raw and before > 0 then
    if hits >= before then
      redis.call('DECRBY', key, raw)
    else
      redis.call('DECRBY', key, hits_text)
    end
  end
end
for i = 1, #ARGV, 6 do
  local kind = ARGV[i]
  local hits = tonumber(ARGV[i + 1])
  local refund = ARGV[i + 2] == '1'
  local key = KEYS[k]
  k = k + 1
  local before
  if kind == 'b' then
    local now = tonumber(ARGV[i + 3])
    local interval = tonumber(ARGV[i + 4])
    local raw = redis.call('GET', key)
    local tat = math.max(tonumber(raw or ARGV[i + 3]), now)
    before = math.ceil((tat - now) / interval)
    local new
    if hits > 0 then
      if refund then
        if raw then new = math.max(now, tat - hits * interval) end
      elseif before + hits <= tonumber(ARGV[i + 5]) then
        new = tat + hits * interval
      end
    end
    if new then
      -- Forget the bucket a second after it is full again.
      redis.call('SET', key, string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
    end
  elseif hits > 0 and not refund and kind ~= 's' and ARGV[i + 4] == '' then
    -- An uncapped charge, the common case: INCRBY alone gives the count before it. It
    -- created the key if it returned just the hits and the key has no expiry yet (a
    -- count given back to zero keeps its key and its expiry).
    local after = redis.call('INCRBY', key, ARGV[i + 1])
    before = after - hits
    if kind == 'i' or (after == hits and redis.call('TTL', key) == -1) then
      redis.call('EXPIRE', key, ARGV[i + 3])
    end
  else
    local raw = redis.call('GET', key)
    local count = tonumber(raw or '0')
    local allowed
    if kind == 's' then
      local previous = tonumber(redis.call('GET', KEYS[k]) or '0')
      k = k + 1
      before = count + weighted(previous, tonumber(ARGV[i + 5]))
      allowed = before + hits <= tonumber(ARGV[i + 4])
    else
      before = count
      local cap = ARGV[i + 4]
      allowed = cap == '' or before + hits <= tonumber(cap)
    end
    if hits > 0 then
      if refund then
        give_back(key, raw, count, hits, ARGV[i + 1])
      else
        if allowed then
          redis.call('INCRBY', key, ARGV[i + 1])
        end
        -- An idle count's expiry moves on every charge; a window's is set once.
        if (kind == 'i' and (allowed or raw)) or (allowed and not raw) then
          redis.call('EXPIRE', key, ARGV[i + 3])
        end
      end
    end
  end
  n = n + 1
  out[n] = before
end
return out
"#;

/// [`APPLY_SCRIPT`], hashed once: calls go out as `EVALSHA`, and on `NOSCRIPT` (a fresh or
/// restarted server) [`eval_apply`] loads it and retries.
static APPLY: LazyLock<Script> = LazyLock::new(|| Script::new(APPLY_SCRIPT));

/// How often the background probe PINGs Redis.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Probe timeouts in a row after which a single-node connection is replaced.
const PROBE_TIMEOUTS_BEFORE_REBUILD: u32 = 3;

/// How to reach Redis and how long to wait for it.
#[derive(Clone)]
pub struct RedisOptions {
    /// Where Redis is; see the module doc for the forms.
    pub url: String,
    /// Bound on every call, from sending the script to reading its reply.
    pub deadline: Duration,
    /// Bound on one connection attempt, on the first contact at startup and on each probe.
    pub connect_timeout: Duration,
    /// The deployment's key prefix: the usage outbox the store reads is the one under
    /// [`super::budget::namespace`] of it.
    pub key_prefix: String,
    /// Username for the sentinels themselves (Sentinel only).
    pub sentinel_username: Option<String>,
    /// Password for the sentinels themselves (Sentinel only).
    pub sentinel_password: Option<String>,
    /// PEM file of the CA certificates to trust instead of the public webpki roots
    /// (`rediss` URLs only; see the module doc's TLS section).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (its chain may follow it) to present to servers
    /// that ask for one; needs [`Self::tls_client_key_file`].
    pub tls_client_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or SEC1, not
    /// encrypted); needs [`Self::tls_client_cert_file`].
    pub tls_client_key_file: Option<PathBuf>,
}

impl RedisOptions {
    /// Options for `url` with the given per-call deadline and a one-second connect timeout.
    pub fn new(url: impl Into<String>, deadline: Duration) -> Self {
        Self {
            url: url.into(),
            deadline,
            connect_timeout: Duration::from_secs(1),
            key_prefix: String::new(),
            sentinel_username: None,
            sentinel_password: None,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
        }
    }

    /// The TLS files read and checked, ready for redis; `None` when none is set.
    ///
    /// Checks that the client certificate and key come together, that every file exists,
    /// can be read and holds PEM of the right kind, that the CA certificates can serve as
    /// trust anchors, and that the key belongs to the certificate. Whether the files suit
    /// the URL is checked when the store is built.
    pub fn tls_certificates(&self) -> Result<Option<TlsCertificates>, TlsFileError> {
        let (cert, key) = match (&self.tls_client_cert_file, &self.tls_client_key_file) {
            (Some(cert), Some(key)) => (Some(cert.as_path()), Some(key.as_path())),
            (None, None) => (None, None),
            (Some(cert), None) => {
                return Err(TlsFileError {
                    file: TlsFile::ClientKey,
                    problem: format!(
                        "not set, but {} is ({}); a client certificate needs its key",
                        TlsFile::ClientCert.setting(),
                        cert.display()
                    ),
                });
            }
            (None, Some(key)) => {
                return Err(TlsFileError {
                    file: TlsFile::ClientCert,
                    problem: format!(
                        "not set, but {} is ({}); a client key needs its certificate",
                        TlsFile::ClientKey.setting(),
                        key.display()
                    ),
                });
            }
        };
        let ca = self.tls_ca_file.as_deref();
        if ca.is_none() && cert.is_none() {
            return Ok(None);
        }
        // The checks redis' rustls connector would make on every connection attempt, made
        // once, now, with the file named.
        let mut roots = rustls::RootCertStore::empty();
        let root_cert = match ca {
            Some(path) => {
                let pem = read_tls_file(TlsFile::Ca, path)?;
                for cert in pem_certificates(TlsFile::Ca, path, &pem)? {
                    roots.add(cert).map_err(|e| {
                        TlsFile::Ca.error(
                            path,
                            format!("holds a certificate that cannot be a CA: {e}"),
                        )
                    })?;
                }
                Some(pem)
            }
            None => None,
        };
        let client_tls = match (cert, key) {
            (Some(cert_path), Some(key_path)) => {
                let cert_pem = read_tls_file(TlsFile::ClientCert, cert_path)?;
                let chain = pem_certificates(TlsFile::ClientCert, cert_path, &cert_pem)?;
                let key_pem = read_tls_file(TlsFile::ClientKey, key_path)?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    let problem = match e {
                        rustls::pki_types::pem::Error::NoItemsFound => {
                            "holds no PEM private key (BEGIN PRIVATE KEY, BEGIN RSA PRIVATE \
                             KEY or BEGIN EC PRIVATE KEY; encrypted keys are not supported)"
                                .to_owned()
                        }
                        other => format!("is not a valid PEM private key: {other}"),
                    };
                    TlsFile::ClientKey.error(key_path, problem)
                })?;
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| match e {
                        rustls::Error::InconsistentKeys(_) => TlsFile::ClientKey.error(
                            key_path,
                            format!(
                                "is not the key of the certificate in {}",
                                cert_path.display()
                            ),
                        ),
                        rustls::Error::InvalidCertificate(_) => TlsFile::ClientCert
                            .error(cert_path, format!("is not a usable certificate: {e}")),
                        other => TlsFile::ClientKey
                            .error(key_path, format!("is not a usable private key: {other}")),
                    })?;
                Some(ClientTlsConfig {
                    client_cert: cert_pem,
                    client_key: key_pem,
                })
            }
            _ => None,
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// Which of the Redis TLS files a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The CA certificates to trust ([`RedisOptions::tls_ca_file`]).
    Ca,
    /// The client certificate ([`RedisOptions::tls_client_cert_file`]).
    ClientCert,
    /// The client certificate's key ([`RedisOptions::tls_client_key_file`]).
    ClientKey,
}

impl TlsFile {
    /// The setting that names this file.
    pub fn setting(self) -> &'static str {
        match self {
            TlsFile::Ca => "redis_tls_ca_file",
            TlsFile::ClientCert => "redis_tls_client_cert_file",
            TlsFile::ClientKey => "redis_tls_client_key_file",
        }
    }

    fn error(self, path: &Path, problem: String) -> TlsFileError {
        TlsFileError {
            file: self,
            problem: format!("{} {problem}", path.display()),
        }
    }
}

/// A Redis TLS file that cannot be used: the message names the setting, the path and the
/// problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", file.setting())]
pub struct TlsFileError {
    /// The file in question.
    pub file: TlsFile,
    /// What is wrong, starting with the path when one is set.
    pub problem: String,
}

fn read_tls_file(file: TlsFile, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| {
        let problem = match e.kind() {
            std::io::ErrorKind::NotFound => "does not exist".to_owned(),
            _ => format!("cannot be read: {e}"),
        };
        file.error(path, problem)
    })
}

/// The certificates in `pem`, at least one.
fn pem_certificates(
    file: TlsFile,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file.error(path, format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file.error(
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(certs)
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = match RedisTarget::parse(&self.url) {
            Ok(target) => target.redacted(),
            Err(_) => "<invalid>".to_owned(),
        };
        f.debug_struct("RedisOptions")
            .field("url", &url)
            .field("deadline", &self.deadline)
            .field("connect_timeout", &self.connect_timeout)
            .field("key_prefix", &self.key_prefix)
            .field("sentinel_username", &self.sentinel_username)
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "<redacted>"),
            )
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_client_cert_file", &self.tls_client_cert_file)
            .field("tls_client_key_file", &self.tls_client_key_file)
            .finish()
    }
}

/// Why a Redis URL was rejected; the message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Redis URL: {0}")]
pub struct InvalidRedisUrl(String);

/// How the nodes in a Redis URL are arranged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One node.
    Node,
    /// Sentinels watching the named master.
    Sentinel {
        /// The master's name as the sentinels know it.
        master: String,
    },
    /// Redis Cluster seed nodes.
    Cluster,
}

/// A parsed Redis URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// Node, Sentinel or Cluster.
    pub topology: Topology,
    /// `(host, port)` of the node, the sentinels or the cluster seeds.
    pub hosts: Vec<(String, u16)>,
    /// Whether to speak TLS.
    pub tls: bool,
    /// Skip TLS certificate verification (`#insecure`).
    pub insecure: bool,
    /// ACL user.
    pub username: Option<String>,
    /// Password (`AUTH`).
    pub password: Option<String>,
    /// Database number.
    pub db: i64,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl RedisTarget {
    /// Parses one of the URL forms in the module doc.
    pub fn parse(url: &str) -> Result<Self, InvalidRedisUrl> {
        let bad = |msg: String| Err(InvalidRedisUrl(msg));
        let url = url.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            return bad(format!(
                "`{}` has no scheme; expected redis://, rediss://, redis+sentinel://, \
                 rediss+sentinel://, redis+cluster:// or rediss+cluster://",
                redact_userinfo(url)
            ));
        };
        let (tls, kind) = match scheme.to_ascii_lowercase().as_str() {
            "redis" => (false, "node"),
            "rediss" => (true, "node"),
            "redis+sentinel" => (false, "sentinel"),
            "rediss+sentinel" => (true, "sentinel"),
            "redis+cluster" => (false, "cluster"),
            "rediss+cluster" => (true, "cluster"),
            other => {
                return bad(format!(
                    "unknown scheme `{other}`; expected redis, rediss, redis+sentinel, \
                     rediss+sentinel, redis+cluster or rediss+cluster"
                ));
            }
        };
        let (rest, insecure) = match rest.split_once('#') {
            None => (rest, false),
            Some((rest, "insecure")) if tls => (rest, true),
            Some((_, "insecure")) => {
                return bad("`#insecure` only applies to TLS (rediss) URLs".to_owned());
            }
            Some((_, other)) => {
                return bad(format!(
                    "unknown fragment `#{other}`; only `#insecure` is known"
                ));
            }
        };
        if rest.contains('?') {
            return bad("query parameters are not supported".to_owned());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostlist) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, pass) = match info.split_once(':') {
                    Some((user, pass)) => (user, Some(pass)),
                    None => (info, None),
                };
                let user =
                    percent_decode(user).map_err(|e| InvalidRedisUrl(format!("user: {e}")))?;
                let pass = pass
                    .map(percent_decode)
                    .transpose()
                    .map_err(|e| InvalidRedisUrl(format!("password: {e}")))?;
                match (user.is_empty(), pass) {
                    (_, None) => {
                        // The name is not quoted: some write a bare password there.
                        return bad(
                            "credentials have no `:`; write `user:password@` or `:password@`"
                                .to_owned(),
                        );
                    }
                    (_, Some(pass)) if pass.is_empty() => {
                        return bad("the password after `:` is empty".to_owned());
                    }
                    (true, Some(pass)) => (None, Some(pass)),
                    (false, Some(pass)) => (Some(user), Some(pass)),
                }
            }
        };
        let default_port = if kind == "sentinel" { 26379 } else { 6379 };
        if hostlist.is_empty() {
            return bad("no host given".to_owned());
        }
        let hosts = hostlist
            .split(',')
            .map(|h| parse_host(h, default_port))
            .collect::<Result<Vec<_>, _>>()?;
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let parse_db = |s: &str| -> Result<i64, InvalidRedisUrl> {
            s.parse::<i64>()
                .ok()
                .filter(|db| *db >= 0)
                .ok_or_else(|| InvalidRedisUrl(format!("database `{s}` is not a number >= 0")))
        };
        let (topology, db) = match kind {
            "node" => {
                if hosts.len() > 1 {
                    return bad(format!(
                        "{} hosts given to a single-node URL; use redis+cluster:// or \
                         redis+sentinel:// for several hosts",
                        hosts.len()
                    ));
                }
                match segments.as_slice() {
                    [] => (Topology::Node, 0),
                    [db] => (Topology::Node, parse_db(db)?),
                    _ => return bad(format!("path `/{path}` should be `/<db>`")),
                }
            }
            "sentinel" => {
                let (master, db) = match segments.as_slice() {
                    [] => {
                        return bad("sentinel URL names no master; write \
                             redis+sentinel://host:port/<master-name>[/db]"
                            .to_owned());
                    }
                    [master] => (*master, 0),
                    [master, db] => (*master, parse_db(db)?),
                    _ => {
                        return bad(format!("path `/{path}` should be `/<master-name>[/<db>]`"));
                    }
                };
                let master = percent_decode(master)
                    .map_err(|e| InvalidRedisUrl(format!("master name: {e}")))?;
                (Topology::Sentinel { master }, db)
            }
            _ => match segments.as_slice() {
                [] => (Topology::Cluster, 0),
                ["0"] => (Topology::Cluster, 0),
                _ => {
                    return bad(format!(
                        "path `/{path}` on a cluster URL; Redis Cluster has only database 0"
                    ));
                }
            },
        };
        Ok(Self {
            topology,
            hosts,
            tls,
            insecure,
            username,
            password,
            db,
        })
    }

    /// The URL with the password hidden, for logs.
    pub fn redacted(&self) -> String {
        let s = if self.tls { "s" } else { "" };
        let scheme = match self.topology {
            Topology::Node => format!("redis{s}"),
            Topology::Sentinel { .. } => format!("redis{s}+sentinel"),
            Topology::Cluster => format!("redis{s}+cluster"),
        };
        let auth = match (&self.username, &self.password) {
            (Some(u), _) => format!("{u}:***@"),
            (None, Some(_)) => ":***@".to_owned(),
            _ => String::new(),
        };
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|(h, p)| {
                if h.contains(':') {
                    format!("[{h}]:{p}")
                } else {
                    format!("{h}:{p}")
                }
            })
            .collect();
        let path = match &self.topology {
            Topology::Node => format!("/{}", self.db),
            Topology::Sentinel { master } => format!("/{master}/{}", self.db),
            Topology::Cluster => String::new(),
        };
        let frag = if self.insecure { "#insecure" } else { "" };
        format!("{scheme}://{auth}{}{path}{frag}", hosts.join(","))
    }

    fn addr(&self, host: &str, port: u16) -> ConnectionAddr {
        if self.tls {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: self.insecure,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        }
    }

    fn redis_settings(&self) -> RedisConnectionInfo {
        let mut info = RedisConnectionInfo::default().set_db(self.db);
        if let Some(user) = &self.username {
            info = info.set_username(user);
        }
        if let Some(pass) = &self.password {
            info = info.set_password(pass);
        }
        info
    }

    fn connection_info(&self, host: &str, port: u16) -> RedisResult<ConnectionInfo> {
        Ok(self
            .addr(host, port)
            .into_connection_info()?
            .set_redis_settings(self.redis_settings()))
    }
}

/// Removes anything before an `@` so an unparseable URL can be quoted in an error.
fn redact_userinfo(url: &str) -> String {
    match url.rfind('@') {
        Some(i) => format!("***@{}", &url[i + 1..]),
        None => url.to_owned(),
    }
}

fn parse_host(spec: &str, default_port: u16) -> Result<(String, u16), InvalidRedisUrl> {
    let bad = |msg: String| Err(InvalidRedisUrl(msg));
    let (host, port) = if let Some(v6) = spec.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return bad(format!("host `{spec}` opens `[` without closing it"));
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => {
                    return bad(format!(
                        "unexpected `{after}` after the IPv6 host `[{host}]`"
                    ));
                }
            },
        }
    } else {
        match spec.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (spec, None),
        }
    };
    if host.is_empty() {
        return bad(format!("empty host in `{spec}`"));
    }
    if host.contains(['/', '@', '?', '#', ' ', '[', ']']) {
        return bad(format!(
            "host `{host}` contains a character not allowed in a host name"
        ));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return bad(format!(
                    "port `{p}` of host `{host}` is not a number in 1..=65535"
                ));
            }
        },
    };
    Ok((host.to_owned(), port))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "`%` is not followed by two hex digits".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding does not decode to UTF-8".to_owned())
}

/// Counters in Redis: single node, Sentinel or Cluster. Cloning shares the connections.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
    /// Requests' updates, coalesced into script calls by the batcher task.
    jobs: mpsc::UnboundedSender<Job>,
    /// Stops the background probe when the last clone is dropped.
    _probe: Arc<AbortOnDrop>,
    /// Where budget settlements' usage events wait for the ledger writer.
    outbox: Arc<OutboxReader>,
}

struct Inner {
    backend: Backend,
    deadline: Duration,
    connect_timeout: Duration,
    healthy: AtomicBool,
    target: RedisTarget,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Backend {
    Node(NodeLink),
    Sentinel(SentinelLink),
    Cluster(ClusterConnection),
}

/// A single node behind redis' reconnecting `ConnectionManager`.
struct NodeLink {
    client: Client,
    config: ConnectionManagerConfig,
    manager: RwLock<ConnectionManager>,
    probe_timeouts: AtomicU32,
}

/// The master Sentinel names, re-resolved whenever its connection goes bad.
struct SentinelLink {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    config: AsyncConnectionConfig,
    /// The current master connection and its generation (so a late error from an old
    /// connection does not drop a newer one).
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
}

impl RedisStore {
    /// Connects with [`RedisOptions::new`]`(url, deadline)`.
    ///
    /// Fails only on a malformed URL; an unreachable Redis still yields a store that
    /// reports unhealthy and reconnects in the background.
    pub async fn connect(url: &str, deadline: Duration) -> Result<RedisStore, StoreError> {
        Self::connect_with(RedisOptions::new(url, deadline)).await
    }

    /// Builds the store for `options`, waiting at most `connect_timeout` for a first PING.
    ///
    /// Fails only on a malformed URL or configuration, TLS files included
    /// ([`StoreError::Unavailable`] naming the problem).
    pub async fn connect_with(options: RedisOptions) -> Result<RedisStore, StoreError> {
        let target =
            RedisTarget::parse(&options.url).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let invalid = |e: &dyn fmt::Display| {
            StoreError::Unavailable(format!("invalid Redis configuration: {e}"))
        };
        let certs = tls_for(&target, &options).map_err(|e| invalid(&e))?;
        let backend = build_backend(&target, &options, certs).map_err(|e| invalid(&e))?;
        let outbox = Arc::new(OutboxReader::new(&options.key_prefix));
        let inner = Arc::new(Inner {
            backend,
            deadline: options.deadline,
            connect_timeout: options.connect_timeout.max(options.deadline),
            healthy: AtomicBool::new(false),
            target,
        });
        inner.probe().await;
        if !inner.healthy.load(Ordering::Relaxed) {
            tracing::warn!(
                redis = %inner.target.redacted(),
                "Redis is not reachable yet; counter calls fail until it is"
            );
        }
        let probe = tokio::spawn(run_probe(Arc::downgrade(&inner)));
        let (jobs, queue) = mpsc::unbounded_channel();
        // Ends when the last clone (and with it the sender) is dropped.
        tokio::spawn(run_batcher(Arc::downgrade(&inner), queue));
        Ok(RedisStore {
            inner,
            jobs,
            _probe: Arc::new(AbortOnDrop(probe.abort_handle())),
            outbox,
        })
    }

    /// Runs one script call whose keys share one hash slot (so Cluster routes it whole),
    /// bounded by the deadline; records health like the counter calls.
    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        call: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let inner = &self.inner;
        let result = match tokio::time::timeout(inner.deadline, inner.backend.invoke(call)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(StoreError::Unavailable(err.to_string())),
            Err(_) => Err(StoreError::Timeout(inner.deadline)),
        };
        inner.healthy.store(result.is_ok(), Ordering::Relaxed);
        result
    }

    /// The target with its password hidden, for logs and the config dump.
    pub fn describe(&self) -> String {
        self.inner.target.redacted()
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.inner.target)
            .field("deadline", &self.inner.deadline)
            .field("healthy", &self.inner.healthy.load(Ordering::Relaxed))
            .finish()
    }
}

impl RedisStore {
    /// [`CounterStore::apply`] for updates the caller hands over: they go to the batcher
    /// as they are, with nothing copied (the limiter's hot path).
    pub async fn apply_owned(&self, updates: Vec<CounterUpdate>) -> Result<Vec<u64>, StoreError> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let job = Job { updates, reply };
        let stopped = || StoreError::Unavailable("the Redis store is shutting down".to_owned());
        self.jobs.send(job).map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

impl CounterStore for RedisStore {
    async fn apply(&self, updates: &[CounterUpdate]) -> Result<Vec<u64>, StoreError> {
        self.apply_owned(updates.to_vec()).await
    }

    async fn budget(&self, call: &BudgetCall) -> Result<BudgetReply, StoreError> {
        redis_budget::budget(self, call).await
    }

    async fn outbox_pending(&self, max: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.outbox.pending(self, max).await
    }

    async fn outbox_ack(&self, ids: &[String]) -> Result<(), StoreError> {
        self.outbox.ack(self, ids).await
    }

    fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }
}

/// Coalesces queued jobs into script calls, at most [`MAX_IN_FLIGHT`] at a time.
async fn run_batcher(inner: Weak<Inner>, mut queue: mpsc::UnboundedReceiver<Job>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        // While every call slot is busy, more jobs queue up and join this batch.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut size = first.updates.len();
        let mut batch = vec![first];
        while size < MAX_BATCH_UPDATES {
            match queue.try_recv() {
                Ok(job) => {
                    size += job.updates.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        tokio::spawn(async move {
            let _slot = slot;
            let sizes: Vec<usize> = batch.iter().map(|job| job.updates.len()).collect();
            let (updates, spread) = coalesce(
                batch
                    .iter_mut()
                    .flat_map(|job| std::mem::take(&mut job.updates))
                    .collect(),
            );
            match inner.call(&updates).await {
                Ok(values) => {
                    let mut values = spread.values(values).into_iter();
                    for (job, n) in batch.into_iter().zip(sizes) {
                        let _ = job.reply.send(Ok(values.by_ref().take(n).collect()));
                    }
                }
                Err(error) => {
                    for job in batch {
                        let _ = job.reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

impl Inner {
    /// One script call for `updates`, bounded by the deadline; records health.
    async fn call(&self, updates: &[CounterUpdate]) -> Result<Vec<u64>, StoreError> {
        let inner = self;
        let result = match tokio::time::timeout(inner.deadline, inner.backend.apply(updates)).await
        {
            Ok(Ok(values)) if values.len() == updates.len() => Ok(values),
            Ok(Ok(values)) => Err(StoreError::Unavailable(format!(
                "script returned {} values for {} counters",
                values.len(),
                updates.len()
            ))),
            Ok(Err(err)) => Err(StoreError::Unavailable(err.to_string())),
            Err(_) => Err(StoreError::Timeout(inner.deadline)),
        };
        inner.healthy.store(result.is_ok(), Ordering::Relaxed);
        result
    }
}

/// PINGs every second until the store is dropped.
async fn run_probe(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; `connect_with` has just probed
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.probe().await;
    }
}

impl Inner {
    /// One PING bounded by the connect timeout (which also lets a reconnection that takes
    /// longer than a call's deadline complete).
    async fn probe(&self) {
        let ok = match tokio::time::timeout(self.connect_timeout, self.backend.ping()).await {
            Ok(Ok(())) => {
                self.backend.on_probe_ok();
                true
            }
            // A connection's own response timeout counts as silence, like ours.
            Ok(Err(err)) if !err.is_timeout() => {
                tracing::debug!(redis = %self.target.redacted(), error = %err, "Redis probe failed");
                false
            }
            Ok(Err(_)) | Err(_) => {
                tracing::debug!(redis = %self.target.redacted(), "Redis probe timed out");
                self.backend.on_probe_timeout();
                false
            }
        };
        self.healthy.store(ok, Ordering::Relaxed);
    }
}

/// The TLS files of `options`, checked against each other and against `target`.
fn tls_for(
    target: &RedisTarget,
    options: &RedisOptions,
) -> Result<Option<TlsCertificates>, String> {
    let Some(certs) = options.tls_certificates().map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let set = [
        (TlsFile::Ca, certs.root_cert.is_some()),
        (TlsFile::ClientCert, certs.client_tls.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(file, _)| file.setting())
    .collect::<Vec<_>>()
    .join(" and ");
    if !target.tls {
        return Err(format!(
            "{set} set, but `{}` does not use TLS; use a rediss://, rediss+sentinel:// or \
             rediss+cluster:// URL, or unset them",
            target.redacted()
        ));
    }
    if target.insecure && certs.root_cert.is_some() {
        return Err(format!(
            "{} set, but `{}` skips certificate verification (#insecure), so the CA would \
             never be consulted; drop #insecure (or the CA file)",
            TlsFile::Ca.setting(),
            target.redacted()
        ));
    }
    if target.insecure
        && certs.client_tls.is_some()
        && matches!(target.topology, Topology::Sentinel { .. })
    {
        return Err(format!(
            "{} cannot be used with #insecure under Sentinel (`{}`): redis 1.x presents no \
             client certificate to the master when verification is off; trust the servers' \
             CA with {} instead of #insecure",
            TlsFile::ClientCert.setting(),
            target.redacted(),
            TlsFile::Ca.setting()
        ));
    }
    Ok(Some(certs))
}

fn build_backend(
    target: &RedisTarget,
    options: &RedisOptions,
    certs: Option<TlsCertificates>,
) -> RedisResult<Backend> {
    let connect_timeout = options.connect_timeout.max(options.deadline);
    let mode = if target.insecure {
        TlsMode::Insecure
    } else {
        TlsMode::Secure
    };
    match &target.topology {
        Topology::Node => {
            let (host, port) = &target.hosts[0];
            let info = target.connection_info(host, *port)?;
            let client = match certs {
                // Keeps the address' `insecure` flag; the certificates become its TLS
                // parameters.
                Some(certs) => Client::build_with_tls(info, certs)?,
                None => Client::open(info)?,
            };
            // One connection attempt per call or probe: a caller never waits behind a
            // backoff schedule, and the probe keeps retrying every second.
            let config = ConnectionManagerConfig::new()
                .set_number_of_retries(0)
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(connect_timeout));
            let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
            Ok(Backend::Node(NodeLink {
                client,
                config,
                manager: RwLock::new(manager),
                probe_timeouts: AtomicU32::new(0),
            }))
        }
        Topology::Sentinel { master } => {
            let sentinels = target.hosts.iter().map(|(h, p)| target.addr(h, *p));
            let mut builder =
                SentinelClientBuilder::new(sentinels, master, SentinelServerType::Master)?
                    .set_client_to_redis_db(target.db);
            if target.tls {
                builder = builder
                    .set_client_to_redis_tls_mode(mode)
                    .set_client_to_sentinel_tls_mode(mode);
            }
            if let Some(certs) = certs {
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
            if let Some(user) = &target.username {
                builder = builder.set_client_to_redis_username(user);
            }
            if let Some(pass) = &target.password {
                builder = builder.set_client_to_redis_password(pass);
            }
            if let Some(user) = &options.sentinel_username {
                builder = builder.set_client_to_sentinel_username(user);
            }
            if let Some(pass) = &options.sentinel_password {
                builder = builder.set_client_to_sentinel_password(pass);
            }
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(connect_timeout));
            Ok(Backend::Sentinel(SentinelLink {
                sentinel: tokio::sync::Mutex::new(builder.build()?),
                config,
                current: Mutex::new(None),
                generation: AtomicU64::new(0),
            }))
        }
        Topology::Cluster => {
            let nodes = target
                .hosts
                .iter()
                .map(|(h, p)| target.connection_info(h, *p))
                .collect::<RedisResult<Vec<_>>>()?;
            let mut builder = ClusterClientBuilder::new(nodes)
                .connection_timeout(connect_timeout)
                .response_timeout(connect_timeout);
            if let Some(certs) = certs {
                // `certs` alone would switch an `#insecure` URL to verified TLS.
                builder = builder.tls(mode).certs(certs);
            }
            let client = builder.build()?;
            let config = ClusterConfig::new()
                .set_connection_timeout(connect_timeout)
                .set_response_timeout(connect_timeout);
            // Pending: the nodes are contacted in the background, so a cluster that is
            // down at startup does not stop the store from being built.
            Ok(Backend::Cluster(
                client.get_pending_async_connection_with_config(config),
            ))
        }
    }
}

/// The `EVALSHA` of [`APPLY_SCRIPT`] for `updates`, keys and arguments laid out as the
/// script expects. Written straight into one command buffer: a batch of a thousand
/// updates is one allocation, not one per argument.
fn apply_cmd<'a, I>(updates: I) -> Cmd
where
    I: IntoIterator<Item = &'a CounterUpdate>,
    I::IntoIter: Clone,
{
    let updates = updates.into_iter();
    let (mut count, mut keys, mut key_bytes) = (0, 0, 0);
    for u in updates.clone() {
        count += 1;
        keys += 1;
        key_bytes += u.key.len();
        if let CounterKind::Sliding { previous_key, .. } = &u.kind {
            keys += 1;
            key_bytes += previous_key.len();
        }
    }
    let arg_count = 3 + keys + 6 * count;
    // Six arguments of at most 20 digits each per update, and the hash.
    let mut cmd = Cmd::with_capacity(arg_count, 64 + key_bytes + arg_count * 8);
    cmd.arg("EVALSHA").arg(APPLY.get_hash()).arg(keys);
    for u in updates.clone() {
        cmd.arg(&u.key);
        if let CounterKind::Sliding { previous_key, .. } = &u.kind {
            cmd.arg(previous_key);
        }
    }
    for u in updates {
        let refund = if u.refund { "1" } else { "0" };
        match &u.kind {
            CounterKind::Window { ttl_secs, cap }
            | CounterKind::Idle {
                idle_secs: ttl_secs,
                cap,
            } => {
                let kind = if matches!(u.kind, CounterKind::Window { .. }) {
                    "w"
                } else {
                    "i"
                };
                cmd.arg(kind).arg(u.hits).arg(refund).arg(ttl_secs.max(&1));
                match cap {
                    Some(cap) => cmd.arg(cap),
                    None => cmd.arg(""),
                };
                cmd.arg("");
            }
            CounterKind::Sliding {
                previous_key: _,
                previous_weight_ppm,
                ttl_secs,
                limit,
            } => {
                cmd.arg("s")
                    .arg(u.hits)
                    .arg(refund)
                    .arg(ttl_secs.max(&1))
                    .arg(limit)
                    .arg(previous_weight_ppm);
            }
            CounterKind::Bucket {
                now_us,
                interval_us,
                capacity,
            } => {
                cmd.arg("b")
                    .arg(u.hits)
                    .arg(refund)
                    .arg(now_us)
                    .arg(interval_us.max(&1))
                    .arg(capacity);
            }
        }
    }
    cmd
}

/// Runs an [`apply_cmd`] call; on `NOSCRIPT` (a fresh or restarted server, or a Cluster
/// node that has not seen the script yet) loads the script and sends the call again.
async fn eval_apply<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    cmd: &Cmd,
) -> RedisResult<Vec<u64>> {
    match cmd.query_async(conn).await {
        Err(err) if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            APPLY.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        result => result,
    }
}

impl Backend {
    async fn apply(&self, updates: &[CounterUpdate]) -> RedisResult<Vec<u64>> {
        match self {
            Backend::Node(node) => {
                let mut conn = node.manager();
                eval_apply(&mut conn, &apply_cmd(updates)).await
            }
            Backend::Sentinel(link) => {
                let (generation, mut conn) = link.connection().await?;
                let result = eval_apply(&mut conn, &apply_cmd(updates)).await;
                link.check(generation, &result);
                result
            }
            Backend::Cluster(conn) => apply_cluster(conn, updates).await,
        }
    }

    /// Runs one script call on the node its first key belongs to.
    async fn invoke<T: FromRedisValue>(&self, call: &ScriptInvocation<'_>) -> RedisResult<T> {
        match self {
            Backend::Node(node) => call.invoke_async(&mut node.manager()).await,
            Backend::Sentinel(link) => {
                let (generation, mut conn) = link.connection().await?;
                let result = call.invoke_async(&mut conn).await;
                link.check(generation, &result);
                result
            }
            Backend::Cluster(conn) => call.invoke_async(&mut conn.clone()).await,
        }
    }

    async fn ping(&self) -> RedisResult<()> {
        let ping = redis::cmd("PING");
        match self {
            Backend::Node(node) => ping.query_async(&mut node.manager()).await,
            Backend::Sentinel(link) => {
                let (generation, mut conn) = link.connection().await?;
                let result = ping.query_async(&mut conn).await;
                link.check(generation, &result);
                result
            }
            Backend::Cluster(conn) => ping.query_async(&mut conn.clone()).await,
        }
    }

    fn on_probe_ok(&self) {
        if let Backend::Node(node) = self {
            node.probe_timeouts.store(0, Ordering::Relaxed);
        }
    }

    /// The probe got no answer in time: the connection may be silently dead.
    fn on_probe_timeout(&self) {
        match self {
            Backend::Node(node) => {
                if node.probe_timeouts.fetch_add(1, Ordering::Relaxed) + 1
                    >= PROBE_TIMEOUTS_BEFORE_REBUILD
                {
                    node.rebuild();
                }
            }
            // Cheap to redo, and the master may have moved: ask the sentinels again.
            Backend::Sentinel(link) => link.forget_all(),
            Backend::Cluster(_) => {}
        }
    }
}

impl NodeLink {
    fn manager(&self) -> ConnectionManager {
        self.manager
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces a connection that stopped answering without failing (the manager only
    /// reconnects on errors, and a black-holed socket never raises one).
    fn rebuild(&self) {
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(fresh) => {
                tracing::warn!("Redis stopped answering; replacing its connection");
                *self.manager.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                self.probe_timeouts.store(0, Ordering::Relaxed);
            }
            Err(err) => tracing::warn!(error = %err, "could not rebuild the Redis connection"),
        }
    }
}

impl SentinelLink {
    fn cached(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The master's connection, asking the sentinels for the master if there is none.
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(current) = self.cached() {
            return Ok(current);
        }
        // One resolution at a time; callers that queued behind it reuse its result.
        let mut sentinel = self.sentinel.lock().await;
        if let Some(current) = self.cached() {
            return Ok(current);
        }
        let conn = sentinel
            .get_async_connection_with_config(&self.config)
            .await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Drops the connection of `generation` if `result` shows it is unusable: broken, or
    /// talking to a master that has become a replica (`READONLY`).
    fn check<T>(&self, generation: u64, result: &RedisResult<T>) {
        let Err(err) = result else { return };
        if err.is_io_error() || err.is_unrecoverable_error() || err.code() == Some("READONLY") {
            let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
            if current.as_ref().is_some_and(|(g, _)| *g == generation) {
                current.take();
            }
        }
    }

    fn forget_all(&self) {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

/// Runs one script call per hash tag, concurrently, and puts the values back in order.
async fn apply_cluster(
    conn: &ClusterConnection,
    updates: &[CounterUpdate],
) -> RedisResult<Vec<u64>> {
    let mut order: Vec<Vec<usize>> = Vec::new();
    let mut by_tag: HashMap<&str, usize> = HashMap::new();
    for (i, u) in updates.iter().enumerate() {
        let group = *by_tag.entry(keys::hash_tag(&u.key)).or_insert_with(|| {
            order.push(Vec::new());
            order.len() - 1
        });
        order[group].push(i);
    }
    if order.len() == 1 {
        return eval_apply(&mut conn.clone(), &apply_cmd(updates)).await;
    }
    let calls = order.iter().map(|indices| {
        let cmd = apply_cmd(indices.iter().map(|&i| &updates[i]));
        let mut conn = conn.clone();
        async move { eval_apply(&mut conn, &cmd).await }
    });
    let results = futures::future::try_join_all(calls).await?;
    let mut values = vec![0; updates.len()];
    for (indices, group) in order.iter().zip(results) {
        if group.len() != indices.len() {
            return Err(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "script returned the wrong number of values",
            )));
        }
        for (&i, value) in indices.iter().zip(group) {
            values[i] = value;
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> RedisTarget {
        RedisTarget::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn reject(url: &str) -> String {
        match RedisTarget::parse(url) {
            Ok(t) => panic!("{url} parsed as {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_plain_url_names_one_node_with_defaults() {
        let t = parse("redis://localhost");
        assert_eq!(t.topology, Topology::Node);
        assert_eq!(t.hosts, vec![("localhost".to_owned(), 6379)]);
        assert!(!t.tls);
        assert_eq!((t.username, t.password, t.db), (None, None, 0));
    }

    #[test]
    fn credentials_port_and_db_are_read_and_percent_decoded() {
        let t = parse("rediss://alice:p%40ss%3Aw@10.0.0.1:6380/3");
        assert!(t.tls);
        assert_eq!(t.hosts, vec![("10.0.0.1".to_owned(), 6380)]);
        assert_eq!(t.username.as_deref(), Some("alice"));
        assert_eq!(t.password.as_deref(), Some("p@ss:w"));
        assert_eq!(t.db, 3);
    }

    #[test]
    fn a_password_alone_is_allowed() {
        let t = parse("redis://:secret@h:1");
        assert_eq!((t.username, t.password.as_deref()), (None, Some("secret")));
    }

    #[test]
    fn sentinel_urls_name_sentinels_master_and_db() {
        let t = parse("redis+sentinel://u:p@s1:5000,s2,[::1]:5002/mymaster/2");
        assert_eq!(
            t.topology,
            Topology::Sentinel {
                master: "mymaster".to_owned()
            }
        );
        assert_eq!(
            t.hosts,
            vec![
                ("s1".to_owned(), 5000),
                ("s2".to_owned(), 26379),
                ("::1".to_owned(), 5002)
            ]
        );
        assert_eq!(t.db, 2);
        assert!(parse("rediss+sentinel://s1/m").tls);
    }

    #[test]
    fn cluster_urls_list_seed_nodes() {
        let t = parse("rediss+cluster://:pw@n1:7000,n2:7001");
        assert_eq!(t.topology, Topology::Cluster);
        assert!(t.tls);
        assert_eq!(t.hosts.len(), 2);
    }

    #[test]
    fn insecure_fragment_only_applies_to_tls() {
        assert!(parse("rediss://h#insecure").insecure);
        assert!(reject("redis://h#insecure").contains("only applies to TLS"));
    }

    #[test]
    fn malformed_urls_are_rejected_with_the_reason() {
        assert!(reject("localhost:6379").contains("no scheme"));
        assert!(reject("http://h").contains("unknown scheme `http`"));
        assert!(reject("redis://h:notaport").contains("port `notaport`"));
        assert!(reject("redis://h:0").contains("port `0`"));
        assert!(reject("redis://h:6379/x").contains("database `x`"));
        assert!(reject("redis://a,b").contains("single-node"));
        assert!(reject("redis+sentinel://s1,s2").contains("names no master"));
        assert!(reject("redis+cluster://n1/3").contains("only database 0"));
        assert!(reject("redis://").contains("no host"));
        assert!(reject("redis://hunter2@h").contains("have no `:`"));
        assert!(reject("redis://h?timeout=1").contains("query parameters"));
        assert!(reject("redis://[::1:6379").contains("without closing"));
        assert!(reject("redis://:p%zz@h").contains("password"));
    }

    #[test]
    fn redacted_urls_hide_the_password() {
        let shown = parse("redis://alice:hunter2@h:1/0").redacted();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(shown, "redis://alice:***@h:1/0");
        let err = reject("hunter2@h");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn script_arguments_are_laid_out_six_per_update() {
        let updates = [
            CounterUpdate::window("k", 3, 0).capped(9).refunding(),
            CounterUpdate {
                key: "s".into(),
                hits: 1,
                refund: false,
                kind: CounterKind::Sliding {
                    previous_key: "p".into(),
                    previous_weight_ppm: 500_000,
                    ttl_secs: 120,
                    limit: 10,
                },
            },
        ];
        let cmd = apply_cmd(&updates);
        let args: Vec<String> = cmd
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "<not a plain argument>".to_owned(),
            })
            .collect();
        let hash = APPLY.get_hash().to_owned();
        let expected = [
            "EVALSHA", &hash, "3", "k", "s", "p", // the keys: a sliding window's two
            "w", "3", "1", "1", "9", "", // a zero ttl is sent as 1 s
            "s", "1", "0", "120", "10", "500000",
        ];
        assert_eq!(args, expected);
    }
}
