#!/usr/bin/env bash
# Loopback load benchmark: verbosity-guard vs. an equivalent nginx reverse proxy vs. no proxy.
#
#   benches/load.sh                  # full run (~4 min after the build)
#   BENCH_QUICK=1 benches/load.sh    # smoke test (~30 s after the build)
#
# Topology (everything on 127.0.0.1, ports picked free at start):
#
#   wrk ──► direct:  upstream nginx            (return 200 "ok\n")
#   wrk ──► guard:   verbosity-guard ──► upstream nginx
#   wrk ──► nginx:   nginx keep-alive proxy ──► upstream nginx
#   wrk ──► hyper:   a plain hyper 1 proxy (benches/hyper_proxy.rs) ──► upstream nginx
#
# CPU pinning (identical for every proxy): the proxy under test runs alone on CPU 1
# (the guard with --workers 1, nginx with worker_processes 1, the hyper proxy on one
# thread); the upstream nginx and wrk share CPU 0. With a single CPU, pinning is skipped with a warning. Override with
# BENCH_PROXY_CPU / BENCH_LOAD_CPU.
#
# Scenarios: small-get (GET /bench/small) and post-64k (POST /bench/upload, 64 KiB body).
# Each target gets one uncounted warm-up run per scenario, then repetitions are interleaved
# (direct, guard, nginx, hyper, direct, ...) so drift hits every target alike.
#
# Environment:
#   BENCH_THREADS   wrk threads            (default 1)
#   BENCH_CONNS     wrk connections        (default 64)
#   BENCH_DURATION  wrk duration per run   (default 10s)
#   BENCH_REPS      counted runs per target and scenario (default 3)
#   BENCH_WARMUP    warm-up duration, 0 to skip (default 3s)
#   BENCH_QUICK=1   2s runs, 1 repetition, no warm-up
#   BENCH_KEEP=1    keep the temporary directory (configs, logs, raw wrk output)
#
# Traffic goes only to 127.0.0.1. Every background process is stopped on exit.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

THREADS="${BENCH_THREADS:-1}"
CONNS="${BENCH_CONNS:-64}"
DURATION="${BENCH_DURATION:-10s}"
REPS="${BENCH_REPS:-3}"
WARMUP="${BENCH_WARMUP:-3s}"
if [[ "${BENCH_QUICK:-0}" == 1 ]]; then
    DURATION=2s
    REPS=1
    WARMUP=0
fi
POLICY="benches/bench-policy.yaml"
GUARD_BIN="$REPO_ROOT/target/release/verbosity-guard"
TARGETS=(direct guard nginx hyper)

# shellcheck source=benches/lib.sh
source "$REPO_ROOT/benches/lib.sh"
need_tools wrk nginx curl taskset python3

# ---------------------------------------------------------------------------------------
# Build and validate the policy
# ---------------------------------------------------------------------------------------
log "building: cargo build --release --locked"
cargo build --release --locked >&2 || die "cargo build failed"
[[ -x "$GUARD_BIN" ]] || die "$GUARD_BIN not found after the build"
# The plain hyper proxy is a bench target (it uses a dev-dependency): cargo names the binary.
HYPER_BIN="$(bench_bin hyper_proxy)"
log "checking $POLICY"
"$GUARD_BIN" check "$POLICY" >&2 || die "$POLICY does not check"

