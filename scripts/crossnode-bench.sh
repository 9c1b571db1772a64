#!/usr/bin/env bash
# Cross-node fan-out through the NATS backbone, beside the single-node figure, same load, same
# run: a line publisher on node 1 at a fixed rate, N WebSocket subscribers (ringfan-load
# --proto ws) on node 1 (single node), on node 2 (cross node, every message through NATS), and
# on a node without a backbone; nats-server's /varz before and after the cross-node run shows
# how many times NATS carried each message (in_msgs and out_msgs grow alike: once per
# interested node). Needs nats-server (Debian: apt-get install nats-server).
#
#   scripts/crossnode-bench.sh        (N=1000 RATE=500 SECS=5 in the environment change the load)
set -u
cd "$(dirname "$0")/.."
cargo build --release -q -p ringfan -p ringfan-benches
B=target/release
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
N=${N:-1000}; RATE=${RATE:-500}; SECS=${SECS:-5}
np=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mp=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$NATS -a 127.0.0.1 -p $np -m $mp >/dev/null 2>&1 & NPID=$!
varz() { curl -s "http://127.0.0.1:$mp/varz" | python3 -c 'import json,sys; v=json.load(sys.stdin); print("nats in_msgs=%d out_msgs=%d" % (v["in_msgs"], v["out_msgs"]))'; }
sleep 0.5
start_node() { # OUT
  RINGFAN_LISTEN=127.0.0.1:0 RINGFAN_WS_LISTEN=127.0.0.1:0 RINGFAN_PIN=0 RINGFAN_THREADS=1 \
    RINGFAN_WS_PING_INTERVAL_MS=0 RINGFAN_LOG=warn RINGFAN_NATS_URL=nats://127.0.0.1:$np \
    $B/ringfan > $1 2>&1 &
  echo $!
}
P1=$(start_node /tmp/n1.out); P2=$(start_node /tmp/n2.out)
RINGFAN_LISTEN=127.0.0.1:0 RINGFAN_WS_LISTEN=127.0.0.1:0 RINGFAN_PIN=0 RINGFAN_THREADS=1 \
  RINGFAN_WS_PING_INTERVAL_MS=0 RINGFAN_LOG=warn $B/ringfan > /tmp/n3.out 2>&1 &
P3=$!
sleep 0.7
L1=$(sed -n 's/ringfan listening on //p' /tmp/n1.out); W1=$(sed -n 's/ringfan websocket on //p' /tmp/n1.out)
W2=$(sed -n 's/ringfan websocket on //p' /tmp/n2.out)
L3=$(sed -n 's/ringfan listening on //p' /tmp/n3.out); W3=$(sed -n 's/ringfan websocket on //p' /tmp/n3.out)
run() { # label ws_addr pid rate [line_addr]
  $B/ringfan-load --proto ws --addr ${5:-$L1} --ws-addr $2 --subscribers $N --size 64 --rate $4 \
     --duration $SECS --warmup 1 --drain 2 --server-pid $3 2>/dev/null | tail -1 | \
     tr ' ' '\n' | grep -E '^(delivered_per_s|published|expected|measured_delivered|lost|p50_us|p99_us|server_cpu_s_per_m)=' | tr '\n' ' '
  echo " [$1]"
}
for r in 1 2; do
  run single-node-fixed $W1 $P1 $RATE
  varz
  run cross-node-fixed $W2 $P2 $RATE
  varz
  run no-backbone-fixed $W3 $P3 $RATE $L3
done
kill $P1 $P2 $P3 $NPID; wait 2>/dev/null
