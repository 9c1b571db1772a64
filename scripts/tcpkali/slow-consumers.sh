#!/usr/bin/env bash
# Slow consumers with tcpkali: N ordinary subscribers, K subscribers that read at most BW
# (--channel-bandwidth-downstream, e.g. 1kBps; 0 = never read), and one publisher at RATE
# lines/s of SIZE bytes. Once a second: the server's connection states on its port (from
# /proc/net/tcp{,6}) and its fds. A server with a send-queue limit evicts the slow ones (watch
# established drop by K and the slow tcpkali report closed connections) while the fast
# subscribers keep their downstream rate.
#
#   ADDR=127.0.0.1:7000 N=100 K=10 BW=1kBps SIZE=1024 RATE=2000 DURATION=30 [SERVER_PID=PID] \
#       scripts/tcpkali/slow-consumers.sh
set -euo pipefail
cd "$(dirname "$0")"
[ "${1:-}" = --help ] && { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
source ./common.sh
N=${N:-100}
K=${K:-10}
BW=${BW:-1kBps}
SIZE=${SIZE:-1024}
RATE=${RATE:-2000}
bps=$(awk -v b="$BW" 'BEGIN { n = b + 0; if (b ~ /kBps$/) n *= 1000; else if (b ~ /MBps$/) n *= 1000000; else if (b ~ /kbps$/) n *= 125; else if (b ~ /Mbps$/) n *= 125000; printf "%d", n }')
require_tcpkali "--addr $ADDR --scenario slow --subscribers $((N + K)) --slow $K --slow-bytes-per-sec $bps --size $SIZE --rate $RATE --duration $DURATION --warmup 2"

tmpd=$(mktemp -d)
tcpkali -c "$N" -T "$((DURATION + 4))s" "$ADDR" >"$tmpd/fast" 2>&1 &
fast=$!
tcpkali -c "$K" -T "$((DURATION + 4))s" --channel-bandwidth-downstream "$BW" "$ADDR" >"$tmpd/slow" 2>&1 &
slow=$!
trap 'kill "$fast" "$slow" "${pub:-}" 2>/dev/null || true; rm -rf "$tmpd"' EXIT
sleep 2
tcpkali -c 1 -T "${DURATION}s" -r "$RATE" -em "$(payload "" "$SIZE" 0)" "$ADDR" >"$tmpd/pub" 2>&1 &
pub=$!
watch_server "$((DURATION + 2))"
wait "$pub" "$fast" "$slow" || true
echo "--- fast subscribers (N=$N):"; cat "$tmpd/fast"
echo "--- slow subscribers (K=$K, $BW each):"; cat "$tmpd/slow"
echo "--- publisher:"; cat "$tmpd/pub"
