#!/usr/bin/env bash
# Measures tollgate against a no-op RateLimitService in the same run (docs/benchmarks.md).
#
# For each scenario: starts the no-op baseline, tollgate on the memory store and tollgate
# on Redis (unique key prefix; a private redis-server unless --redis names one) on
# loopback ports, waits (bounded) until each answers, then runs the load generator
# against them in alternating rounds (noop, memory, redis, noop, ...), so drift on a
# shared machine hits all three alike. The load generator (with the private Redis) and
# the servers are pinned to separate cores when `taskset` exists. Writes
# loadtest/results/latest.md (medians over rounds, ratios to the baseline) and latest.json
# (--name: other names, to keep several runs).
# Every server is stopped on exit; every run is bounded in time.
#
#   loadtest/run.sh                  # throughput, 3 rounds, all scenarios (~8 min)
#   loadtest/run.sh --quick          # 1 round of 2 s per server and scenario (~1 min)
#   loadtest/run.sh --mode latency   # find max throughput, then p99 at 50 % of it (~9 min)
#   loadtest/run.sh --scenarios "one token-budget" --stores memory --rounds 5
#   loadtest/run.sh --scenarios rules-10k --rules "10 100 1000 10000"   # flatness sweeps
#   loadtest/run.sh --scenarios high-cardinality --keys "1 1000 1000000"
#   loadtest/run.sh --mode memory    # server memory per million active keys (~1 min)
#   loadtest/run.sh --compare /tmp/old/release   # also another build's tollgate, same rounds
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODE=throughput
ROUNDS=3
DURATION=
WARMUP=
SCENARIOS="one five wildcard high-cardinality rules-10k token-budget"
STORES="memory redis"
# Empty: a private redis-server of this run's own (see "Redis" below).
REDIS_URL=${REDIS_URL:-}
CONNECTIONS=4
CONCURRENCY=16
FRACTION=0.5
RULES=
KEYS=
MEMORY_KEYS=1000000
COMPARE_BIN=
# tollgate's store deadline (its default, 10 ms); the memory mode's fill sends batches of a
# hundred counters per request and waits longer.
STORE_DEADLINE_MS=10
NAME=
BUILD=1
VERBOSE=0
QUICK=0
ARGS="$*"

usage() {
  # The header comment, whatever its length.
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
  cat <<'EOF'
Options:
  --quick               one round, 2 s measured after 0.5 s warm-up (a smoke run)
  --mode M              throughput (closed loop), latency (max, then open loop at
                        --fraction of it), both, or memory (resident memory before
                        and after filling --memory-keys counters) [throughput]
  --rounds N            alternating rounds; the table shows medians   [3]
  --duration S          seconds measured per run   [6; 4 in latency mode]
  --warmup S            seconds of warm-up per run [2; 1 in latency mode]
  --scenarios "A B"     one five wildcard high-cardinality rules-10k token-budget
  --stores "A B"        tollgate stores to measure: memory and/or redis
  --redis URL           an existing Redis for the redis store, left unpinned [$REDIS_URL;
                        default: a private redis-server pinned with the load generator]
  --connections N       HTTP/2 connections          [4]
  --concurrency N       streams per connection      [16]
  --fraction F          share of the maximum for latency mode   [0.5]
  --rules "N ..."       rules-10k with each of these rule counts, one table row each
                        (a sweep)                               [10000]
  --keys "N ..."        high-cardinality with each of these key counts (a sweep)
                                                                [1000000]
  --memory-keys N       counters the memory mode fills          [1000000]
  --compare DIR         also measure the tollgate binary in DIR (another build's
                        target/release) on every store, as "<store>-compare", in
                        the same alternating rounds: what a change did, on one host
                        (throughput and latency modes)
  --name NAME           write loadtest/results/NAME.md and .json [latest; memory in
                        memory mode]
  --no-build            use the release binaries already built
  --verbose             show the load generator's progress lines
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --mode) MODE=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --stores) STORES=$2; shift ;;
    --redis) REDIS_URL=$2; shift ;;
    --connections) CONNECTIONS=$2; shift ;;
    --concurrency) CONCURRENCY=$2; shift ;;
    --fraction) FRACTION=$2; shift ;;
    --rules) RULES=$2; shift ;;
    --keys) KEYS=$2; shift ;;
    --memory-keys) MEMORY_KEYS=$2; shift ;;
    --compare) COMPARE_BIN=$2; shift ;;
    --name) NAME=$2; shift ;;
    --no-build) BUILD=0 ;;
    --verbose) VERBOSE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ -z "$NAME" ]; then
  NAME=latest
  [ "$MODE" = memory ] && NAME=memory
