#!/usr/bin/env bash
# Fan-out latency with tcpkali: one publisher sends RATE lines/s, each carrying tcpkali's
# message marker (`\{message.marker}`, a send timestamp); N subscribers run with
# --message-marker, which finds the markers in what they receive and records the latency
# (percentiles 50, 90, 99, 99.9 in the summary).
#
#   ADDR=127.0.0.1:7000 N=1000 SIZE=64 RATE=1000 DURATION=30 scripts/tcpkali/fanout-latency.sh
#
# The server must be running. Lines are padded to about SIZE bytes (the marker's own length
# depends on the tcpkali version).
set -euo pipefail
cd "$(dirname "$0")"
[ "${1:-}" = --help ] && { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
source ./common.sh
N=${N:-1000}
SIZE=${SIZE:-64}
RATE=${RATE:-1000}
require_tcpkali "--addr $ADDR --subscribers $N --size $SIZE --rate $RATE --duration $DURATION --warmup 2"

tcpkali -c "$N" --connect-rate 2000 -T "$((DURATION + 4))s" --message-marker \
    --latency-percentiles 50,90,99,99.9 "$ADDR" >"${TMPDIR:-/tmp}/tcpkali-lat.$$" 2>&1 &
subs=$!
trap 'kill "$subs" 2>/dev/null || true; rm -f "${TMPDIR:-/tmp}/tcpkali-lat.$$"' EXIT
sleep $(( N / 2000 + 2 ))
# The marker is about 40 bytes on the wire; pad the rest of the line.
tcpkali -c 1 -T "${DURATION}s" -r "$RATE" -em "$(payload '\{message.marker}' "$SIZE" 40)" "$ADDR" >&2
wait "$subs" || true
echo "--- subscribers (N=$N, RATE=$RATE/s): latency percentiles from --message-marker" >&2
cat "${TMPDIR:-/tmp}/tcpkali-lat.$$"