# ---------------------------------------------------------------------------------------
# CPU pinning
# ---------------------------------------------------------------------------------------
read -r -a ALLOWED_CPUS < <(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')
PROXY_CPU="${BENCH_PROXY_CPU:-1}"
LOAD_CPU="${BENCH_LOAD_CPU:-0}"
cpu_allowed() { local c; for c in "${ALLOWED_CPUS[@]}"; do [[ "$c" == "$1" ]] && return 0; done; return 1; }
if ((${#ALLOWED_CPUS[@]} < 2)); then
    log "WARNING: only ${#ALLOWED_CPUS[@]} CPU available; running WITHOUT CPU pinning"
    PIN_PROXY=()
    PIN_LOAD=()
    PROXY_CPU=""
    LOAD_CPU=""
else
    if ! cpu_allowed "$PROXY_CPU" || ! cpu_allowed "$LOAD_CPU" || [[ "$PROXY_CPU" == "$LOAD_CPU" ]]; then
        LOAD_CPU="${ALLOWED_CPUS[0]}"
        PROXY_CPU="${ALLOWED_CPUS[1]}"
        log "WARNING: requested CPUs not available; using load CPU $LOAD_CPU, proxy CPU $PROXY_CPU"
    fi
    PIN_PROXY=(taskset -c "$PROXY_CPU")
    PIN_LOAD=(taskset -c "$LOAD_CPU")
    log "pinning: proxy under test on CPU $PROXY_CPU; upstream nginx and wrk on CPU $LOAD_CPU"
fi

# ---------------------------------------------------------------------------------------
# Temporary directory, ports, configs
# ---------------------------------------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/vg-load.XXXXXX")"
# nginx workers drop to "nobody" when started as root; let them reach their temp dirs.
chmod 711 "$TMP"
mkdir -p "$TMP/upstream" "$TMP/proxy"
chmod 777 "$TMP/upstream" "$TMP/proxy"

read -r UPORT GPORT APORT NPORT HPORT < <(free_ports 5)
log "ports: upstream $UPORT, guard $GPORT (admin $APORT), nginx-proxy $NPORT, hyper-proxy $HPORT"

upstream_nginx_conf "$UPORT" >"$TMP/upstream/nginx.conf"

{
    nginx_common proxy
    cat <<EOF
    upstream bench_upstream {
        server 127.0.0.1:$UPORT;
        keepalive 512;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NPORT backlog=4096;
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # What the guard sends upstream: the client's Host plus X-Forwarded-*.
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
            # The guard streams both ways.
            proxy_request_buffering off;
            proxy_buffering off;
        }
    }
}
EOF
} >"$TMP/proxy/nginx.conf"

cat >"$TMP/post64k.lua" <<'EOF'
wrk.method = "POST"
wrk.body = string.rep("x", 65536)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF
head -c 65536 /dev/zero | tr '\0' x >"$TMP/body64k"

# ---------------------------------------------------------------------------------------
# Start servers
# ---------------------------------------------------------------------------------------
"$NGINX" -t -q -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" -e "$TMP/upstream/error.log" ||
    die "upstream nginx config is invalid ($TMP/upstream/nginx.conf)"
"$NGINX" -t -q -p "$TMP/proxy" -c "$TMP/proxy/nginx.conf" -e "$TMP/proxy/error.log" ||
    die "nginx-proxy config is invalid ($TMP/proxy/nginx.conf)"

"${PIN_LOAD[@]}" "$NGINX" -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" -e "$TMP/upstream/error.log" &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")

"${PIN_PROXY[@]}" "$GUARD_BIN" serve --policy "$POLICY" --upstream "http://127.0.0.1:$UPORT" \
    --listen "127.0.0.1:$GPORT" --admin "127.0.0.1:$APORT" --workers 1 --log-level warn \
    2>"$TMP/guard.log" &
GUARD_PID=$!
PIDS+=("$GUARD_PID")

"${PIN_PROXY[@]}" "$NGINX" -p "$TMP/proxy" -c "$TMP/proxy/nginx.conf" -e "$TMP/proxy/error.log" &
NGINXP_PID=$!
PIDS+=("$NGINXP_PID")

"${PIN_PROXY[@]}" "$HYPER_BIN" --listen "127.0.0.1:$HPORT" --upstream "127.0.0.1:$UPORT" \
    2>"$TMP/hyper.log" &
HYPERP_PID=$!
PIDS+=("$HYPERP_PID")

wait_http upstream "http://127.0.0.1:$UPORT/bench/small" "$UPSTREAM_PID"
wait_http guard-admin "http://127.0.0.1:$APORT/readyz" "$GUARD_PID"
wait_http guard "http://127.0.0.1:$GPORT/bench/small" "$GUARD_PID"
wait_http nginx-proxy "http://127.0.0.1:$NPORT/bench/small" "$NGINXP_PID"
wait_http hyper-proxy "http://127.0.0.1:$HPORT/bench/small" "$HYPERP_PID"

declare -A PORT=([direct]=$UPORT [guard]=$GPORT [nginx]=$NPORT [hyper]=$HPORT)
declare -A SERVER_PID=([direct]=$UPSTREAM_PID [guard]=$GUARD_PID [nginx]=$NGINXP_PID [hyper]=$HYPERP_PID)

# The process whose CPU time we attribute to the target: the guard itself, or the nginx
# worker (child of the master).
worker_pid() { pgrep -P "$1" | head -n1; }
declare -A CPU_PID=(
    [direct]="$(worker_pid "$UPSTREAM_PID")"
    [guard]="$GUARD_PID"
    [nginx]="$(worker_pid "$NGINXP_PID")"
    [hyper]="$HYPERP_PID"
)

# Sanity: every target answers the POST scenario with 200 before we measure.
for t in "${TARGETS[@]}"; do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST \
        -H 'Content-Type: application/octet-stream' --data-binary "@$TMP/body64k" \
        "http://127.0.0.1:${PORT[$t]}/bench/upload" || true)"
    [[ "$code" == 200 ]] || die "$t answered $code (not 200) to a 64 KiB POST"
