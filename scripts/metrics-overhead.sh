#!/usr/bin/env bash
# Cost of metrics: the same fan-out load against ringfan with RINGFAN_METRICS_LISTEN off and on,
# side by side, alternating, each configuration run REPEATS times. Reports delivered msgs/s and
# server CPU per million deliveries (utime+stime from /proc/PID/stat, sampled by ringfan-load
# at the start and the end of the measured window only), and the on/off ratios.
#
#   scripts/metrics-overhead.sh [SUBSCRIBERS] [RATE] [SECONDS] [REPEATS]
#
# Server pinned to core 0, load generator to core 1 (taskset), one worker thread. User-space CPU
# is read in clock ticks (usually 10 ms): over short runs that column is coarse.
set -euo pipefail
cd "$(dirname "$0")/.."
subs=${1:-1000}
rate=${2:-2000}
secs=${3:-5}
repeats=${4:-3}
# RINGFAN_BENCH_BIN: a directory holding ringfan and ringfan-load (bench.sh passes its copies);
# otherwise they are built here.
bin=${RINGFAN_BENCH_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release -q -p ringfan -p ringfan-benches
    bin=target/release
fi

run() { # $1 = metrics listen address or ""
    local out port pid line
    out=$(mktemp)
    RINGFAN_LISTEN=127.0.0.1:0 RINGFAN_THREADS=1 RINGFAN_PIN=0 RINGFAN_METRICS_LISTEN="$1" RINGFAN_LOG=warn \
        taskset -c 0 "$bin/ringfan" >"$out" &
    pid=$!
    for _ in $(seq 100); do grep -q listening "$out" && break; sleep 0.05; done
    port=$(awk '/listening/ {split($4, a, ":"); print a[2]}' "$out")
    line=$(taskset -c 1 "$bin/ringfan-load" --addr 127.0.0.1:"$port" --subscribers "$subs" \
        --rate "$rate" --duration "$secs" --warmup 1 --server-pid "$pid" 2>/dev/null) || true
    kill -TERM "$pid"; wait "$pid" || true
    rm -f "$out"
    # Throughput and CPU over the measured window (ringfan-load samples /proc/PID/stat).
    local f
    for f in delivered_msgs_per_s server_cpu_s_per_m server_user_s_per_m; do
        tr ' ' '\n' <<<"$line" | sed -n "s/^$f=//p" | grep . || echo 0
    done | paste -sd' '
}

declare -a off_rate off_cpu off_user on_rate on_cpu on_user
for i in $(seq "$repeats"); do
    read -r r c u < <(run ""); off_rate+=("$r"); off_cpu+=("$c"); off_user+=("$u")
    read -r r c u < <(run "127.0.0.1:0"); on_rate+=("$r"); on_cpu+=("$c"); on_user+=("$u")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {m = NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; if (m >= 1000) printf "%.0f\n", m; else printf "%.4g\n", m}'; }
mo=$(median "${off_rate[@]}"); mc=$(median "${off_cpu[@]}"); mu=$(median "${off_user[@]}")
no=$(median "${on_rate[@]}"); nc=$(median "${on_cpu[@]}"); nu=$(median "${on_user[@]}")
echo "# scripts/metrics-overhead.sh $subs $rate $secs $repeats  (median of $repeats, server on core 0, load on core 1)"
printf '| metrics | delivered msgs/s | server CPU-s per M deliveries (all runs) | of which user space (all runs) |\n|---|---|---|---|\n'
printf '| off | %s | %s (%s) | %s (%s) |\n' "$mo" "$mc" "${off_cpu[*]}" "$mu" "${off_user[*]}"
printf '| on | %s | %s (%s) | %s (%s) |\n' "$no" "$nc" "${on_cpu[*]}" "$nu" "${on_user[*]}"
awk -v a="$mo" -v b="$no" -v c="$mc" -v d="$nc" -v e="$mu" -v f="$nu" \
    'function r(x, y) { return y > 0 ? sprintf("%.3f", x / y) : "n/a" }
     BEGIN { printf "on/off: throughput %s, CPU per delivery %s, user-space CPU per delivery %s\n", r(b, a), r(d, c), r(f, e) }'
