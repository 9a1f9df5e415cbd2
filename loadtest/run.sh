#!/usr/bin/env bash
# Measures tollgate against a no-op RateLimitService in the same run (docs/benchmarks.md).
#
# For each scenario: starts the no-op baseline, tollgate on the memory store and tollgate
# on Redis (unique key prefix) on loopback ports, waits (bounded) until each answers, then
# runs the load generator against them in alternating rounds (noop, memory, redis, noop,
# ...), so drift on a shared machine hits all three alike. The load generator and the
# servers are pinned to separate cores when `taskset` exists. Writes
# loadtest/results/latest.md (medians over rounds, ratios to the baseline) and latest.json.
# Every server is stopped on exit; every run is bounded in time.
#
#   loadtest/run.sh                  # throughput, 3 rounds, all scenarios (~8 min)
#   loadtest/run.sh --quick          # 1 round of 2 s per server and scenario (~1 min)
#   loadtest/run.sh --mode latency   # find max throughput, then p99 at 50 % of it (~9 min)
#   loadtest/run.sh --scenarios "one token-budget" --stores memory --rounds 5
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODE=throughput
ROUNDS=3
DURATION=
WARMUP=
SCENARIOS="one five wildcard high-cardinality rules-10k token-budget"
STORES="memory redis"
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
CONNECTIONS=4
CONCURRENCY=16
FRACTION=0.5
BUILD=1
VERBOSE=0
QUICK=0
ARGS="$*"

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --quick               one round, 2 s measured after 0.5 s warm-up (a smoke run)
  --mode M              throughput (closed loop), latency (max, then open loop at
                        --fraction of it) or both               [throughput]
  --rounds N            alternating rounds; the table shows medians   [3]
  --duration S          seconds measured per run   [6; 4 in latency mode]
  --warmup S            seconds of warm-up per run [2; 1 in latency mode]
  --scenarios "A B"     one five wildcard high-cardinality rules-10k token-budget
  --stores "A B"        tollgate stores to measure: memory and/or redis
  --redis URL           Redis for the redis store   [$REDIS_URL or redis://127.0.0.1:6379]
  --connections N       HTTP/2 connections          [4]
  --concurrency N       streams per connection      [16]
  --fraction F          share of the maximum for latency mode   [0.5]
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
    --no-build) BUILD=0 ;;
    --verbose) VERBOSE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

case "$MODE" in
  throughput|latency|both) ;;
  *) echo "--mode must be throughput, latency or both" >&2; exit 2 ;;
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

# Pinning: on n cores, the load generator gets the first half, the servers the rest.
# Redis (not started here) is left where the OS puts it.
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
  PINNING="load generator on CPU $load_cpus, servers on CPU $server_cpus, Redis unpinned"
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
on_exit() {
  cleanup
  rm -rf "$RUN_DIR"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# Starts one server and waits until it answers; sets STARTED_URL to its gRPC URL and
# STARTED_PID to its process id (taskset execs, so it is the server's own). Retries
# on a new port if it does not come up (another process may have taken the port).
# Not called in a subshell, so the server's pid lands in PIDS for cleanup.
#   start_server LABEL RULES_DIR
start_server() {
  local label=$1 rules=$2 attempt grpc http pid logfile
  logfile=$RUN_DIR/$label.log
  for attempt in 1 2 3; do
    grpc=$("$LOAD" free-port)
    case "$label" in
      noop)
        "${PIN_SERVER[@]}" "$BIN/noop-rls" --addr "127.0.0.1:$grpc" >>"$logfile" 2>&1 &
        ;;
      *)
        http=$("$LOAD" free-port)
        local store=memory
        [ "$label" = redis ] && store=$REDIS_URL
        TOLLGATE_GRPC_ADDR=127.0.0.1:$grpc TOLLGATE_HTTP_ADDR=127.0.0.1:$http \
          TOLLGATE_RULES_DIR=$rules TOLLGATE_WATCH_RULES=false TOLLGATE_STORE=$store \
          TOLLGATE_KEY_PREFIX=$KEY_PREFIX TOLLGATE_DATABASE_URL="sqlite://$RUN_DIR/ledger-$label.db" TOLLGATE_OUTBOX_PATH="$RUN_DIR/outbox-$label.jsonl" \
          RUST_LOG=${RUST_LOG:-warn} \
          "${PIN_SERVER[@]}" "$BIN/tollgate" serve >>"$logfile" 2>&1 &
        ;;
    esac
    pid=$!
    if "$LOAD" wait --target "http://127.0.0.1:$grpc" --timeout 20 2>>"$logfile"; then
      PIDS+=("$pid")
      STARTED_URL="http://127.0.0.1:$grpc"
      STARTED_PID=$pid
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
# within a minute (the generated rules use minute windows).
KEY_PREFIX="loadtest-$$-$(date +%s):"

