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
# connections, default 16), BENCH_DURATION (counted run, default 6s), BENCH_POLICY (default
# benches/bench-policy.yaml), BENCH_SERVE_ARGS (more `serve` flags, e.g. --fleet-redis URL;
# benches/fleet.sh's header shows a fleet run).
set -euo pipefail

# Binaries named on the command line are resolved before the script moves to the repo root.
BINS=()
for bin in "$@"; do
    resolved="$(realpath -e "$bin")" || { printf 'no such binary: %s\n' "$bin" >&2; exit 1; }
    BINS+=("$resolved")
done
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
SCENARIO="${BENCH_SCENARIO:-small-get}"
CONNS="${BENCH_CONNS:-16}"
DURATION="${BENCH_DURATION:-6s}"
POLICY="${BENCH_POLICY:-benches/bench-policy.yaml}"
read -r -a SERVE_ARGS <<<"${BENCH_SERVE_ARGS:-}"

# shellcheck source=benches/lib.sh
source "$REPO_ROOT/benches/lib.sh"
need_tools valgrind wrk nginx curl python3

if ((${#BINS[@]} == 0)); then
    log "building: cargo build --release --locked"
    cargo build --release --locked >&2 || die "cargo build failed"
    BINS=("$REPO_ROOT/target/release/verbosity-guard")
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/vg-instr.XXXXXX")"
# nginx workers drop to "nobody" when started as root; let them reach their temp dirs.
chmod 711 "$TMP"
mkdir -p "$TMP/upstream" && chmod 777 "$TMP/upstream"
read -r UPORT GPORT APORT < <(free_ports 3)
upstream_nginx_conf "$UPORT" >"$TMP/upstream/nginx.conf"
"$NGINX" -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" -e "$TMP/upstream/error.log" &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")
wait_http upstream "http://127.0.0.1:$UPORT/" "$UPSTREAM_PID"

WRK=(wrk -t1 -c"$CONNS")
case "$SCENARIO" in
    small-get) URL_PATH=/bench/small ;;
    post-64k)
        URL_PATH=/bench/upload
        cat >"$TMP/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = string.rep("x", 65536)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF
        WRK+=(-s "$TMP/post.lua")
        ;;
    *) die "BENCH_SCENARIO must be small-get or post-64k, not $SCENARIO" ;;
esac

# check_wrk FILE: a run that saw errors measured the guard's error path, not a request.
check_wrk() {
    if grep -q 'Non-2xx' "$1" || grep -Eq 'Socket errors: .*[1-9]' "$1"; then
        die "wrk saw errors: $(grep -E 'Non-2xx|Socket errors' "$1" | tr '\n' ' ')"
    fi
}

printf '%-60s %10s %12s\n' "binary ($SCENARIO, wrk -c$CONNS)" requests instr/req
for bin in "${BINS[@]}"; do
    [[ -x "$bin" ]] || die "$bin is not an executable"
    out="$TMP/callgrind.out"
    rm -f "$out"*
    valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no "$bin" serve \
        --policy "$POLICY" --upstream "http://127.0.0.1:$UPORT" --listen "127.0.0.1:$GPORT" \
        --admin "127.0.0.1:$APORT" --workers 1 --log-level warn --drain-timeout 1s \
        "${SERVE_ARGS[@]}" 2>"$TMP/valgrind.log" &
    pid=$!
    PIDS+=("$pid")
    # A guard under valgrind takes a few seconds to start.
    wait_http guard "http://127.0.0.1:$APORT/readyz" "$pid" 30
    url="http://127.0.0.1:$GPORT$URL_PATH"
    "${WRK[@]}" -d3s "$url" >"$TMP/warm-up.txt" || die "wrk failed (warm-up)"
    check_wrk "$TMP/warm-up.txt"
    # callgrind_control exits 0 even when it finds no such process: look for its "OK".
    callgrind_control -z "$pid" 2>&1 | grep -q OK || die "callgrind_control could not zero $pid"
    "${WRK[@]}" -d"$DURATION" "$url" >"$TMP/wrk.txt" || die "wrk failed"
    check_wrk "$TMP/wrk.txt"
    requests="$(awk '/requests in/ {print $1}' "$TMP/wrk.txt")"
    callgrind_control -d "$pid" 2>&1 | grep -q OK || die "callgrind_control could not dump $pid"
    stop_pid "$pid"
    # The dump asked for above is numbered .1; the one valgrind writes at exit has no suffix.
    dump="$out.1"
    [[ -s "$dump" ]] || die "callgrind wrote no dump for $bin (see $TMP/valgrind.log)"
    total="$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
    [[ "${requests:-0}" -gt 0 && -n "$total" ]] || die "no requests or no total for $bin"
    printf '%-60s %10d %12d\n' "$bin" "$requests" "$((total / requests))"
done
