#!/usr/bin/env bash
# Connection storm with tcpkali: C concurrent connections, each closed after LIFETIME seconds
# (--channel-lifetime) and replaced at up to CONNECT_RATE per second, each sending one line.
# Meanwhile, and for 10 s after, once a second: the server's side of every connection to its
# port from /proc/net/tcp{,6} (CLOSE_WAIT = the server never closed a socket its peer closed;
# FIN_WAIT2 = it closed and waits for the peer) and its open fds (SERVER_PID, or found with ss).
# After the storm CLOSE_WAIT must be 0 and the fd count back where it started.
#
#   ADDR=127.0.0.1:7000 C=200 LIFETIME=0.05 CONNECT_RATE=2000 DURATION=30 [SERVER_PID=PID] \
#       scripts/tcpkali/storm.sh
set -euo pipefail
cd "$(dirname "$0")"
[ "${1:-}" = --help ] && { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
source ./common.sh
C=${C:-200}
LIFETIME=${LIFETIME:-0.05}
CONNECT_RATE=${CONNECT_RATE:-2000}
pid_opt=""
[ -n "${SERVER_PID:-}" ] && pid_opt=" --server-pid $SERVER_PID"
require_tcpkali "--addr $ADDR --scenario storm --duration $DURATION --storm-concurrency $C$pid_opt"

echo "before: $(server_states "$port")" >&2
tcpkali -c "$C" --connect-rate "$CONNECT_RATE" --channel-lifetime "$LIFETIME" -T "${DURATION}s" \
    -em 'storm hello\n' "$ADDR" &
kali=$!
trap 'kill "$kali" 2>/dev/null || true' EXIT
watch_server "$((DURATION + 10))"
wait "$kali" || true
final=$(server_states "$port")
echo "after: $final" >&2
case "$final" in
    *"close_wait=0 "*) echo "ok: no CLOSE_WAIT left on port $port" ;;
    *) echo "FAIL: CLOSE_WAIT left on port $port ($final)"; exit 1 ;;
esac
