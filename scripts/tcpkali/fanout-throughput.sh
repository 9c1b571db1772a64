#!/usr/bin/env bash
# Fan-out throughput with tcpkali: N subscriber connections that only receive, one publisher
# connection sending SIZE-byte lines as fast as it can (or RATE lines/s). tcpkali reports the
# subscribers' downstream bandwidth; messages/s delivered = downstream bytes/s / bytes per
# delivered message (SIZE for lines).
#
#   ADDR=127.0.0.1:7000 N=1000 SIZE=64 RATE=0 DURATION=30 scripts/tcpkali/fanout-throughput.sh
#
# PROTO=ws WS_ADDR=HOST:PORT: the subscribers upgrade to WebSocket on WS_ADDR (tcpkali
# --websocket, path /: ringfan's lines topic); each message arrives as a frame of SIZE-1
# payload bytes plus its header (2 bytes up to 125 payload bytes). The publisher sends lines to
# ADDR either way. The server must be running (e.g. RINGFAN_LISTEN=127.0.0.1:7000
# RINGFAN_WS_LISTEN=127.0.0.1:7001 cargo run --release).
set -euo pipefail
cd "$(dirname "$0")"
[ "${1:-}" = --help ] && { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
source ./common.sh
N=${N:-1000}
SIZE=${SIZE:-64}
RATE=${RATE:-0}
PROTO=${PROTO:-line}
case "$PROTO" in line|ws) ;; *) echo "PROTO must be line or ws (got '$PROTO')" >&2; exit 2 ;; esac
require_tcpkali "$(load_proto_args)--addr $ADDR --subscribers $N --size $SIZE --rate $RATE --duration $DURATION --warmup 2"

# Subscribers: connect (ws: and upgrade), send nothing, count what arrives (the summary's
# "Bandwidth ↓").
tcpkali -c "$N" --connect-rate 2000 -T "$((DURATION + 4))s" "${ws_args[@]}" "$sub_addr" >"${TMPDIR:-/tmp}/tcpkali-subs.$$" 2>&1 &
subs=$!
trap 'kill "$subs" 2>/dev/null || true; rm -f "${TMPDIR:-/tmp}/tcpkali-subs.$$"' EXIT
sleep $(( N / 2000 + 2 ))
rate_opt=()
[ "$RATE" != 0 ] && rate_opt=(-r "$RATE")
# Publisher: one connection repeating one SIZE-byte line (-e turns \n into a newline).
tcpkali -c 1 -T "${DURATION}s" "${rate_opt[@]}" -em "$(payload "" "$SIZE" 0)" "$ADDR" >&2
wait "$subs" || true
per=$(delivered_bytes "$PROTO" "$SIZE")
echo "--- subscribers (N=$N, SIZE=$SIZE, PROTO=$PROTO): delivered msgs/s = downstream bytes/s / $per" >&2
cat "${TMPDIR:-/tmp}/tcpkali-subs.$$"