done
log "all servers up"

# ---------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------
cat >"$TMP/bench.py" <<'EOF'
import re, statistics, sys

UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}

def parse(path):
    """wrk --latency output -> rps, p50 ms, p99 ms, requests, errors, error detail."""
    text = open(path).read()
    def lat(pct):
        m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s|m|h)\s*$" % pct, text, re.M)
        return float(m.group(1)) * UNIT_MS[m.group(2)] if m else float("nan")
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    rps = float(m.group(1)) if m else float("nan")
    m = re.search(r"^\s*(\d+) requests in", text, re.M)
    reqs = int(m.group(1)) if m else 0
    errs, detail = 0, []
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        n = sum(int(x) for x in m.groups())
        if n:
            errs += n
            detail.append("socket(c/r/w/t)=%s/%s/%s/%s" % m.groups())
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m and int(m.group(1)):
        errs += int(m.group(1))
        detail.append("non2xx=%s" % m.group(1))
    if reqs == 0 or rps != rps:
        errs += 1
        detail.append("unparsable-or-empty")
    return rps, lat(50), lat(99), reqs, errs, ",".join(detail) or "-"

def cpu(argv):
    """cpu busy% from two /proc/stat snapshots: before after cpuid."""
    def busy(path, cpu):
        for line in open(path):
            f = line.split()
            if f[0] == "cpu" + cpu:
                v = [int(x) for x in f[1:]]
                idle = v[3] + v[4]
                return sum(v) - idle, sum(v)
        return 0, 0
    b0, t0 = busy(argv[0], argv[2])
    b1, t1 = busy(argv[1], argv[2])
    return 100.0 * (b1 - b0) / (t1 - t0) if t1 > t0 else float("nan")

def summary(path):
    rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
    # scenario target rep rps p50 p99 reqs errs detail load_cpu proxy_cpu proc_cpu idle_busy
    # user_us sys_us
    scen_order, targets = [], ["direct", "guard", "nginx", "hyper"]
    for r in rows:
        if r[0] not in scen_order:
            scen_order.append(r[0])
    med, cpu_us = {}, {}
    any_err = False
    noisy = 0.0
    hdr = "%-11s %-7s %10s %8s %8s %9s %7s %7s %9s %9s %8s  %-9s %s" % (
        "scenario", "target", "req/s", "p50_ms", "p99_ms",
        "proc_cpu%", "usr_us", "sys_us", "cpu_load%", "cpu_prox%", "bg_busy%", "errors",
        "req/s per rep")
    print(hdr)
    for s in scen_order:
        for t in targets:
            rs = [r for r in rows if r[0] == s and r[1] == t]
            if not rs:
                continue
            f = lambda i: statistics.median(float(r[i]) for r in rs)
            errs = sum(int(r[7]) for r in rs)
            any_err |= errs > 0
            med[(s, t)] = f(3)
            cpu_us[(s, t)] = statistics.median(float(r[13]) + float(r[14]) for r in rs)
            bg = max(float(r[12]) for r in rs)
            noisy = max(noisy, bg)
            print("%-11s %-7s %10.0f %8.3f %8.3f %9.0f %7.2f %7.2f %9.0f %9.0f %8.0f  %-9s %s" % (
                s, t, f(3), f(4), f(5), f(11), f(13), f(14), f(9), f(10), bg,
                ("ERRORS=%d" % errs) if errs else "0",
                " ".join("%.0f" % float(r[3]) for r in rs)))
    print()
    goals = {"small-get": "0.90", "post-64k": "1.00"}
    for s in scen_order:
        d, g, n, h = (med.get((s, t)) for t in targets)
        ratio = lambda a, b: ("%.2f" % (a / b)) if a and b else "n/a"
        print("ratios %s: guard/direct=%s guard/nginx=%s (target >= %s) guard/hyper=%s hyper/nginx=%s" % (
            s, ratio(g, d), ratio(g, n), goals.get(s, "?"), ratio(g, h), ratio(h, n)))
        # The same comparison by CPU per request (user + kernel), which the host's load moves
        # less than req/s: nginx's CPU per request over the guard's, > 1 when the guard is cheaper.
        cg, cn, ch = (cpu_us.get((s, t)) for t in ("guard", "nginx", "hyper"))
        print("  cpu per request %s: guard %s us, nginx %s us, hyper %s us; nginx/guard=%s hyper/guard=%s" % (
            s, *("%.1f" % c if c else "n/a" for c in (cg, cn, ch)), ratio(cn, cg), ratio(ch, cg)))
    if noisy > 10:
        print()
        print("WARNING: the machine was %.0f%% busy just before some runs (bg_busy%% column): other"
              " processes were competing for the CPUs; numbers are noisy." % noisy)
    if any_err:
        print()
        print("!!! ERRORS: some runs had non-2xx responses or socket errors; see the per-run lines above.")
    return 1 if any_err else 0

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "parse":
        print("\t".join(str(x) for x in parse(sys.argv[2])))
    elif cmd == "cpu":
        print("%.0f" % cpu(sys.argv[2:]))
    elif cmd == "summary":
        sys.exit(summary(sys.argv[2]))
