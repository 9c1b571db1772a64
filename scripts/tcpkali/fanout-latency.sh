#!/usr/bin/env bash
# Fan-out latency with tcpkali: one publisher sends RATE lines/s, each carrying tcpkali's
# message marker (`\{message.marker}`, its send time); N subscribers run with --message-marker,
# which finds the markers in what they receive and records each one's latency. Prints the
# percentiles (50, 90, 99, 99.9) over every marker received by every subscriber.
#
#   ADDR=127.0.0.1:7000 N=1000 SIZE=64 RATE=1000 DURATION=30 scripts/tcpkali/fanout-latency.sh
#
# The server must be running. Lines are SIZE bytes (the marker is 30 of them in tcpkali 1.x).
# CONNECT_RATE (default 2000/s) paces the subscribers. PROTO=redis or PROTO=nats measures a
# Redis or NATS server instead (subscribers subscribe to channel `bench`; the publisher PUBLISHes
# a SIZE-byte payload); the default, PROTO=line, is ringfan's newline-delimited lines. PROTO=ws:
# the subscribers upgrade to WebSocket on WS_ADDR (tcpkali --websocket, path /: ringfan's lines
# topic) and find the markers in the frames; the publisher sends lines to ADDR.
#
# Every subscriber disconnects itself once the publisher is done, before tcpkali reports: that is
# what makes the figure cover all of them (see the comment in the script).
set -euo pipefail
cd "$(dirname "$0")"
[ "${1:-}" = --help ] && { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
source ./common.sh
N=${N:-1000}
SIZE=${SIZE:-64}
RATE=${RATE:-1000}
CONNECT_RATE=${CONNECT_RATE:-2000}
PROTO=${PROTO:-line}
case "$PROTO" in line|redis|nats|ws) ;; *) echo "PROTO must be line, redis, nats or ws (got '$PROTO')" >&2; exit 2 ;; esac
case "$N$RATE$CONNECT_RATE" in *[!0-9]*) echo "N, RATE and CONNECT_RATE must be whole numbers (got N='$N' RATE='$RATE' CONNECT_RATE='$CONNECT_RATE')" >&2; exit 2 ;; esac
[ "$N" -ge 1 ] && [ "$RATE" -ge 1 ] && [ "$CONNECT_RATE" -ge 1 ] || { echo "N, RATE and CONNECT_RATE must be at least 1" >&2; exit 2; }
require_tcpkali "$(load_proto_args)--addr $ADDR --subscribers $N --size $SIZE --rate $RATE --duration $DURATION --warmup 2"

# Why every subscriber must close before the report. tcpkali keeps one latency histogram per
# connection. Its report merges, per worker thread, the histograms of the connections already
# closed (close_connection adds each one to the thread's histogram) and those of only the first
# 10 connections still open (worker_update_shared_histograms in src/tcpkali_engine.c: "process a
# few of them (all would be expensive)"); open connections are kept in connection order. With
# N subscribers all open at the end, the printed percentiles are therefore those of the first
# 10 per thread to connect. A server that sends each message to its subscribers in the same
# order every time serves exactly those first: at N = 5000 tcpkali then printed 0.3 ms for a
# median delivery of about 15 ms (ringfan-load, and a probe subscriber connected last, agreed on
# the latter). So each subscriber gets a --channel-lifetime that ends after the publisher is
# done and before tcpkali's own end: every histogram is merged. (tcpkali then opens new
# connections to keep N; they carry no markers and add nothing.)
ramp=$(( (N + CONNECT_RATE - 1) / CONNECT_RATE ))
# Counted from each connection's own connect: the first subscriber must outlive the ramp, the
# wait below, the publisher's DURATION and the last markers in flight.
lifetime=$(( ramp + DURATION + 4 ))
out="${TMPDIR:-/tmp}/tcpkali-lat.$$"
# -T counts from the end of the ramp: the last subscriber (connected at the end of it) has
# closed by then.
first=()
[ -n "$(subscribe_message "$PROTO")" ] && first=(-1 "$(subscribe_message "$PROTO")")
# --connect-timeout: tcpkali gives up (no report at all) if the ramp does not finish within -T;
# its default of 1 s per connect is too short for thousands of connects on a busy machine.
tcpkali -c "$N" --connect-rate "$CONNECT_RATE" --connect-timeout 5s --channel-lifetime "${lifetime}s" -T "$((lifetime + 2))s" \
    "${ws_args[@]}" -e "${first[@]}" --message-marker --latency-percentiles 50,90,99,99.9 "$sub_addr" >"$out" 2>&1 &
subs=$!
trap 'kill "$subs" 2>/dev/null || true; rm -f "$out"' EXIT
# Wait (bounded) until tcpkali says every subscriber is connected.
deadline=$(( $(date +%s) + ramp + 30 ))
until grep -q "Ramped up" "$out" 2>/dev/null; do
    if ! kill -0 "$subs" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ]; then
        echo "the $N subscribers did not connect within $((ramp + 30)) s:" >&2
        tr '\r' '\n' <"$out" | tail -5 >&2
        exit 1
    fi
    sleep 0.2
done
# The marker is 30 bytes on the wire ("TCPKaliMsgTS-", 16 hex digits, "."); pad the rest of the
# payload. The publisher's own figures (it gets its lines back when the server echoes) go to
# stderr.
pub_first=()
[ -n "$(publisher_hello "$PROTO")" ] && pub_first=(-1 "$(publisher_hello "$PROTO")")
tcpkali -c 1 -T "${DURATION}s" -r "$RATE" "${pub_first[@]}" -em "$(publish_message "$PROTO" '\{message.marker}' "$SIZE" 30)" "$ADDR" >&2
echo "publisher done; the subscribers disconnect within $((lifetime + 2)) s, then tcpkali reports" >&2
wait "$subs" || true
echo "--- subscribers (N=$N, RATE=$RATE/s, SIZE=$SIZE): latency = receive time - send time of each marker, over every marker every subscriber received" >&2
tr '\r' '\n' <"$out" | grep -v '^$'