LABELS="noop $STORES"
MODES=()
case "$MODE" in
  throughput) MODES=(throughput) ;;
  latency) MODES=(latency) ;;
  both) MODES=(throughput latency) ;;
esac
n_scen=$(wc -w <<<"$SCENARIOS")
n_labels=$(wc -w <<<"$LABELS")
total=$((n_scen * n_labels * ROUNDS * ${#MODES[@]}))
per_run=$(awk -v d="$DURATION" -v w="$WARMUP" -v m="$MODE" 'BEGIN { x = d + w; if (m == "latency") x *= 2; if (m == "both") x *= 1.5; printf "%d", x + 0.5 }')
log "$total runs of about ${per_run} s (${ROUNDS} round(s); ${DURATION} s measured after ${WARMUP} s warm-up; $CONNECTIONS x $CONCURRENCY streams); pinning: $PINNING"

LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
done_runs=0
for scenario in $SCENARIOS; do
  rules=$RUN_DIR/rules-$scenario
  "$LOAD" rules --scenario "$scenario" --out "$rules" >/dev/null
  declare -A TARGET=() SERVER_PID=()
  for label in $LABELS; do
    if start_server "$label" "$rules"; then
      TARGET[$label]=$STARTED_URL
      SERVER_PID[$label]=$STARTED_PID
    else
      log "skipping $label for $scenario: it did not start (see above)"
    fi
  done
  for mode in "${MODES[@]}"; do
    extra=()
    [ "$mode" = latency ] && extra=(--find-max --fraction "$FRACTION")
    for round in $(seq "$ROUNDS"); do
      for label in $LABELS; do
        [ -n "${TARGET[$label]:-}" ] || continue
        done_runs=$((done_runs + 1))
        log "[$done_runs/$total] $mode $scenario $label round $round"
        progress=(--quiet)
        [ "$VERBOSE" -eq 1 ] && progress=()
        if ! "${PIN_LOAD[@]}" "$LOAD" run --target "${TARGET[$label]}" --scenario "$scenario" \
          --label "$label" --round "$round" --duration "$DURATION" --warmup "$WARMUP" \
          --server-pid "${SERVER_PID[$label]}" \
          --connections "$CONNECTIONS" --concurrency "$CONCURRENCY" "${progress[@]}" "${extra[@]}" \
          --json "$RAW/$mode-$scenario-$label-r$round.json"; then
          log "run failed: $mode $scenario $label round $round"
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
  echo "- commit: $commit; Redis ${redis_version:-?} at $REDIS_URL"
  echo "- command: \`loadtest/run.sh${ARGS:+ $ARGS}\`"
  echo "- $ROUNDS alternating round(s) per scenario (${LABELS// /, }); each run ${DURATION} s measured after ${WARMUP} s warm-up; $CONNECTIONS HTTP/2 connections x $CONCURRENCY streams"
  echo "- throughput counts answers (OK or OVER_LIMIT); \"x baseline\" is the median over rounds of tollgate / noop in the same round; CPU is cores used by the load generator / the server"
  echo
  "$LOAD" report --baseline noop --out - --json-out loadtest/results/latest.json "${results[@]}"
} >loadtest/results/latest.md
log "wrote loadtest/results/latest.md and latest.json"
cat loadtest/results/latest.md
