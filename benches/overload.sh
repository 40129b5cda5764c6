#!/usr/bin/env bash
# Self-protection under load (issue 15): the guard on one pinned CPU, 1,024 keep-alive
# connections posting 4 KB NDJSON debug batches as fast as they can, and one owner sending
# commands. Prints the command p99 quiet and under the flood (target: at most 5x), and the
# slowest answer of the admin /readyz and /metrics during the flood (target: under 1 s), with
# the overload protection on (the defaults) and off.
#
#   benches/overload.sh                     # ~1 min after the build
#   BENCH_DURATION=20 benches/overload.sh   # seconds of flood per mode (default 10)
#   BENCH_LAGS="20ms 5ms 2ms" benches/overload.sh   # --overload-max-lag values to run (default 5ms)
#
# Topology, everything on 127.0.0.1: the guard (`serve --workers 1`) alone on CPU 0; the
# upstream nginx (`return 200`) and both wrk instances on CPU 1 (override with
# BENCH_PROXY_CPU / BENCH_LOAD_CPU). Every process started is stopped on exit.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
source "$REPO_ROOT/benches/lib.sh"
need_tools nginx wrk curl taskset python3

DURATION="${BENCH_DURATION:-10}"
CONNS="${BENCH_CONNS:-1024}"
PROXY_CPU="${BENCH_PROXY_CPU:-0}"
LOAD_CPU="${BENCH_LOAD_CPU:-1}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log "building: cargo build --release --locked"
cargo build --release --locked >&2 || die "cargo build failed"
BIN="$REPO_ROOT/target/release/verbosity-guard"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/vg-overload.XXXXXX")"
chmod 711 "$TMP"
mkdir -p "$TMP/upstream" && chmod 777 "$TMP/upstream"
read -r UPORT GPORT APORT < <(free_ports 3)
upstream_nginx_conf "$UPORT" >"$TMP/upstream/nginx.conf"
taskset -c "$LOAD_CPU" "$NGINX" -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" \
    -e "$TMP/upstream/error.log" &
PIDS+=($!)
wait_http upstream "http://127.0.0.1:$UPORT/" "${PIDS[-1]}"

# A 4 KB batch of debug records (as a Lua long string), and the owner's command.
python3 - "$TMP" <<'PY'
import sys
tmp = sys.argv[1]
line = '{"level":"debug","msg":"sensor frame %04d","vin":"5YJ3E1EA7KF000001","v":[1,2,3]}\n'
body = "".join(line % i for i in range(48))
def lua(path, body, vin):
    return (f'wrk.method = "POST"\nwrk.path = "{path}"\n'
            f'wrk.headers["Content-Type"] = "application/x-ndjson"\n'
            f'wrk.headers["X-Vehicle-Id"] = "{vin}"\n'
            f'wrk.body = [==[{body}]==]\n')
open(f"{tmp}/bulk.lua", "w").write(lua("/api/1/telemetry/logs", body, "bulk"))
open(f"{tmp}/command.lua", "w").write(lua("/api/1/vehicles/V1/command/unlock", "{}", "owner"))
PY

# p99 of a wrk --latency run, in ms.
p99_ms() {
    awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 }
        print v }' "$1"
}

# probe URL OUT: every 100 ms until told to stop, the time /readyz or /metrics took (s), or
# "fail" when it did not answer 200 within 1 s.
probe() {
    while [[ ! -e "$TMP/stop-probe" ]]; do
        for path in readyz metrics; do
            curl -s -o /dev/null --max-time 1 -w '%{http_code} %{time_total}\n' \
                "http://127.0.0.1:$APORT/$path" || echo "000 1"
        done
        sleep 0.1
    done >"$1"
}

