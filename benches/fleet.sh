#!/usr/bin/env bash
# Fleet budgets on loopback: what `scope: fleet` costs a small GET, and how many Redis calls a
# guard makes, against a real redis-server.
#
#   benches/fleet.sh                  # ~2 min after the build
#   BENCH_QUICK=1 benches/fleet.sh    # smoke test (~30 s after the build)
#
# 1. small GET, local vs fleet: two guards (the same binary) run benches/bench-policy.yaml, one
#    as written and one with every payload budget `scope: fleet` and --fleet-redis. Both budgets
#    are far above the load, so every request is admitted: from a GCRA state in one, from a
#    lease in the other. wrk runs alternate between the two (interleaved, so drift hits both);
#    the ratio fleet/local of the medians is the figure (target: >= 0.95, issue 14).
# 2. Redis calls per second at a high request rate on ONE key, over its budget: the fleet guard
#    with client_requests 1000/s, burst 100, scope fleet, under wrk's full load (every request
#    on the peer-IP key 127.0.0.1). Calls/s come from verbosity_guard_fleet_redis_calls_total;
#    the design says about (active keys)/T (= 10 at T = 100 ms) plus 4 heartbeats, whatever the
#    request rate.
#
# Instructions per request with fleet budgets (repeatable where req/s is not): start a
# redis-server, then
#   BENCH_POLICY=fleet-policy.yaml BENCH_SERVE_ARGS="--fleet-redis redis://127.0.0.1:PORT" \
#       bash benches/instructions.sh
# with fleet-policy.yaml made as below (every budget of bench-policy.yaml `scope: fleet`).
#
# Pinning as in load.sh: guards on CPU 1, upstream nginx, redis-server and wrk on CPU 0.
# Environment: BENCH_CONNS (64), BENCH_DURATION (10s), BENCH_REPS (3), BENCH_KEEP=1.
# Traffic goes only to 127.0.0.1. Every background process is stopped on exit.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

CONNS="${BENCH_CONNS:-64}"
DURATION="${BENCH_DURATION:-10s}"
REPS="${BENCH_REPS:-3}"
if [[ "${BENCH_QUICK:-0}" == 1 ]]; then
    DURATION=2s
    REPS=1
fi
GUARD_BIN="$REPO_ROOT/target/release/verbosity-guard"

# shellcheck source=benches/lib.sh
source "$REPO_ROOT/benches/lib.sh"
need_tools wrk nginx curl taskset python3 redis-server

log "building: cargo build --release --locked"
cargo build --release --locked >&2 || die "cargo build failed"

