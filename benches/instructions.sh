#!/usr/bin/env bash
# User-space instructions per request of verbosity-guard, counted by valgrind's callgrind.
#
#   benches/instructions.sh                      # the release build, small GETs
#   benches/instructions.sh OLD_BIN NEW_BIN ...  # compare builds, same load, one after another
#   BENCH_SCENARIO=post-64k benches/instructions.sh
#
# Why: on a shared 2-core machine, req/s moves by +-20% between runs (see README-load.md),
# which hides any single hot-path change. The instruction count per request moves by well
# under 1% between runs, so it shows a 1% change. It counts user space only (the guard and
# libc): the kernel's share of a request, about two thirds, is measured by load.sh.
#
# How: an nginx upstream on 127.0.0.1 answers `200 ok`; each binary runs
# `serve --workers 1` with benches/bench-policy.yaml (every payload budget active) under
# callgrind; wrk warms it up, the counters are zeroed, wrk runs again, and the total is
# divided by the requests wrk completed. Traffic goes only to 127.0.0.1; everything started
# is stopped on exit.
#
# Environment: BENCH_SCENARIO (small-get | post-64k, default small-get), BENCH_CONNS (wrk
# connections, default 16), BENCH_DURATION (counted run, default 6s).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
SCENARIO="${BENCH_SCENARIO:-small-get}"
CONNS="${BENCH_CONNS:-16}"
DURATION="${BENCH_DURATION:-6s}"
POLICY="benches/bench-policy.yaml"

log() { printf '[instructions.sh] %s\n' "$*" >&2; }
die() { printf '[instructions.sh] ERROR: %s\n' "$*" >&2; exit 1; }

PIDS=()
TMP=""
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    [[ -n "$TMP" && -d "$TMP" ]] && rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

NGINX="$(command -v nginx || true)"
[[ -z "$NGINX" && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v wrk >/dev/null || missing+=(wrk)
[[ -n "$NGINX" ]] || missing+=(nginx-light)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
    [[ $EUID -eq 0 ]] || die "missing tools; install them with: sudo apt-get install -y ${missing[*]}"
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2; } ||
        die "apt-get install ${missing[*]} failed"
    NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
fi

BINS=("$@")
if ((${#BINS[@]} == 0)); then
    log "building: cargo build --release --locked"
    cargo build --release --locked >&2 || die "cargo build failed"
    BINS=("$REPO_ROOT/target/release/verbosity-guard")
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/vg-instr.XXXXXX")"
chmod 711 "$TMP"
mkdir -p "$TMP/upstream" && chmod 777 "$TMP/upstream"
read -r UPORT GPORT APORT < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)
cat >"$TMP/upstream/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/upstream/nginx.pid;
error_log $TMP/upstream/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/upstream/client_body;
    proxy_temp_path $TMP/upstream/proxy_temp;
    fastcgi_temp_path $TMP/upstream/fastcgi_temp;
    uwsgi_temp_path $TMP/upstream/uwsgi_temp;
    scgi_temp_path $TMP/upstream/scgi_temp;
    keepalive_requests 1000000;
    client_max_body_size 1m;
    server {
        listen 127.0.0.1:$UPORT backlog=4096;
        location / { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF
"$NGINX" -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" -e "$TMP/upstream/error.log" &
PIDS+=($!)

WRK=(wrk -t1 -c"$CONNS")
case "$SCENARIO" in
    small-get) URL_PATH=/bench/small ;;
    post-64k)
        URL_PATH=/bench/upload
        printf 'wrk.method = "POST"\nwrk.body = string.rep("x", 65536)\n' >"$TMP/post.lua"
        WRK+=(-s "$TMP/post.lua")
        ;;
    *) die "BENCH_SCENARIO must be small-get or post-64k, not $SCENARIO" ;;
esac

wait_up() { # url pid
    for _ in $(seq 150); do
        kill -0 "$2" 2>/dev/null || die "a server exited during startup"
        curl -s -o /dev/null --max-time 1 "$1" && return 0
        sleep 0.2
    done
    die "$1 did not answer within 30 s"
}

printf '%-60s %10s %12s\n' "binary ($SCENARIO, wrk -c$CONNS)" requests instr/req
for bin in "${BINS[@]}"; do
    [[ -x "$bin" ]] || die "$bin is not an executable"
    out="$TMP/callgrind.out"
    rm -f "$out"*
    valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no "$bin" serve \
        --policy "$POLICY" --upstream "http://127.0.0.1:$UPORT" --listen "127.0.0.1:$GPORT" \
        --admin "127.0.0.1:$APORT" --workers 1 --log-level warn 2>"$TMP/valgrind.log" &
    pid=$!
    PIDS+=("$pid")
    wait_up "http://127.0.0.1:$APORT/readyz" "$pid"
    url="http://127.0.0.1:$GPORT$URL_PATH"
    "${WRK[@]}" -d3s "$url" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    requests="$("${WRK[@]}" -d"$DURATION" "$url" | awk '/requests in/ {print $1}')"
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    # The dump after zeroing holds the counted run; the final dump at exit is the largest
    # only if the process did more after it, so take the dump callgrind_control wrote.
    dump="$(ls -1 "$out".* 2>/dev/null | head -n1)"
    [[ -n "$dump" ]] || die "callgrind wrote no dump for $bin (see $TMP/valgrind.log)"
    total="$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
    [[ "${requests:-0}" -gt 0 && -n "$total" ]] || die "no requests or no total for $bin"
    printf '%-60s %10d %12d\n' "$bin" "$requests" "$((total / requests))"
done
