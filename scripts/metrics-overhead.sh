#!/usr/bin/env bash
# Cost of metrics: the same fan-out load against ringfan with RINGFAN_METRICS_LISTEN off and on,
# side by side, alternating, each configuration run REPEATS times. Reports delivered msgs/s and
# server CPU per million deliveries (from /proc/PID/stat), and the on/off ratios.
#
#   scripts/metrics-overhead.sh [SUBSCRIBERS] [RATE] [SECONDS] [REPEATS]
#
# Server pinned to core 0, load generator to core 1 (taskset), one worker thread.
set -euo pipefail
cd "$(dirname "$0")/.."
subs=${1:-1000}
rate=${2:-2000}
secs=${3:-5}
repeats=${4:-3}
cargo build --release -q -p ringfan -p ringfan-benches
clk=$(getconf CLK_TCK)

run() { # $1 = metrics listen address or ""
    local out port pid t0 t1 line
    out=$(mktemp)
    RINGFAN_LISTEN=127.0.0.1:0 RINGFAN_THREADS=1 RINGFAN_PIN=0 RINGFAN_METRICS_LISTEN="$1" RINGFAN_LOG=warn \
        taskset -c 0 target/release/ringfan >"$out" &
    pid=$!
    for _ in $(seq 100); do grep -q listening "$out" && break; sleep 0.05; done
    port=$(awk '/listening/ {split($4, a, ":"); print a[2]}' "$out")
    t0=$(awk '{print $14 + $15, $14}' /proc/$pid/stat)
    line=$(taskset -c 1 target/release/ringfan-load --addr 127.0.0.1:$port --subscribers "$subs" \
        --rate "$rate" --duration "$secs" --warmup 1 2>/dev/null)
    t1=$(awk '{print $14 + $15, $14}' /proc/$pid/stat)
    kill -TERM $pid; wait $pid || true
    rm -f "$out"
    local rate_out delivered
    rate_out=$(sed -n 's/.*delivered_msgs_per_s=\([0-9.]*\).*/\1/p' <<<"$line")
    delivered=$(sed -n 's/.* delivered=\([0-9]*\).*/\1/p' <<<"$line")
    # CPU over the whole run (connect + warm-up + measured + drain) per million deliveries counted.
    read -r a0 u0 <<<"$t0"; read -r a1 u1 <<<"$t1"
    awk -v r="$rate_out" -v t=$((a1 - a0)) -v u=$((u1 - u0)) -v clk="$clk" -v d="$delivered" \
        'BEGIN { printf "%.0f %.4f %.4f\n", r, (t / clk) / (d / 1e6), (u / clk) / (d / 1e6) }'
}

declare -a off_rate off_cpu off_user on_rate on_cpu on_user
for i in $(seq "$repeats"); do
    read -r r c u < <(run ""); off_rate+=("$r"); off_cpu+=("$c"); off_user+=("$u")
    read -r r c u < <(run "127.0.0.1:0"); on_rate+=("$r"); on_cpu+=("$c"); on_user+=("$u")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mo=$(median "${off_rate[@]}"); mc=$(median "${off_cpu[@]}"); mu=$(median "${off_user[@]}")
no=$(median "${on_rate[@]}"); nc=$(median "${on_cpu[@]}"); nu=$(median "${on_user[@]}")
echo "# scripts/metrics-overhead.sh $subs $rate $secs $repeats  (median of $repeats, server on core 0, load on core 1)"
printf '| metrics | delivered msgs/s | server CPU-s per M deliveries (all runs) | of which user space (all runs) |\n|---|---|---|---|\n'
printf '| off | %s | %s (%s) | %s (%s) |\n' "$mo" "$mc" "${off_cpu[*]}" "$mu" "${off_user[*]}"
printf '| on | %s | %s (%s) | %s (%s) |\n' "$no" "$nc" "${on_cpu[*]}" "$nu" "${on_user[*]}"
awk -v a="$mo" -v b="$no" -v c="$mc" -v d="$nc" -v e="$mu" -v f="$nu" \
    'BEGIN { printf "on/off: throughput %.3f, CPU per delivery %.3f, user-space CPU per delivery %.3f\n", b / a, d / c, f / e }'