run_mode() { # NAME SERVE_ARGS...
    local name=$1; shift
    taskset -c "$PROXY_CPU" "$BIN" serve --policy benches/overload-policy.yaml \
        --upstream "http://127.0.0.1:$UPORT" --listen "127.0.0.1:$GPORT" \
        --admin "127.0.0.1:$APORT" --workers 1 --max-connections 4096 --no-watch "$@" \
        >"$TMP/guard-$name.log" 2>&1 &
    local guard=$!
    PIDS+=("$guard")
    wait_http guard "http://127.0.0.1:$APORT/readyz" "$guard"
    local url="http://127.0.0.1:$GPORT"

    taskset -c "$LOAD_CPU" wrk -t1 -c1 -d5s --latency -s "$TMP/command.lua" "$url" \
        >"$TMP/quiet-$name.txt"
    rm -f "$TMP/stop-probe"
    probe "$TMP/probe-$name.txt" &
    local prober=$!
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$((DURATION + 4))s" -s "$TMP/bulk.lua" "$url" \
        >"$TMP/bulk-$name.txt" &
    WRK_PID=$!
    # The owner is measured once the flood holds all its connections (within 10 s).
    local open=0
    for _ in $(seq 100); do
        open="$(curl -s --max-time 1 "http://127.0.0.1:$APORT/metrics" |
            awk '$1 == "verbosity_guard_connections_open" { print int($2) }')"
        ((${open:-0} >= CONNS)) && break
        sleep 0.1
    done
    ((${open:-0} >= CONNS)) || log "WARNING: the flood holds only ${open:-0} of $CONNS connections"
    taskset -c "$LOAD_CPU" wrk -t1 -c1 -d"${DURATION}s" --latency -s "$TMP/command.lua" "$url" \
        >"$TMP/loaded-$name.txt"
    wait "$WRK_PID" || true
    WRK_PID=""
    touch "$TMP/stop-probe"
    wait "$prober" || true
    curl -s "http://127.0.0.1:$APORT/metrics" >"$TMP/metrics-$name.txt"
    stop_pid "$guard"

    local quiet loaded
    quiet="$(p99_ms "$TMP/quiet-$name.txt")"
    loaded="$(p99_ms "$TMP/loaded-$name.txt")"
    python3 - "$name" "$quiet" "$loaded" "$TMP/probe-$name.txt" "$TMP/bulk-$name.txt" \
        "$TMP/loaded-$name.txt" "$TMP/metrics-$name.txt" <<'PY'
import re, sys
name, quiet, loaded, probe, bulk, cmds, metrics = sys.argv[1:]
quiet, loaded = float(quiet), float(loaded)
times, fails = [], 0
for line in open(probe):
    code, t = line.split()
    if code != "200": fails += 1
    times.append(float(t))
bulk_txt = open(bulk).read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", bulk_txt)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", bulk_txt)
total = re.search(r"(\d+) requests in", bulk_txt)
cmd_txt = open(cmds).read()
cmd_non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", cmd_txt)
m = open(metrics).read()
def metric(pat):
    return sum(float(v) for v in re.findall(pat + r"\S* ([\d.e+]+)", m))
shed = metric(r'verbosity_guard_overload_shed_total\{pressure="event_loop_lag"\}')
print(f"{name:<12} command p99 quiet {quiet:7.2f} ms  flood {loaded:7.2f} ms  ratio {loaded/quiet:6.1f}x (target <= 5x)  "
      f"admin slowest {max(times):.3f} s, {fails} not answered in 1 s (target 0)  "
      f"bulk {float(rps.group(1)) if rps else 0:,.0f} req/s, {int(non2xx.group(1)) if non2xx else 0} of {int(total.group(1)) if total else 0} refused, "
      f"{shed:.0f} shed for lag; commands refused {int(cmd_non2xx.group(1)) if cmd_non2xx else 0}")
PY
}

for lag in ${BENCH_LAGS:-5ms}; do
    run_mode "lag<$lag" --overload-max-lag "$lag"
done
run_mode unprotected --overload-max-lag off --overload-max-buffered off