fi
case "$NAME" in
  */*|'') echo "--name must be a plain file name" >&2; exit 2 ;;
esac
case "$MODE" in
  throughput|latency|both|memory) ;;
  *) echo "--mode must be throughput, latency, both or memory" >&2; exit 2 ;;
esac
if [ "$QUICK" -eq 1 ]; then
  ROUNDS=1
  DURATION=${DURATION:-2}
  WARMUP=${WARMUP:-0.5}
fi
if [ "$MODE" = throughput ]; then
  DURATION=${DURATION:-6}
  WARMUP=${WARMUP:-2}
else
  DURATION=${DURATION:-4}
  WARMUP=${WARMUP:-1}
fi

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Settings from the caller's environment must not leak into the servers under test.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^TOLLGATE_' || true)

if [ "$BUILD" -eq 1 ]; then
  log "building release binaries (cargo build --release -p tollgate -p loadtest --bins)"
  cargo build --release -p tollgate -p loadtest --bins
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
BIN=$TARGET_DIR/release
for b in tollgate tollgate-load noop-rls; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b (run without --no-build)" >&2; exit 1; }
done
LOAD=$BIN/tollgate-load
if [ -n "$COMPARE_BIN" ]; then
  [ -x "$COMPARE_BIN/tollgate" ] || { echo "--compare: no tollgate binary in $COMPARE_BIN" >&2; exit 2; }
  COMPARE_BIN=$(cd "$COMPARE_BIN" && pwd)
fi

# Pinning: on n cores, the load generator gets the first half, the servers the rest; a
# private Redis (below) shares the load generator's.
PIN_LOAD=()
PIN_SERVER=()
PINNING="none (taskset not found or a single core)"
CORES=$(nproc 2>/dev/null || echo 1)
if command -v taskset >/dev/null 2>&1 && [ "$CORES" -ge 2 ]; then
  half=$((CORES / 2))
  cpu_range() { if [ "$1" -eq "$2" ]; then echo "$1"; else echo "$1-$2"; fi; }
  load_cpus=$(cpu_range 0 $((half - 1)))
  server_cpus=$(cpu_range "$half" $((CORES - 1)))
  PIN_LOAD=(taskset -c "$load_cpus")
  PIN_SERVER=(taskset -c "$server_cpus")
  PINNING="load generator on CPU $load_cpus, servers on CPU $server_cpus"
fi

RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-load.XXXXXX")
RAW=$RUN_DIR/raw
mkdir -p "$RAW"
PIDS=()

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
REDIS_PID=
on_exit() {
  cleanup
  if [ -n "$REDIS_PID" ]; then
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  rm -rf "$RUN_DIR"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# Redis: unless --redis names one, a private redis-server (no persistence, its own port
# and directory) pinned to the load generator's cores. On a small machine the server
# under test then has its cores to itself in every row, as the no-op baseline does:
# left to the OS, Redis is woken on the core of the tollgate that writes to it and
# takes that core's time (on 2 cores: about a fifth of the Redis rows' throughput). In
# production Redis runs on machines of its own.
REDIS_LAYOUT="external, unpinned"
if [ -z "$REDIS_URL" ] && [[ " $STORES " == *" redis "* ]]; then
  command -v redis-server >/dev/null 2>&1 || { echo "redis-server not found: install it or pass --redis URL" >&2; exit 1; }
  redis_port=$("$LOAD" free-port)
  mkdir -p "$RUN_DIR/redis"
  "${PIN_LOAD[@]}" redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
    --dir "$RUN_DIR/redis" --logfile "$RUN_DIR/redis/redis.log" &
  REDIS_PID=$!
  REDIS_URL=redis://127.0.0.1:$redis_port
  for _ in $(seq 100); do
    [ "$(redis-cli -u "$REDIS_URL" ping 2>/dev/null)" = PONG ] && break
    sleep 0.1
  done
  [ "$(redis-cli -u "$REDIS_URL" ping 2>/dev/null)" = PONG ] || { echo "the private redis-server did not start" >&2; exit 1; }
  REDIS_LAYOUT="private, unpinned"
  [ ${#PIN_LOAD[@]} -gt 0 ] && REDIS_LAYOUT="private, pinned with the load generator (CPU $load_cpus)"
fi

# Starts one server and waits until it answers; sets STARTED_URL to its gRPC URL and
# STARTED_PID to its process id (taskset execs, so it is the server's own). Retries
# on a new port if it does not come up (another process may have taken the port).
# Not called in a subshell, so the server's pid lands in PIDS for cleanup.
#   start_server LABEL RULES_DIR CASE
start_server() {
  local label=$1 rules=$2 case_name=$3 attempt grpc http pid logfile
  logfile=$RUN_DIR/$label.log
  STARTED_HTTP=
  for attempt in 1 2 3; do
    grpc=$("$LOAD" free-port)
    case "$label" in
      noop)
        "${PIN_SERVER[@]}" "$BIN/noop-rls" --addr "127.0.0.1:$grpc" >>"$logfile" 2>&1 &
        ;;
      *)
        http=$("$LOAD" free-port)
        local store=memory tollgate=$BIN/tollgate prefix=$KEY_PREFIX$case_name:
        [ "${label%-compare}" = redis ] && store=$REDIS_URL
        # The compared build counts under keys of its own (the two may share a Redis).
        if [[ "$label" == *-compare ]]; then
          tollgate=$COMPARE_BIN/tollgate
          prefix=${prefix}compare:
        fi
        # A ledger and an outbox of its own per server and case: the token-budget setup
        # starts from an empty ledger, and no case inherits another's usage.
        TOLLGATE_GRPC_ADDR=127.0.0.1:$grpc TOLLGATE_HTTP_ADDR=127.0.0.1:$http \
          TOLLGATE_RULES_DIR=$rules TOLLGATE_WATCH_RULES=false TOLLGATE_STORE=$store \
          TOLLGATE_KEY_PREFIX=$prefix \
          TOLLGATE_DATABASE_URL="sqlite://$RUN_DIR/ledger-$case_name-$label.db" \
          TOLLGATE_OUTBOX_PATH="$RUN_DIR/outbox-$case_name-$label.jsonl" \
          TOLLGATE_BOOTSTRAP_TOKEN=$ADMIN_TOKEN \
          TOLLGATE_STORE_DEADLINE_MS=$STORE_DEADLINE_MS \
          RUST_LOG=${RUST_LOG:-warn} \
          "${PIN_SERVER[@]}" "$tollgate" serve >>"$logfile" 2>&1 &
        ;;
    esac
    pid=$!
    if "$LOAD" wait --target "http://127.0.0.1:$grpc" --timeout 20 2>>"$logfile"; then
      PIDS+=("$pid")
      STARTED_URL="http://127.0.0.1:$grpc"
      STARTED_PID=$pid
      [ "$label" = noop ] || STARTED_HTTP="http://127.0.0.1:$http"
      return 0
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    log "$label did not come up (attempt $attempt); its log ends with:"
    tail -n 5 "$logfile" >&2 || true
  done
  return 1
}

# A prefix no other run (or test) uses, so Redis counters start from zero; keys expire
# within a minute (the generated rules use minute windows), except the memory mode's (day
# windows), which it deletes once measured. Budget counters (token-budget) live for their
# month and are few (two per tenant).
KEY_PREFIX="loadtest-$$-$(date +%s):"
# The admin token every tollgate starts with (TOLLGATE_BOOTSTRAP_TOKEN), for the
# token-budget setup; a fresh one per run, on loopback only.
ADMIN_TOKEN="loadtest-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"

# The cases: a scenario, with --rules or --keys for a sweep, each its own table row.
#   "scenario|params|variant"
CASES=()
for scenario in $SCENARIOS; do
  case "$scenario" in
    rules-10k) sweep=$RULES; param=rules ;;
    high-cardinality) sweep=$KEYS; param=keys ;;
    *) sweep=; param= ;;
  esac
  if [ -n "$sweep" ]; then
    for n in $sweep; do CASES+=("$scenario|--$param $n|$n $param"); done
  else
    CASES+=("$scenario||")
  fi
done

LABELS="noop $STORES"
if [ -n "$COMPARE_BIN" ]; then
  for store in $STORES; do LABELS="$LABELS $store-compare"; done
fi
MODES=()
case "$MODE" in
  throughput) MODES=(throughput) ;;
  latency) MODES=(latency) ;;
  both) MODES=(throughput latency) ;;
esac

# Memory mode: per store, tollgate's resident memory (and Redis' used_memory) before and
# after charging --memory-keys distinct counters once each; a table of its own. The rules
# use day windows, so no counter expires between the fill and the reading (minute windows
# would drop those filled before a minute boundary); the warm-up's counters are u0 to
# u999 and the measured fill starts after them, so it adds exactly --memory-keys new ones.
# A store whose fill fails is skipped (the reason is in its log, shown), not the run.
if [ "$MODE" = memory ]; then
  STORE_DEADLINE_MS=2000
  WARM_KEYS=1000
  rules=$RUN_DIR/rules-memory
  "$LOAD" rules --scenario high-cardinality --unit day --out "$rules" >/dev/null
  rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
  redis_used() { redis-cli -u "$REDIS_URL" info memory 2>/dev/null | sed -n 's/^used_memory:\([0-9]*\).*/\1/p' || true; }
  # Day windows would keep the counters in Redis until midnight UTC: deleted once read.
  drop_redis_keys() {
    redis-cli -u "$REDIS_URL" --scan --pattern "${KEY_PREFIX}memory:*" 2>/dev/null |
      xargs -r -n 1000 redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1 || true
  }
  # Gives up on one store: says why (the end of its log), stops its server, drops its keys.
  skip_store() {
    log "memory $1: $2; skipping it; its log ends with:"
    tail -n 5 "$RUN_DIR/$1.log" >&2 || true
    cleanup
    [ "$1" = redis ] && drop_redis_keys
    return 0
  }
  LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
  rows=()
  for label in $STORES; do
    start_server "$label" "$rules" memory || { log "$label did not start"; continue; }
    # Warm: connections, the runtime and the rules, with a handful of counters.
    # (RUST_LIB_BACKTRACE=0: its error is the log's last lines, not a backtrace.)
    if ! RUST_LIB_BACKTRACE=0 "$LOAD" fill --target "$STARTED_URL" --keys "$WARM_KEYS" --batch 100 \
      2>>"$RUN_DIR/$label.log"; then
      skip_store "$label" "the warm-up fill failed"
      continue
    fi
    sleep 1
    rss0=$(rss_kib "$STARTED_PID"); used0=
    [ -n "$rss0" ] || { skip_store "$label" "the server is gone"; continue; }
    [ "$label" = redis ] && used0=$(redis_used)
    log "memory $label: filling $MEMORY_KEYS counters (resident before: $((rss0 / 1024)) MiB)"
    # Its summary line to the terminal and the log alike; its failure (pipefail) skips the store.
    if ! RUST_LIB_BACKTRACE=0 "$LOAD" fill --target "$STARTED_URL" --from "$WARM_KEYS" \
      --keys "$MEMORY_KEYS" --batch 100 2>&1 >/dev/null | tee -a "$RUN_DIR/$label.log" >&2; then
      skip_store "$label" "the fill failed"
      continue
    fi
    sleep 1
    rss1=$(rss_kib "$STARTED_PID"); used1=
    [ -n "$rss1" ] || { skip_store "$label" "the server is gone"; continue; }
    redis_col="-"
    if [ "$label" = redis ]; then
      used1=$(redis_used)
      if [ -n "$used0" ] && [ -n "$used1" ]; then
        redis_col=$(awk -v a="$used0" -v b="$used1" -v n="$MEMORY_KEYS" 'BEGIN { printf "%.0f MiB (%.0f B per key)", (b - a) / 1048576, (b - a) / n }')
      fi
    fi
    rows+=("$(awk -v l="$label" -v a="$rss0" -v b="$rss1" -v n="$MEMORY_KEYS" -v r="$redis_col" 'BEGIN {
      printf "| %s | %d | %.0f | %.0f | %.0f MiB (%.0f B per key) | %s |", l, n, a / 1024, b / 1024, (b - a) / 1024, (b - a) * 1024 / n, r }')")
    cleanup
    [ "$label" = redis ] && drop_redis_keys
  done
  if [ ${#rows[@]} -eq 0 ]; then
    log "no store was measured"
    exit 1
  fi
  mkdir -p loadtest/results
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  git diff --quiet HEAD 2>/dev/null || commit="$commit (with local changes)"
  {
    echo "# tollgate memory per active key, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- machine: $CORES cores; load average before: $LOADAVG_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")"
    echo "- commit: $commit; command: \`loadtest/run.sh${ARGS:+ $ARGS}\`"
    echo "- each store's tollgate fills $MEMORY_KEYS distinct high-cardinality counters (one charge each, day windows, key prefix of $((${#KEY_PREFIX} + 7)) bytes) after a warm-up of $WARM_KEYS others"
    echo
    echo "| store | counters added | tollgate RSS before (MiB) | after (MiB) | tollgate growth | Redis used_memory growth |"
    echo "|---|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
  } >"loadtest/results/$NAME.md"
  log "wrote loadtest/results/$NAME.md"
  cat "loadtest/results/$NAME.md"
  exit 0
fi

n_cases=${#CASES[@]}
n_labels=$(wc -w <<<"$LABELS")
total=$((n_cases * n_labels * ROUNDS * ${#MODES[@]}))
per_run=$(awk -v d="$DURATION" -v w="$WARMUP" -v m="$MODE" 'BEGIN { x = d + w; if (m == "latency") x *= 2; if (m == "both") x *= 1.5; printf "%d", x + 0.5 }')
log "$total runs of about ${per_run} s (${ROUNDS} round(s); ${DURATION} s measured after ${WARMUP} s warm-up; $CONNECTIONS x $CONCURRENCY streams); pinning: $PINNING"

LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
done_runs=0
for case_spec in "${CASES[@]}"; do
  IFS='|' read -r scenario params variant <<<"$case_spec"
  read -ra PARAMS <<<"$params"
  VARIANT=()
  [ -n "$variant" ] && VARIANT=(--variant "$variant")
  case_name=$scenario${variant:+-${variant// /-}}
  rules=$RUN_DIR/rules-$case_name
  "$LOAD" rules --scenario "$scenario" "${PARAMS[@]}" --out "$rules" >/dev/null
  declare -A TARGET=() SERVER_PID=()
  for label in $LABELS; do
    if start_server "$label" "$rules" "$case_name"; then
      if [ "$scenario" = token-budget ] && [ -n "$STARTED_HTTP" ] &&
        ! LOADTEST_ADMIN_TOKEN=$ADMIN_TOKEN "$LOAD" setup --http "$STARTED_HTTP" \
          --target "$STARTED_URL" 2>>"$RUN_DIR/$label.log"; then
        log "skipping $label for $scenario: the setup failed; its log ends with:"
        tail -n 5 "$RUN_DIR/$label.log" >&2 || true
        continue
      fi
      TARGET[$label]=$STARTED_URL
      SERVER_PID[$label]=$STARTED_PID
    else
      log "skipping $label for $case_name: it did not start (see above)"
    fi
  done
  for mode in "${MODES[@]}"; do
    extra=()
    [ "$mode" = latency ] && extra=(--find-max --fraction "$FRACTION")
    for round in $(seq "$ROUNDS"); do
      for label in $LABELS; do
        [ -n "${TARGET[$label]:-}" ] || continue
        done_runs=$((done_runs + 1))
        log "[$done_runs/$total] $mode $case_name $label round $round"
        progress=(--quiet)
        [ "$VERBOSE" -eq 1 ] && progress=()
        if ! "${PIN_LOAD[@]}" "$LOAD" run --target "${TARGET[$label]}" --scenario "$scenario" \
          "${PARAMS[@]}" "${VARIANT[@]}" \
          --label "$label" --round "$round" --duration "$DURATION" --warmup "$WARMUP" \
          --server-pid "${SERVER_PID[$label]}" \
          --connections "$CONNECTIONS" --concurrency "$CONCURRENCY" "${progress[@]}" "${extra[@]}" \
          --json "$RAW/$mode-$case_name-$label-r$round.json"; then
          log "run failed: $mode $case_name $label round $round"
        fi
      done
    done
  done
  cleanup
  unset TARGET SERVER_PID
done

shopt -s nullglob
results=("$RAW"/*.json)
if [ ${#results[@]} -eq 0 ]; then
  log "no run produced a result"
  exit 1
fi
mkdir -p loadtest/results
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ *//' || true)
mem=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null || true)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit (with local changes)"
redis_version=$(redis-cli -u "$REDIS_URL" info server 2>/dev/null | sed -n 's/^redis_version:\([^[:space:]]*\).*/\1/p' || true)
{
  echo "# tollgate load test, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- machine: $CORES cores${cpu:+ ($cpu)}${mem:+, $mem}; pinning: $PINNING"
  echo "- load average (1, 5, 15 min) before: $LOADAVG_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")"
  if [ -n "$REDIS_URL" ]; then
    echo "- commit: $commit; Redis ${redis_version:-?} at $REDIS_URL ($REDIS_LAYOUT)"
  else
    echo "- commit: $commit"
  fi
  echo "- command: \`loadtest/run.sh${ARGS:+ $ARGS}\`"
  [ -n "$COMPARE_BIN" ] && echo "- \"<store>-compare\" rows: the tollgate binary in $COMPARE_BIN"
  echo "- $ROUNDS alternating round(s) per scenario (${LABELS// /, }); each run ${DURATION} s measured after ${WARMUP} s warm-up; $CONNECTIONS HTTP/2 connections x $CONCURRENCY streams"
  echo "- throughput counts answers (OK or OVER_LIMIT); \"x baseline\" is the median over rounds of tollgate / noop in the same round; CPU is cores used by the load generator / the server"
  echo
  "$LOAD" report --baseline noop --out - --json-out "loadtest/results/$NAME.json" "${results[@]}"
} >"loadtest/results/$NAME.md"
log "wrote loadtest/results/$NAME.md and $NAME.json"
cat "loadtest/results/$NAME.md"