EOF

proc_ticks() { # "utime stime" of a pid (all its threads), in clock ticks
    awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$1/stat" 2>/dev/null || echo 0 0
}

to_seconds() { # 10s / 500ms / 1m -> integer seconds (rounded up)
    python3 -c '
import re, sys
m = re.fullmatch(r"([\d.]+)(ms|s|m|h)?", sys.argv[1])
v = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
print(int(-(-v // 1)))' "$1"
}

RESULTS="$TMP/results.tsv"
: >"$RESULTS"
HZ="$(getconf CLK_TCK)"

# Runs wrk in the background and waits for it (so a signal stops the script at once);
# sets RUN_OUT to the raw output file.
RUN_OUT=""
run_wrk() { # scenario target duration label
    local scen=$1 target=$2 dur=$3 label=$4
    local url="http://127.0.0.1:${PORT[$target]}"
    local args=(-t"$THREADS" -c"$CONNS" -d"$dur" --latency)
    case "$scen" in
        small-get) url+="/bench/small" ;;
        post-64k) url+="/bench/upload"; args+=(-s "$TMP/post64k.lua") ;;
    esac
    local out="$TMP/wrk-$scen-$target-$label.txt"
    local limit=$(( $(to_seconds "$dur") + 30 ))
    timeout "$limit" "${PIN_LOAD[@]}" wrk "${args[@]}" "$url" >"$out" 2>&1 &
    WRK_PID=$!
    local rc=0
    wait "$WRK_PID" || rc=$?
    WRK_PID=""
    ((rc == 0)) || log "WARNING: wrk exited with status $rc for $scen/$target/$label"
    RUN_OUT="$out"
}

measure() { # scenario target rep
    local scen=$1 target=$2 rep=$3
    local pid=${CPU_PID[$target]}
    local t0 t1 u0 u1 s0 s1 out idle_busy
    # Background load: how busy the whole machine is with nothing of ours running.
    cat /proc/stat >"$TMP/stat0"
    sleep 0.5
    cat /proc/stat >"$TMP/stat1"
    idle_busy=$(python3 "$TMP/bench.py" cpu "$TMP/stat0" "$TMP/stat1" "")
    cat /proc/stat >"$TMP/stat0"
    read -r u0 s0 < <(proc_ticks "$pid"); t0=$(date +%s.%N)
    run_wrk "$scen" "$target" "$DURATION" "rep$rep"
    out="$RUN_OUT"
    read -r u1 s1 < <(proc_ticks "$pid"); t1=$(date +%s.%N)
    cat /proc/stat >"$TMP/stat1"
    local parsed load_cpu proxy_cpu proc_cpu
    parsed=$(python3 "$TMP/bench.py" parse "$out")
    if [[ -n "$LOAD_CPU" ]]; then
        load_cpu=$(python3 "$TMP/bench.py" cpu "$TMP/stat0" "$TMP/stat1" "$LOAD_CPU")
        proxy_cpu=$(python3 "$TMP/bench.py" cpu "$TMP/stat0" "$TMP/stat1" "$PROXY_CPU")
    else
        load_cpu=$(python3 "$TMP/bench.py" cpu "$TMP/stat0" "$TMP/stat1" "")
        proxy_cpu=nan
    fi
    local rps p50 p99 reqs errs detail
    IFS=$'\t' read -r rps p50 p99 reqs errs detail <<<"$parsed"
    proc_cpu=$(awk -v a="$((u0 + s0))" -v b="$((u1 + s1))" -v s="$t0" -v e="$t1" -v hz="$HZ" \
        'BEGIN { printf "%.0f", 100 * (b - a) / hz / (e - s) }')
    # CPU time the target spent per request, split into user space and kernel: the kernel's
    # share (loopback TCP, epoll) is most of it and barely depends on the proxy.
    local user_us sys_us
    read -r user_us sys_us < <(awk -v du="$((u1 - u0))" -v ds="$((s1 - s0))" -v n="$reqs" -v hz="$HZ" \
        'BEGIN { if (n > 0) printf "%.2f %.2f\n", du * 1e6 / hz / n, ds * 1e6 / hz / n; else print "nan nan" }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scen" "$target" "$rep" "$parsed" \
        "$load_cpu" "$proxy_cpu" "$proc_cpu" "$idle_busy" "$user_us" "$sys_us" >>"$RESULTS"
    local flag=""
    ((errs > 0)) && flag="   <<< ERRORS: $detail"
    ((idle_busy > 10)) && flag+="   (machine ${idle_busy}% busy before the run)"
    printf '  %-9s %-6s rep %d: %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms  %8d reqs  target-proc cpu %3s%% (%s+%s us/req)  cpu%s %3s%%  cpu%s %3s%%%s\n' \
        "$scen" "$target" "$rep" "$rps" "$p50" "$p99" "$reqs" "$proc_cpu" "$user_us" "$sys_us" \
        "${LOAD_CPU:-?}" "$load_cpu" "${PROXY_CPU:-?}" "$proxy_cpu" "$flag" >&2
    local name
    for name in "${TARGETS[@]}"; do
        kill -0 "${SERVER_PID[$name]}" 2>/dev/null ||
            die "$name (pid ${SERVER_PID[$name]}) died during $scen/$target rep $rep; guard log: $(tail -n 20 "$TMP/guard.log")"
    done
}

# ---------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------
log "wrk -t$THREADS -c$CONNS -d$DURATION --latency; $REPS repetition(s); warm-up ${WARMUP}"
for scen in small-get post-64k; do
    log "scenario $scen"
    if [[ "$WARMUP" != 0 && "$WARMUP" != 0s ]]; then
        for target in "${TARGETS[@]}"; do
            run_wrk "$scen" "$target" "$WARMUP" warmup
            out="$RUN_OUT"
            IFS=$'\t' read -r rps _ _ _ errs detail < <(python3 "$TMP/bench.py" parse "$out")
            printf '  %-9s %-6s warm-up: %10.0f req/s (not counted)%s\n' "$scen" "$target" "$rps" \
                "$( ((errs > 0)) && echo "   <<< ERRORS: $detail")" >&2
        done
    fi
    for rep in $(seq "$REPS"); do
        for target in "${TARGETS[@]}"; do
            measure "$scen" "$target" "$rep"
        done
    done
done

# Guard-side view: the guard must have forwarded everything and rejected nothing.
log "guard metrics (requests, rejections, upstream and connection errors):"
curl -s --max-time 5 "http://127.0.0.1:$APORT/metrics" |
    grep -E '^verbosity_guard_(requests_total|rejections_total|upstream_errors_total|connection_errors_total)' >&2 ||
    log "  (no matching series)"
if [[ -s "$TMP/guard.log" ]]; then
    log "guard log (warnings and errors, last 20 lines):"
    tail -n 20 "$TMP/guard.log" >&2
fi

echo
echo "verbosity-guard loopback benchmark: wrk -t$THREADS -c$CONNS -d$DURATION --latency, $REPS rep(s), medians"
if [[ -n "$PROXY_CPU" ]]; then
    echo "pinning: proxy on CPU $PROXY_CPU, upstream nginx + wrk on CPU $LOAD_CPU"
else
    echo "pinning: none (single CPU)"
fi
echo
status=0
python3 "$TMP/bench.py" summary "$RESULTS" || status=$?
exit "$status"