read -r -a ALLOWED_CPUS < <(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')
if ((${#ALLOWED_CPUS[@]} < 2)); then
    log "WARNING: one CPU; running WITHOUT CPU pinning"
    PIN_PROXY=()
    PIN_LOAD=()
else
    PIN_PROXY=(taskset -c "${ALLOWED_CPUS[1]}")
    PIN_LOAD=(taskset -c "${ALLOWED_CPUS[0]}")
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/vg-fleet.XXXXXX")"
chmod 711 "$TMP"
mkdir -p "$TMP/upstream"
chmod 777 "$TMP/upstream"
read -r UPORT RPORT LPORT LAPORT FPORT FAPORT OPORT OAPORT < <(free_ports 8)

upstream_nginx_conf "$UPORT" >"$TMP/upstream/nginx.conf"
"${PIN_LOAD[@]}" "$NGINX" -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" -e "$TMP/upstream/error.log" &
PIDS+=($!)
UPSTREAM_PID=$!
"${PIN_LOAD[@]}" redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no \
    --loglevel warning >"$TMP/redis.log" 2>&1 &
PIDS+=($!)

LOCAL_POLICY=benches/bench-policy.yaml
FLEET_POLICY="$TMP/fleet-policy.yaml"
sed -E 's/(burst: [0-9]+(GiB)?) \}/\1, scope: fleet }/' "$LOCAL_POLICY" >"$FLEET_POLICY"
[[ "$(grep -c 'scope: fleet' "$FLEET_POLICY")" == 4 ]] || die "fleet policy: expected 4 fleet budgets"
OVER_POLICY="$TMP/over-policy.yaml"
cat >"$OVER_POLICY" <<'EOF'
version: 1
client_key: { fallback: peer_ip }
routes:
  - name: bench
    match: { path_prefix: /bench }
    payload:
      client_requests: { rate: 1000/s, burst: 100, scope: fleet }
  - name: default
    match: { path_prefix: / }
EOF
for p in "$LOCAL_POLICY" "$FLEET_POLICY" "$OVER_POLICY"; do
    "$GUARD_BIN" check "$p" >/dev/null || die "$p does not check"
done

guard() { # policy port admin-port [--fleet-redis URL]
    local policy=$1 port=$2 admin=$3
    shift 3
    "${PIN_PROXY[@]}" "$GUARD_BIN" serve --policy "$policy" --upstream "http://127.0.0.1:$UPORT" \
        --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin" --workers 1 --log-level warn "$@" \
        2>>"$TMP/guards.log" &
    PIDS+=($!)
    LAST_PID=$!
}
REDIS_URL="redis://127.0.0.1:$RPORT"
guard "$LOCAL_POLICY" "$LPORT" "$LAPORT"
LOCAL_PID=$LAST_PID
guard "$FLEET_POLICY" "$FPORT" "$FAPORT" --fleet-redis "$REDIS_URL"
FLEET_PID=$LAST_PID
guard "$OVER_POLICY" "$OPORT" "$OAPORT" --fleet-redis "$REDIS_URL"
OVER_PID=$LAST_PID
wait_http upstream "http://127.0.0.1:$UPORT/bench/small" "$UPSTREAM_PID"
wait_http local "http://127.0.0.1:$LPORT/bench/small" "$LOCAL_PID"
wait_http fleet "http://127.0.0.1:$FPORT/bench/small" "$FLEET_PID"
wait_http over "http://127.0.0.1:$OAPORT/readyz" "$OVER_PID"

metric() { # admin-port series-regex: the sum of the matching series' values
    curl -s "http://127.0.0.1:$1/metrics" | python3 -c '
import re, sys
pat = re.compile(sys.argv[1])
print(sum(float(l.rsplit(" ", 1)[1]) for l in sys.stdin if pat.match(l)))' "$2"
}
fleet_mode() { metric "$1" '^verbosity_guard_fleet_mode\{.*mode="fleet"'; }
for _ in $(seq 50); do
    [[ "$(fleet_mode "$FAPORT")" != 0.0 && "$(fleet_mode "$OAPORT")" != 0.0 ]] && break
    sleep 0.1
done
[[ "$(fleet_mode "$FAPORT")" != 0.0 ]] || die "the fleet guard did not reach fleet mode (see $TMP/guards.log)"

wrk_rps() { # port duration -> req/s and non-2xx count
    local out
    out="$("${PIN_LOAD[@]}" wrk -t1 -c"$CONNS" -d"$1" "http://127.0.0.1:$2/bench/small")"
    python3 -c '
import re, sys
t = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
print(rps, m.group(1) if m else 0)' <<<"$out"
}

log "1. small GET, local vs fleet budgets: $REPS x $DURATION each, interleaved"
wrk_rps 2s "$LPORT" >/dev/null
wrk_rps 2s "$FPORT" >/dev/null
LOCAL_RPS=()
FLEET_RPS=()
for rep in $(seq "$REPS"); do
    read -r rps bad < <(wrk_rps "$DURATION" "$LPORT")
    [[ "$bad" == 0 ]] || die "local guard refused $bad requests"
    LOCAL_RPS+=("$rps")
    calls0="$(metric "$FAPORT" '^verbosity_guard_fleet_redis_calls_total')"
    read -r rps bad < <(wrk_rps "$DURATION" "$FPORT")
    [[ "$bad" == 0 ]] || die "fleet guard refused $bad requests"
    FLEET_RPS+=("$rps")
    calls1="$(metric "$FAPORT" '^verbosity_guard_fleet_redis_calls_total')"
    log "rep $rep: local ${LOCAL_RPS[-1]} req/s, fleet ${FLEET_RPS[-1]} req/s ($(python3 -c "print(int($calls1 - $calls0))") Redis calls)"
done

log "2. one key over its fleet budget (1000/s) at full load, $DURATION"
calls0="$(metric "$OAPORT" '^verbosity_guard_fleet_redis_calls_total')"
t0="$(date +%s.%N)"
read -r over_rps over_refused < <(wrk_rps "$DURATION" "$OPORT")
t1="$(date +%s.%N)"
calls1="$(metric "$OAPORT" '^verbosity_guard_fleet_redis_calls_total')"

python3 - "${LOCAL_RPS[*]}" "${FLEET_RPS[*]}" "$over_rps" "$over_refused" "$calls0" "$calls1" "$t0" "$t1" <<'EOF'
import statistics, sys
local = [float(x) for x in sys.argv[1].split()]
fleet = [float(x) for x in sys.argv[2].split()]
over_rps, refused = float(sys.argv[3]), int(sys.argv[4])
calls = float(sys.argv[6]) - float(sys.argv[5])
secs = float(sys.argv[8]) - float(sys.argv[7])
l, f = statistics.median(local), statistics.median(fleet)
print("small-get   local %8.0f req/s   fleet %8.0f req/s   fleet/local=%.3f (target >= 0.95)" % (l, f, f / l))
print("  per rep   local %s   fleet %s" % (" ".join("%.0f" % x for x in local), " ".join("%.0f" % x for x in fleet)))
print("one key over budget: %.0f req/s offered (%d refused), %.1f Redis calls/s"
      " (design: about 1/T = 10 for the key + 4 heartbeats)" % (over_rps, refused, calls / secs))
EOF
