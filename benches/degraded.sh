#!/usr/bin/env bash
# The API degrades in the middle of a surge (issue 15, item 1): does a critical command stay
# fast while bulk telemetry keeps hammering an API that lost most of its capacity?
#
#   benches/degraded.sh                 # the three modes below (~2 min after the build)
#   BENCH_MODES=on benches/degraded.sh  # one mode only
#   BENCH_ADAPTIVE='{ enabled: true, min_limit: 1, tolerance: 1.1 }' BENCH_MODES=on benches/degraded.sh
#                                       # the "on" mode with other protect.adaptive settings
#
# Topology (everything on 127.0.0.1, ports picked free at start):
#
#   degraded_api (owner + 80 vehicles) ──► verbosity-guard ──► degraded_api (mock API)
#
# benches/degraded_api.rs is both ends: a mock API of 4 workers (command 1 ms, telemetry
# 1 ms + 4 KB at 625 kB/s = ~7.5 ms) and the load: one command every 10 ms (critical route),
# and, from the surge on, 80 vehicles each posting a 4 KB NDJSON batch (bulk route), waiting
# 20 ms and posting again. Phases: quiet 5 s (commands only), surge 8 s, degraded 12 s (the API
# loses 3 of its 4 workers and the last one slows 3x, so a batch takes ~22.5 ms).
#
# The guard runs the policy below once per mode:
#   on       protect.adaptive with min_limit: 1 (an API that can degrade to one worker);
#   noyield  as on, with bulk_yields_to_critical: false (bulk is sent while commands are in
#            flight at the API; not in the default modes);
#   default  protect.adaptive turned on with its other defaults (min_limit 3);
#   off      adaptive: { enabled: false }: bulk may keep bulk_max_in_flight = 32 batches at the
#            ill API, as before adaptive concurrency.
# The brownout is off in every mode, so that what is measured is the concurrency limit alone
# (the brownout acts in seconds, by shedding bulk outright; it would end every run the same way).
#
# Target: command p99 while degraded <= 1.5 x its quiet p99 + one bulk service time (degraded).
#
# CPU pinning: the guard (--workers 1) on CPU 1, the API and the load on CPU 0 (skipped with
# one CPU). Override with BENCH_PROXY_CPU / BENCH_LOAD_CPU. BENCH_KEEP=1 keeps $TMP.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
MODES="${BENCH_MODES:-on default off}"
GUARD_BIN="$REPO_ROOT/target/release/verbosity-guard"

# shellcheck source=benches/lib.sh
source "$REPO_ROOT/benches/lib.sh"
need_tools curl taskset python3

log "building: cargo build --release --locked"
cargo build --release --locked >&2 || die "cargo build failed"
DRIVER_BIN="$(bench_bin degraded_api)"

TMP="$(mktemp -d)"
read -r -a ALLOWED_CPUS < <(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')
PIN_PROXY=()
PIN_LOAD=()
if ((${#ALLOWED_CPUS[@]} > 1)); then
    PIN_PROXY=(taskset -c "${BENCH_PROXY_CPU:-1}")
    PIN_LOAD=(taskset -c "${BENCH_LOAD_CPU:-0}")
else
    log "one CPU: running unpinned"
fi

policy() { # policy ADAPTIVE-SETTINGS
    cat <<EOF
version: 1
client_key: { header: x-vehicle-id, fallback: peer_ip }
protect:
  max_in_flight: 64
  critical_reserved: 8
  bulk_max_in_flight: 32
  queue_timeout: { critical: 5s, normal: 1s, bulk: 100ms }
  brownout: { enabled: false }
  adaptive: $1
routes:
  - name: commands
    match: { methods: [POST], path: "/api/1/vehicles/{id}/command/{command}" }
    priority: critical
    timeout: 5s
  - name: telemetry
    match: { methods: [POST], path_prefix: /api/1/telemetry }
    priority: bulk
    payload: { max_body: 64KiB }
  - name: default
    match: { path_prefix: / }
EOF
}

ON_DEFAULT='{ enabled: true, min_limit: 1 }'
declare -A RESULTS
for mode in $MODES; do
    case "$mode" in
        on) adaptive="${BENCH_ADAPTIVE:-$ON_DEFAULT}" ;;
        noyield) adaptive='{ enabled: true, min_limit: 1, bulk_yields_to_critical: false }' ;;
        default) adaptive='{ enabled: true }' ;;
        off) adaptive='{ enabled: false }' ;;
        *) die "BENCH_MODES: on, noyield, default or off, not $mode" ;;
    esac
    read -r API_PORT GUARD_PORT ADMIN_PORT < <(free_ports 3)
    policy "$adaptive" >"$TMP/policy-$mode.yaml"
    "$GUARD_BIN" check "$TMP/policy-$mode.yaml" >&2 || die "the bench policy does not check"
    "${PIN_PROXY[@]}" "$GUARD_BIN" serve --policy "$TMP/policy-$mode.yaml" \
        --upstream "http://127.0.0.1:$API_PORT" --listen "127.0.0.1:$GUARD_PORT" \
        --admin "127.0.0.1:$ADMIN_PORT" --workers 1 --log-level warn \
        >"$TMP/guard-$mode.log" 2>&1 &
    GUARD_PID=$!
    PIDS+=("$GUARD_PID")
    wait_http guard "http://127.0.0.1:$ADMIN_PORT/healthz" "$GUARD_PID"
    # The limit the guard ends at, sampled while the run goes on.
    (
        while kill -0 "$GUARD_PID" 2>/dev/null; do
            curl -s --max-time 1 "http://127.0.0.1:$ADMIN_PORT/metrics" |
                grep -E '^verbosity_guard_upstream_(concurrency_limit|min_rtt_seconds|in_flight)\{class="bulk"\}' |
                tr '\n' ' ' || true
            echo
            sleep 1
        done
    ) >"$TMP/limits-$mode.log" 2>/dev/null &
    SAMPLER_PID=$!
    PIDS+=("$SAMPLER_PID")
    log "adaptive $mode: running (about 30 s)"
    "${PIN_LOAD[@]}" "$DRIVER_BIN" --api "127.0.0.1:$API_PORT" --guard "http://127.0.0.1:$GUARD_PORT" \
        | tee "$TMP/run-$mode.txt"
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^verbosity_guard_(upstream_concurrency_limit|upstream_min_rtt_seconds|shed_total)' >&2 || true
    stop_pid "$SAMPLER_PID"
    stop_pid "$GUARD_PID"
    log "bulk limit / min RTT / in flight, once a second:"
    sed -E 's/verbosity_guard_upstream_//g; s/\{class="bulk"\}//g' "$TMP/limits-$mode.log" >&2
    RESULTS[$mode]="$(grep '^RESULT' "$TMP/run-$mode.txt" || echo 'RESULT missing')"
done

echo
for mode in $MODES; do
    printf 'adaptive %-8s %s\n' "$mode:" "${RESULTS[$mode]#RESULT }"
done
