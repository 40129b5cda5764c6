# Shared by the scripts in benches/ (source it after `set -euo pipefail`): logging, stopping
# every process a script started, installing missing tools, free loopback ports, the upstream
# nginx the load scripts measure against, waiting for a server to answer, and building a bench
# target's executable.
#
# A script sets TMP (its temporary directory, removed on exit unless BENCH_KEEP=1), appends
# what it starts to PIDS, and sets WRK_PID while a wrk run is in the background.

BENCH_NAME="${0##*/}"
log() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------
# Cleanup: stop everything we started, even on failure or Ctrl-C.
# ---------------------------------------------------------------------------------------
PIDS=()
WRK_PID=""
TMP=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$WRK_PID" ]]; then kill "$WRK_PID" 2>/dev/null || true; fi
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
            log "kept $TMP"
        else
            rm -rf "$TMP"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# stop_pid PID: SIGTERM, up to 5 s to exit, then SIGKILL; reaps it and forgets it.
stop_pid() {
    local pid=$1 p kept=()
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "process $pid did not stop on SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || kept+=("$p"); done
    PIDS=("${kept[@]}")
}

# ---------------------------------------------------------------------------------------
# need_tools CMD...: checks for each command (nginx, wrk, curl, taskset, python3, valgrind,
# ...) and, as root, installs the missing ones with apt-get; sets NGINX to nginx's path.
# ---------------------------------------------------------------------------------------
need_tools() {
    NGINX="$(command -v nginx || true)"
    [[ -z "$NGINX" && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
    local cmd pkgs=()
    for cmd in "$@"; do
        case "$cmd" in
            nginx)
                [[ -n "$NGINX" ]] && continue
                # nginx-light is enough; newer Debian releases only ship "nginx".
                if apt-cache show nginx-light >/dev/null 2>&1; then pkgs+=(nginx-light); else pkgs+=(nginx); fi
                ;;
            taskset) command -v taskset >/dev/null || pkgs+=(util-linux) ;;
            *) command -v "$cmd" >/dev/null || pkgs+=("$cmd") ;;
        esac
    done
    ((${#pkgs[@]})) || return 0
    if [[ $EUID -ne 0 ]]; then
        die "missing tools; install them with: sudo apt-get install -y ${pkgs[*]}"
    fi
    log "installing ${pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" >&2; } ||
        die "apt-get install ${pkgs[*]} failed"
    NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
    for cmd in "$@"; do
        case "$cmd" in
            nginx) [[ -x "$NGINX" ]] || die "nginx still missing after apt-get" ;;
            *) command -v "$cmd" >/dev/null || die "$cmd still missing after apt-get" ;;
        esac
    done
}

# free_ports N: prints N loopback ports that were free a moment ago.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(*[s.getsockname()[1] for s in socks])
EOF
}

# nginx_common NAME: the directives every nginx instance here shares: foreground, own pid and
# error log, no access log, temp paths inside $TMP/NAME, keep-alive connections that are never
# recycled by count (the guard has no per-connection request limit either). Leaves the http
# block open.
nginx_common() {
    cat <<EOF
worker_processes 1;
daemon off;
pid $TMP/$1/nginx.pid;
error_log $TMP/$1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/$1/client_body;
    proxy_temp_path $TMP/$1/proxy_temp;
    fastcgi_temp_path $TMP/$1/fastcgi_temp;
    uwsgi_temp_path $TMP/$1/uwsgi_temp;
    scgi_temp_path $TMP/$1/scgi_temp;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_max_body_size 1m;
    client_body_buffer_size 128k;
EOF
}

# upstream_nginx_conf PORT: the upstream every benchmark measures against, in $TMP/upstream.
upstream_nginx_conf() {
    nginx_common upstream
    cat <<EOF
    server {
        listen 127.0.0.1:$1 backlog=4096;
        # "return" discards (reads and drops) any request body before answering.
        location / {
            default_type text/plain;
            return 200 "ok\n";
        }
    }
}
EOF
}

# wait_http NAME URL PID [SECONDS]: until URL answers 200, for up to SECONDS (default 10);
# dies if PID exits first.
wait_http() {
    local code within="${4:-10}"
    for _ in $(seq $((within * 10))); do
        kill -0 "$3" 2>/dev/null || die "$1 exited during startup (see logs in $TMP; rerun with BENCH_KEEP=1)"
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$2" || true)"
        [[ "$code" == 200 ]] && return 0
        sleep 0.1
    done
    die "$1 did not answer 200 at $2 within $within s (last status: ${code:-none})"
}

# bench_bin NAME: builds the bench target NAME (`cargo bench --no-run`) and prints the path of
# its executable, which cargo names with a hash.
bench_bin() {
    local bin
    log "building: cargo bench --bench $1 --no-run --locked"
    bin="$(cargo bench --bench "$1" --no-run --locked --message-format=json |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1")" || die "cargo bench --bench $1 --no-run failed"
    [[ -x "$bin" ]] || die "no $1 binary after the build"
    printf '%s\n' "$bin"
}
