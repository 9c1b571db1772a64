#!/usr/bin/env bash
# Two ringfan configurations under the same load, alternating runs, side by side: delivered
# msgs/s, server CPU-seconds per million deliveries (total and user space, from /proc/PID/stat),
# p50/p99 latency, and the B/A ratios. Server pinned to core 0 with one worker, load on core 1.
#
#   scripts/ab-compare.sh NAME_A "VAR=VALUE ..." NAME_B "VAR=VALUE ..." [SUBSCRIBERS] [RATE] [SECONDS] [REPEATS]
#
# RATE 0 = as fast as the publisher can go. Examples:
#   scripts/ab-compare.sh io_uring RINGFAN_DRIVER=io_uring epoll RINGFAN_DRIVER=epoll 1000 0 5 3
#   scripts/ab-compare.sh metrics-off "" metrics-on RINGFAN_METRICS_LISTEN=127.0.0.1:0 1000 2000 5 3
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 4 ]; then
    sed -n '2,10p' "$0" >&2
    exit 2
fi
name_a=$1 env_a=$2 name_b=$3 env_b=$4
subs=${5:-1000}
rate=${6:-0}
secs=${7:-5}
repeats=${8:-3}
cargo build --release -q -p ringfan -p ringfan-benches
clk=$(getconf CLK_TCK)

run() { # $1 = "VAR=VALUE ..." for the server
    local out pid port t0 t1 line
    out=$(mktemp)
    # shellcheck disable=SC2086
    env RINGFAN_LISTEN=127.0.0.1:0 RINGFAN_THREADS=1 RINGFAN_PIN=0 RINGFAN_LOG=warn $1 \
        taskset -c 0 target/release/ringfan >"$out" &
    pid=$!
    for _ in $(seq 200); do grep -q listening "$out" && break; sleep 0.05; done
    port=$(awk '/listening/ {split($4, a, ":"); print a[2]}' "$out")
    [ -n "$port" ] || { echo "server did not start ($1)" >&2; kill $pid; exit 1; }
    t0=$(awk '{print $14 + $15, $14}' /proc/$pid/stat)
    line=$(taskset -c 1 target/release/ringfan-load --addr 127.0.0.1:$port --subscribers "$subs" \
        --rate "$rate" --duration "$secs" --warmup 1 2>/dev/null) || true
    t1=$(awk '{print $14 + $15, $14}' /proc/$pid/stat)
    kill -TERM $pid; wait $pid || true
    rm -f "$out"
    local r d p50 p99 a0 u0 a1 u1
    r=$(tr ' ' '\n' <<<"$line" | sed -n 's/^delivered_msgs_per_s=//p')
    d=$(tr ' ' '\n' <<<"$line" | sed -n 's/^delivered=//p')
    p50=$(tr ' ' '\n' <<<"$line" | sed -n 's/^p50_us=//p')
    p99=$(tr ' ' '\n' <<<"$line" | sed -n 's/^p99_us=//p')
    read -r a0 u0 <<<"$t0"; read -r a1 u1 <<<"$t1"
    awk -v r="${r:-0}" -v t=$((a1 - a0)) -v u=$((u1 - u0)) -v clk="$clk" -v d="${d:-0}" -v p50="${p50:-0}" -v p99="${p99:-0}" \
        'BEGIN { if (d == 0) d = 1; printf "%.0f %.4f %.4f %.0f %.0f\n", r, (t / clk) / (d / 1e6), (u / clk) / (d / 1e6), p50, p99 }'
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -a ar ac au a5 a9 br bc bu b5 b9
for i in $(seq "$repeats"); do
    echo "run $i/$repeats: $name_a" >&2
    read -r r c u p5 p9 < <(run "$env_a"); ar+=("$r"); ac+=("$c"); au+=("$u"); a5+=("$p5"); a9+=("$p9")
    echo "run $i/$repeats: $name_b" >&2
    read -r r c u p5 p9 < <(run "$env_b"); br+=("$r"); bc+=("$c"); bu+=("$u"); b5+=("$p5"); b9+=("$p9")
done
echo "# scripts/ab-compare.sh $name_a \"$env_a\" $name_b \"$env_b\" $subs $rate $secs $repeats"
echo "# $(nproc) cores, $(uname -r); server on core 0 (1 worker), ringfan-load on core 1; median of $repeats (all runs)"
echo
echo "| config | delivered msgs/s | server CPU-s per M deliveries | of which user | p50 / p99 µs |"
echo "|---|---|---|---|---|"
printf '| %s | %s (%s) | %s (%s) | %s | %s / %s |\n' "$name_a" "$(median "${ar[@]}")" "${ar[*]}" "$(median "${ac[@]}")" "${ac[*]}" "$(median "${au[@]}")" "$(median "${a5[@]}")" "$(median "${a9[@]}")"
printf '| %s | %s (%s) | %s (%s) | %s | %s / %s |\n' "$name_b" "$(median "${br[@]}")" "${br[*]}" "$(median "${bc[@]}")" "${bc[*]}" "$(median "${bu[@]}")" "$(median "${b5[@]}")" "$(median "${b9[@]}")"
awk -v a="$(median "${ar[@]}")" -v b="$(median "${br[@]}")" -v c="$(median "${ac[@]}")" -v d="$(median "${bc[@]}")" \
    -v n1="$name_a" -v n2="$name_b" \
    'BEGIN { printf "\n%s/%s: throughput %.3f, CPU per delivery %.3f\n", n1, n2, (b > 0 ? a / b : 0), (d > 0 ? c / d : 0) }'
