#!/usr/bin/env bash
# Side-by-side fan-out benchmark: ringfan, the tokio baseline (tokio-fanout), Redis pub/sub and
# NATS, each server pinned to core 0 with one thread, the load generator (ringfan-load) on the
# other core(s). Prints one Markdown table.
#
#   scripts/bench.sh [--quick] [--runs R]
#
# Columns: delivered msgs/s as fast as the publisher can go (median of R runs, min–max), server
# CPU-seconds per million deliveries in those runs (from /proc/PID/stat), and p50/p99 delivery
# latency at a fixed rate every server sustains (N subscribers x 1000 msgs/s).
# Redis and NATS come from Debian (apt-get install redis-server nats-server); a server that is
# not installed is skipped with a note. Everything listens on 127.0.0.1 and is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
runs=2
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --runs) runs=$2; shift ;;
        *) echo "usage: scripts/bench.sh [--quick] [--runs R]" >&2; exit 2 ;;
    esac
    shift
done
if [ "$quick" = 1 ]; then
    subs_list="100 1000"; sizes="64"; secs=3
else
    subs_list="100 1000 10000"; sizes="64 1024"; secs=5
fi
ncpu=$(nproc)
load_cpus="1-$((ncpu - 1))"
[ "$ncpu" -ge 2 ] || { echo "bench.sh needs at least 2 cores (server and load apart)" >&2; exit 1; }

cargo build --release -q -p ringfan -p ringfan-benches
clk=$(getconf CLK_TCK)
ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# start SERVER PORT: starts it pinned to core 0 in the background, sets server_pid and proto.
start() {
    local port=$2
    case "$1" in
        ringfan) proto=ringfan
            RINGFAN_LISTEN=127.0.0.1:$port RINGFAN_THREADS=1 RINGFAN_PIN=0 RINGFAN_LOG=warn \
                taskset -c 0 target/release/ringfan >"$tmp/out" 2>"$tmp/err" & ;;
        tokio) proto=ringfan
            RINGFAN_LISTEN=127.0.0.1:$port RINGFAN_THREADS=1 \
                taskset -c 0 target/release/tokio-fanout >"$tmp/out" 2>"$tmp/err" & ;;
        redis) proto=redis
            taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
                --protected-mode no --logfile "$tmp/err" >"$tmp/out" 2>&1 & ;;
        nats) proto=nats
            GOMAXPROCS=1 taskset -c 0 nats-server -a 127.0.0.1 -p "$port" >"$tmp/out" 2>"$tmp/err" & ;;
    esac
    server_pid=$!
    wait_port "$port" || { echo "$1 did not start: $(tail -3 "$tmp/err")" >&2; return 1; }
}
stop() { kill -TERM "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; server_pid=""; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat"; }
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }

available() {
    case "$1" in
        redis) command -v redis-server >/dev/null ;;
        nats) command -v nats-server >/dev/null ;;
        *) true ;;
    esac
}

echo "# scripts/bench.sh $*  ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r); server on core 0, load on cores $load_cpus, ${secs}s per run, $runs runs)"
echo
echo "| server | N | S | delivered msgs/s, median (min–max) | server CPU-s per M deliveries | p50 / p99 at N x 1000 msgs/s |"
echo "|---|---|---|---|---|---|"
for size in $sizes; do
    for subs in $subs_list; do
        for server in ringfan tokio redis nats; do
            if ! available "$server"; then
                echo "| $server | $subs | $size | not installed (apt-get install ${server}-server) | | |"
                continue
            fi
            rates=(); cpus=()
            for _ in $(seq "$runs"); do
                port=$(free_port); start "$server" "$port"
                t0=$(cpu_ticks)
                line=$(taskset -c "$load_cpus" target/release/ringfan-load --proto "$proto" --addr 127.0.0.1:"$port" \
                    --subscribers "$subs" --size "$size" --duration "$secs" --warmup 1 --drain 1 \
                    --recv-threads 1 2>/dev/null) || true
                t1=$(cpu_ticks); stop
                r=$(field delivered_msgs_per_s "$line"); d=$(field delivered "$line")
                rates+=("${r:-0}")
                cpus+=("$(awk -v t=$((t1 - t0)) -v c="$clk" -v d="${d:-0}" 'BEGIN { if (d > 0) printf "%.3f", (t / c) / (d / 1e6); else print "n/a" }')")
            done
            port=$(free_port); start "$server" "$port"
            line=$(taskset -c "$load_cpus" target/release/ringfan-load --proto "$proto" --addr 127.0.0.1:"$port" \
                --subscribers "$subs" --size "$size" --rate 1000 --duration "$secs" --warmup 1 2>/dev/null) || true
            stop
            lat="$(field p50_us "$line") / $(field p99_us "$line") µs"
            read -r med lo hi < <(printf '%s\n' "${rates[@]}" | sort -g | awk '{a[NR]=$1} END {printf "%.0f %.0f %.0f\n", a[int((NR+1)/2)], a[1], a[NR]}')
            cpu_med=$(printf '%s\n' "${cpus[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
            printf '| %s | %s | %s | %s (%s–%s) | %s | %s |\n' "$server" "$subs" "$size" \
                "$(printf "%'d" "$med")" "$(printf "%'d" "$lo")" "$(printf "%'d" "$hi")" "$cpu_med" "$lat"
        done
    done
done
