#!/usr/bin/env bash
# Side-by-side fan-out benchmark: ringfan, the tokio baseline (tokio-fanout), Redis pub/sub and
# NATS, each server pinned to core 0 with one thread (RINGFAN_THREADS=1 for ringfan and
# tokio-fanout; Redis is single-threaded; NATS with GOMAXPROCS=1), the load generator
# (ringfan-load) pinned to the other core(s). Prints Markdown tables on stdout, progress on
# stderr.
#
#   scripts/bench.sh [--quick] [--runs R] [--secs D] [--servers "ringfan ringfan-ws ringfan-resp tokio redis nats"]
#                    [--subs "100 1000 10000"] [--sizes "64 1024"] [--tool ringfan-load|tcpkali|both]
#
# Servers: `ringfan` (its line protocol), `ringfan-ws` (ringfan's WebSocket listener,
# RINGFAN_WS_LISTEN: subscribers upgrade on / and receive each line as a frame, the publisher
# sends lines; ringfan-load --proto ws), `ringfan-resp` (ringfan's Redis-protocol listener,
# RINGFAN_RESP_LISTEN, driven by exactly the command lines that drive `redis`), `tokio`,
# `redis`, `nats`. The default is all six. ringfan-ws runs with RINGFAN_WS_PING_INTERVAL_MS=0
# (tcpkali does not answer pings).
#
# --tool tcpkali: the same servers, N and S with tcpkali (https://github.com/satori-com/tcpkali,
# when it is on PATH; otherwise bench.sh says how to get it and uses ringfan-load) as the
# publisher and the subscribers instead of ringfan-load: a second, independent client, whose
# receive path (libev, one 16 KiB read() per readiness) costs more per byte than ringfan-load's
# io_uring one. --tool both: both tables. See "tcpkali tables" below.
#
# --quick: N = 1000, S = 64, 1.5 s per run, one run per configuration (unless --runs), unbatched
# at N = 1000, no metrics on/off, the Topics table at one run each (a few minutes). FIXED_DELIVERIES=D
# in the environment sets the fixed rate (deliveries/s in total) for every configuration.
#
# Every server is started fresh for every run, on free ports of 127.0.0.1, and stopped after it.
#
# Main table, one row per (server, N subscribers, S bytes per message):
#   - delivered msgs/s at max rate: the publisher writes as fast as the server reads; the figure
#     is the subscribers' steady-state receive rate (every message received between the end of
#     the warm-up and the end of the measured window, whenever it was sent). Median of R runs
#     and min–max.
#   - CPU busy at max rate: the server's CPU over the measured window as a share of its core,
#     and the generator's own (ringfan-load, all threads) as a share of the cores it may use.
#     A generator near 100 % with the server below it means the generator is the limit.
#   - TCP memory at max rate: the machine's peak (`TCP: mem` in /proc/net/sockstat, sampled once
#     a second), noting the runs where it reached net.ipv4.tcp_mem's pressure threshold (the
#     kernel then shrinks every socket's buffers, which slows every connection on the machine).
#   - server CPU-seconds per million deliveries at a fixed rate every server sustains (in
#     deliveries/s in total: 500k at 64 B, 200k at 1 KiB, 100k at N >= 10000, where every
#     server spends several µs per unbatched delivery; messages/s published = that / N):
#     utime+stime from /proc/PID/stat, sampled by ringfan-load at the start and the end of the
#     measured window only (connect, warm-up and drain excluded). Equal to CPU-µs per delivery.
#   - p50 / p99 delivery latency at that fixed rate (median over the R runs).
#   - RSS per idle connection: VmRSS of a fresh server with N idle subscribers (subscribed, per
#     protocol, and confirmed) minus VmRSS with none, divided by N (ringfan-load --scenario idle).
#     User-space memory only: the kernel's socket memory is not in VmRSS (for any server).
#   - a "generator ceiling" row per (N, S): ringfan-load against fanout-sink, a trivial server
#     that writes pre-built buffers of valid messages as fast as it can, with the sink's share of
#     its core. With the sink well under 100 %, the figure is the generator's receive ceiling, and
#     a server coming close to it is limited by the load generator, not by itself; with the sink
#     near 100 % (large messages: loopback TCP costs the sending side about as much as the
#     receiving one) it is a lower bound.
# Then: the unbatched cost (N=5000 subscribers, 20 msgs/s in total, so every message is one
# small send per subscriber): server CPU per delivery; latency on every core (each server with
# its default threads on all cores, the generator unpinned beside it, N = 1000 at 50 msgs/s
# and N = 5000 at 20 msgs/s, 64 B); and scripts/metrics-overhead.sh (ringfan with metrics off
# and on).
#
# Topics table (ringfan-resp and redis, pinned as the main table, 64 B, one publisher at a fixed
# rate, TOPICS_DELIVERIES = 200k deliveries/s in total by default): (a) 1 channel x N = 1000
# subscribers (200 msgs/s); (b) K = 10000 channels, 1000 connections each subscribed to T = 100
# of them, so 10 subscribers per channel (20k msgs/s over all channels); (c) (b) plus 100
# patterns that match no channel (ringfan-load --patterns 100, spread over the subscribers: one
# glob match per published message and pattern). Server CPU per delivery, its ratio to the same
# server's (a), p99 latency, lost; and the RSS per idle connection in (b) (each holding 100
# channels).
#
# Ratios table: ringfan-resp / redis and ringfan-ws / ringfan (lines), per (N, S) of the main
# table: delivered msgs/s at max rate, server CPU per delivery at the fixed rate, RSS per idle
# connection (medians).
#
# Redis and NATS come from Debian (apt-get install redis-server nats-server); a server that is
# not installed is skipped with a note saying so. Everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: scripts/bench.sh [--quick] [--runs R] [--secs D] [--servers LIST] [--subs LIST] [--sizes LIST] [--tool ringfan-load|tcpkali|both]" >&2; exit 2; }
quick=0
runs=2
secs=""
servers="ringfan ringfan-ws ringfan-resp tokio redis nats"
runs_given=0
subs_opt=""
sizes_opt=""
tool=ringfan-load
args="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --runs) [ $# -ge 2 ] || usage; runs=$2; runs_given=1; shift ;;
        --secs) [ $# -ge 2 ] || usage; secs=$2; shift ;;
        --servers) [ $# -ge 2 ] || usage; servers=$2; shift ;;
        --subs) [ $# -ge 2 ] || usage; subs_opt=$2; shift ;;
        --sizes) [ $# -ge 2 ] || usage; sizes_opt=$2; shift ;;
        --tool) [ $# -ge 2 ] || usage; tool=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) usage ;;
    esac
    shift
done
case "$runs" in ''|*[!0-9]*) usage ;; esac
case "$tool" in ringfan-load|tcpkali|both) ;; *) echo "--tool must be ringfan-load, tcpkali or both (got '$tool')" >&2; usage ;; esac
if [ "$tool" != ringfan-load ] && ! command -v tcpkali >/dev/null 2>&1; then
    echo "--tool $tool: tcpkali is not on PATH (scripts/tcpkali/README.md says how to build it); running ringfan-load only" >&2
    tool=ringfan-load
fi
[ "$runs" -ge 1 ] || usage
if [ "$quick" = 1 ]; then
    subs_list="1000"; sizes="64"; secs=${secs:-1.5}; warmup=0.5; unbatched_subs=1000; idle_secs=0.5
    [ "$runs_given" = 1 ] || runs=1
else
    subs_list="100 1000 10000"; sizes="64 1024"; secs=${secs:-5}; warmup=1; unbatched_subs=5000; idle_secs=2
fi
subs_list=${subs_opt:-$subs_list}
sizes=${sizes_opt:-$sizes}
# Fixed-rate part: deliveries per second in total (messages/s published = this / N), low enough
# that every server keeps up (on a 2-core VM each server's core is 70-100 % busy at these
# rates; at N = 10000 a message is 10000 separate sends for every server, several µs each).
fixed_deliveries() { # N S
    if [ -n "${FIXED_DELIVERIES:-}" ]; then echo "$FIXED_DELIVERIES"
    elif [ "$1" -ge 10000 ]; then echo 100000
    elif [ "$2" -le 64 ]; then echo 500000
    else echo 200000; fi
}
unbatched_rate=20
# Every-core part: N:msgs/s pairs (64 B): 50k and 100k deliveries/s.
if [ "$quick" = 1 ]; then allcore_cfgs="1000:50"; else allcore_cfgs="1000:50 5000:20"; fi

ncpu=$(nproc)
[ "$ncpu" -ge 2 ] || { echo "bench.sh needs at least 2 cores (server and load apart)" >&2; exit 1; }
load_cpus="1-$((ncpu - 1))"

echo "building (cargo build --release) ..." >&2
cargo build --release -q -p ringfan -p ringfan-benches
ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d)
# Run copies, so that a rebuild in this tree during the run cannot swap binaries under it.
mkdir "$tmp/bin"
cp target/release/ringfan target/release/tokio-fanout target/release/fanout-sink target/release/ringfan-load "$tmp/bin/"
bin=$tmp/bin
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
# wait_printed TEXT: waits (bounded) for the server's stdout line "... TEXT HOST:PORT" and
# prints PORT (ringfan: "listening on", "resp on", "websocket on").
wait_printed() {
    local p
    for _ in $(seq 200); do
        p=$(sed -n "s/.* $1 .*:\([0-9][0-9]*\)\$/\1/p" "$tmp/out" | head -1)
        [ -n "$p" ] && { echo "$p"; return 0; }
        kill -0 "$server_pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
# Port printed on stdout as "... listening on 127.0.0.1:PORT" (ringfan, tokio-fanout, fanout-sink).
wait_listening() { port=$(wait_printed "listening on"); }

available() {
    case "$1" in
        redis) command -v redis-server >/dev/null ;;
        nats) command -v nats-server >/dev/null ;;
        *) true ;;
    esac
}
install_hint() {
    case "$1" in
        redis) echo "redis-server not installed: apt-get install -y redis-server" ;;
        nats) echo "nats-server not installed: apt-get install -y nats-server" ;;
    esac
}

# mode=pinned: each server on core 0 with one thread, ringfan-load on the other cores.
# mode=all: each server with its default threads on every core (ringfan and tokio-fanout: one
# worker per core; NATS: GOMAXPROCS = cores; Redis: single-threaded), ringfan-load unpinned.
mode=pinned
# Run in the background (`... &`): exec, so that $! is the server's own pid.
on_server_cores() { if [ "$mode" = all ]; then exec "$@"; else exec taskset -c 0 "$@"; fi; }
server_threads() { if [ "$mode" = all ]; then echo "$ncpu"; else echo 1; fi; }
# start SERVER [SINK_SUBSCRIBERS SINK_SIZE]: starts it (per $mode) in the background; sets
# server_pid, port (where publishers write, and subscribers connect but with ws), ws_port (ws:
# where subscribers upgrade) and proto (ringfan-load's --proto).
start() {
    : >"$tmp/out"; : >"$tmp/err"
    local threads ws_listen="" resp_listen=""; threads=$(server_threads)
    ws_port=""
    case "$1" in
        ringfan|ringfan-ws|ringfan-resp) proto=ringfan
            # An empty RINGFAN_WS_LISTEN / RINGFAN_RESP_LISTEN leaves that listener off.
            # Pings off: tcpkali's WebSocket subscribers do not answer them, and would be reset
            # in runs past the default interval (30 s); ringfan-load answers them either way.
            [ "$1" = ringfan-ws ] && { proto=ws; ws_listen=127.0.0.1:0; }
            [ "$1" = ringfan-resp ] && { proto=redis; resp_listen=127.0.0.1:0; }
            # Pinned mode pins with taskset; in mode=all ringfan pins its workers itself.
            RINGFAN_LISTEN=127.0.0.1:0 RINGFAN_WS_LISTEN=$ws_listen RINGFAN_WS_PING_INTERVAL_MS=0 RINGFAN_RESP_LISTEN=$resp_listen \
                RINGFAN_THREADS=$threads RINGFAN_PIN=$([ "$mode" = all ] && echo 1 || echo 0) \
                RINGFAN_LOG=warn on_server_cores "$bin/ringfan" >"$tmp/out" 2>"$tmp/err" &
            server_pid=$!
            wait_listening &&
                case "$1" in
                    ringfan-ws) ws_port=$(wait_printed "websocket on") ;;
                    ringfan-resp) port=$(wait_printed "resp on") ;;
                esac ;;
        tokio) proto=ringfan
            RINGFAN_LISTEN=127.0.0.1:0 RINGFAN_THREADS=$threads \
                on_server_cores "$bin/tokio-fanout" >"$tmp/out" 2>"$tmp/err" &
            server_pid=$!; wait_listening ;;
        sink) proto=ringfan
            on_server_cores "$bin/fanout-sink" --listen 127.0.0.1:0 --subscribers "$2" \
                --size "$3" --max-seconds 900 >"$tmp/out" 2>"$tmp/err" &
            server_pid=$!; wait_listening ;;
        redis) proto=redis; port=$(free_port)
            on_server_cores redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
                --protected-mode no --maxclients 20000 --logfile "$tmp/err" >"$tmp/out" 2>&1 &
            server_pid=$!; wait_port "$port" ;;
        nats) proto=nats; port=$(free_port)
            GOMAXPROCS=$threads on_server_cores nats-server -a 127.0.0.1 -p "$port" >"$tmp/out" 2>"$tmp/err" &
            server_pid=$!; wait_port "$port" ;;
    esac || { echo "$1 did not start: $(tail -3 "$tmp/err")" >&2; stop; return 1; }
}
stop() {
    [ -n "$server_pid" ] || return 0
    kill -TERM "$server_pid" 2>/dev/null || true
    # Bounded: 10 s for a graceful exit, then SIGKILL.
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }
load() { # runs ringfan-load (on the load cores, per $mode) against the current server; prints its summary line
    local pin=(taskset -c "$load_cpus")
    [ "$mode" = all ] && pin=()
    local ws=()
    [ "$proto" = ws ] && ws=(--ws-addr "127.0.0.1:$ws_port")
    "${pin[@]}" "$bin/ringfan-load" --proto "$proto" --addr "127.0.0.1:$port" "${ws[@]}" \
        --server-pid "$server_pid" --connect-rate 10000 "$@" 2>"$tmp/load.err" || true
}
# tcp_mem LINE: "PEAK_PAGES OVER" from a summary line: the machine's TCP memory peak during the
# run and 1 if it reached net.ipv4.tcp_mem's pressure threshold (the kernel then shrinks
# every socket's buffers), else 0.
tcp_mem() {
    local peak lim
    peak=$(field tcp_mem_peak_pages "$1"); lim=$(field tcp_mem_pressure_pages "$1")
    echo "${peak:-na} $([ -n "$peak" ] && [ -n "$lim" ] && [ "$peak" -ge "$lim" ] && echo 1 || echo 0)"
}
busy() { # CPU_S CORES -> percent of CORES busy over the measured window ("" if unknown)
    awk -v c="$1" -v n="${2:-1}" -v d="$secs" 'BEGIN { if (c != "" && c != "na" && n > 0) printf "%.0f", 100 * c / (d * n) }'
}
fmt_mem() { # PAGES OVER_COUNT RUNS -> "123 MiB" or "1,540 MiB (over the pressure threshold in 2 of 2 runs)"
    { [ -z "$1" ] || [ "$1" = na ]; } && { echo "n/a"; return; }
    local m; m=$(printf "%'.0f MiB" "$(awk -v p="$1" 'BEGIN { print p * 4096 / 1048576 }')")
    [ "$2" -gt 0 ] && m="$m (pressure in $2 of $3 runs)"
    echo "$m"
}
# stats V...: "median min max" (median of an even count: mean of the middle two) of the numeric values given (non-numbers ignored); "na na na" if none.
stats() {
    printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g |
        awk '{a[NR]=$1} END { if (NR == 0) { print "na na na"; exit }
                              m = NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2
                              print m, a[1], a[NR] }'
}
# fixed_rate_runs LABEL N S MSGS_PER_S [ARGS...]: $runs runs of $server (fresh each time) at a
# fixed rate, ARGS added to ringfan-load's; fills the arrays cpu (CPU-s per M deliveries), p50,
# p99 (µs) and fixed_lost.
fixed_rate_runs() {
    local r line
    cpu=(); p50=(); p99=(); fixed_lost=()
    for r in $(seq "$runs"); do
        log "$1, run $r/$runs"
        start "$server" || continue
        line=$(load --subscribers "$2" --size "$3" --rate "$4" --duration "$secs" --warmup "$warmup" --drain 2 "${@:5}")
        stop
        cpu+=("$(field server_cpu_s_per_m "$line")")
        p50+=("$(field p50_us "$line")"); p99+=("$(field p99_us "$line")")
        fixed_lost+=("$(field lost "$line")")
        log "  -> CPU $(field server_cpu_s_per_m "$line") s/M, p50 $(field p50_us "$line") µs, p99 $(field p99_us "$line") µs, lost $(field lost "$line")"
    done
}
na_pct() { [ -z "$1" ] || [ "$1" = na ] && echo "n/a" || echo "$1 %"; }
fmt_int() { [ "$1" = na ] && echo "n/a" || printf "%'.0f" "$1"; }
fmt_us() { # microseconds -> human
    [ "$1" = na ] && { echo "n/a"; return; }
    awk -v v="$1" 'BEGIN { if (v >= 1000000) printf "%.2f s", v/1e6; else if (v >= 1000) printf "%.1f ms", v/1e3; else printf "%.0f µs", v }'
}
fmt_cpu() { [ "$1" = na ] && echo "n/a" || printf "%.3f" "$1"; }
available_servers=""
for s in $servers; do
    if available "$s"; then available_servers="$available_servers $s"; else log "$(install_hint "$s") — skipped"; fi
done

t_start=$(date +%s)
results="$tmp/results"
: >"$results"

# ---- tcpkali tables -------------------------------------------------------------------------
# The same servers, N and S with tcpkali on the load cores: one tcpkali process for the N
# subscribers (-w = the load cores), one for the publisher.
#   - delivered msgs/s: the publisher is asked for more than any server here delivers (20 M
#     deliveries/s at 64 B, 4 M at 1 KiB, or TCPKALI_OFFERED_SMALL / TCPKALI_OFFERED_LARGE from
#     the environment; msgs/s published = that / N); the figure is what the
#     subscribers' tcpkali read() in the measured window (its rchar in /proc/PID/io) divided by
#     the bytes of one delivered message, so a backlog delivered later does not count. Beside
#     it, what the publisher really wrote in the window (its wchar) times N: a server that
#     pushes back on its publisher (TCP flow control) is offered less than was asked.
#   - CPU busy: the server's share of its core and the subscribers' tcpkali's share of the load
#     cores over the window (the publisher's tcpkali shares those cores; it is not counted).
#   - p50 / p99 latency at the fixed rate of the main table, and N = 5000 at 20 msgs/s:
#     scripts/tcpkali/fanout-latency.sh (tcpkali's --message-marker; every subscriber's
#     histogram counted, see that script).
#   - ringfan-resp is driven as redis; ringfan-ws with tcpkali --websocket subscribers on its
#     WebSocket listener and a line publisher (PROTO=ws in scripts/tcpkali/), each delivered
#     message counted as its frame (S-1 payload bytes plus a 2-byte header, 4 from 127 bytes).
source scripts/tcpkali/common.sh
# S -> deliveries/s asked of the publisher; TCPKALI_OFFERED_SMALL (S <= 64) and
# TCPKALI_OFFERED_LARGE in the environment override the defaults.
tk_offered() { if [ "$1" -le 64 ]; then echo "${TCPKALI_OFFERED_SMALL:-20000000}"; else echo "${TCPKALI_OFFERED_LARGE:-4000000}"; fi; }
tk_proto() { case "$1" in redis|nats) echo "$1" ;; ringfan-resp) echo redis ;; ringfan-ws) echo ws ;; *) echo line ;; esac; }
tk_workers() { local n; n=$(taskset -c "$load_cpus" nproc); echo "$n"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
rchar() { awk '/^rchar/ { print $2 }' "/proc/$1/io" 2>/dev/null || echo 0; }
wchar() { awk '/^wchar/ { print $2 }' "/proc/$1/io" 2>/dev/null || echo 0; }
syscr() { awk '/^syscr/ { print $2 }' "/proc/$1/io" 2>/dev/null || echo 0; }
# Context switches of all threads of PID: each one a wake-up (or preemption) of the receiver.
ctx_switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }'; }
# "bytes_sent segs_out" summed over the server's sockets on PORT (ss -ti, kernel counters).
tcp_sent() { ss -Htin "sport = :$1" 2>/dev/null | awk '{ for (i = 1; i <= NF; i++) { if ($i ~ /^bytes_sent:/) b += substr($i, 12); if ($i ~ /^segs_out:/) g += substr($i, 10) } } END { printf "%.0f %.0f\n", b, g }'; }
# Bytes the publisher writes per message of PROTO and SIZE (publish_message with an empty prefix).
tk_pub_bytes() { # PROTO SIZE
    case "$1" in
        line|ws) echo "$2" ;;
        redis) echo $(( 16 + $2 )) ;;
        nats) echo $(( 12 + ${#2} + $2 + 2 )) ;;
    esac
}
# tk_ramped FILE PID SECONDS: waits (bounded) for tcpkali's "Ramped up" line in FILE.
tk_ramped() {
    local i
    for i in $(seq $(( $3 * 10 ))); do
        grep -q "Ramped up" "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
# tk_max_rate N S: one max-rate run of tcpkali against the current server; prints
# "delivered_msgs_per_s server_busy_pct receiver_busy_pct offered_deliveries_per_s
#  bytes_per_segment wakeups_per_mb bytes_per_read": the offered rate from what the publisher's
# tcpkali really wrote in the window (its wchar) times N; then what the server's sends cost the
# receiver: bytes per TCP segment the server sent (ss -ti, all its sockets), the subscribers'
# tcpkali's context switches per MB it read, and bytes per read() (rchar / syscr).
tk_max_rate() {
    local n=$1 size=$2 proto first=() pub_first=() subs pub t0 t1 r0 r1 s0 s1 k0 k1 w0 w1 rate tck
    local c0 c1 x0 x1 b0 b1 g0 g1 sub_port ws=()
    proto=$(tk_proto "$server")
    [ -n "$(subscribe_message "$proto")" ] && first=(-1 "$(subscribe_message "$proto")")
    [ -n "$(publisher_hello "$proto")" ] && pub_first=(-1 "$(publisher_hello "$proto")")
    rate=$(( $(tk_offered "$size") / n ))
    # ws: the subscribers upgrade on the WebSocket listener (path /, the lines topic).
    sub_port=$port
    [ "$proto" = ws ] && { sub_port=$ws_port; ws=(--websocket); }
    taskset -c "$load_cpus" tcpkali -w "$(tk_workers)" -c "$n" --connect-rate 10000 -T 900s "${ws[@]}" -e "${first[@]}" \
        "127.0.0.1:$sub_port" >"$tmp/tk-subs" 2>&1 &
    subs=$!
    if ! tk_ramped "$tmp/tk-subs" "$subs" 60; then
        log "  tcpkali subscribers did not connect: $(tr '\r' '\n' <"$tmp/tk-subs" | tail -2)"
        kill "$subs" 2>/dev/null || true; wait "$subs" 2>/dev/null || true; echo "na na na na na na na"; return
    fi
    taskset -c "$load_cpus" tcpkali -c 1 -T 900s -r "$rate" "${pub_first[@]}" \
        -em "$(publish_message "$proto" "" "$size" 0)" "127.0.0.1:$port" >"$tmp/tk-pub" 2>&1 &
    pub=$!
    sleep "$warmup"
    t0=$(date +%s.%N); r0=$(rchar "$subs"); s0=$(cpu_ticks "$server_pid"); k0=$(cpu_ticks "$subs"); w0=$(wchar "$pub")
    c0=$(syscr "$subs"); x0=$(ctx_switches "$subs"); read -r b0 g0 < <(tcp_sent "$sub_port")
    sleep "$secs"
    t1=$(date +%s.%N); r1=$(rchar "$subs"); s1=$(cpu_ticks "$server_pid"); k1=$(cpu_ticks "$subs"); w1=$(wchar "$pub")
    c1=$(syscr "$subs"); x1=$(ctx_switches "$subs"); read -r b1 g1 < <(tcp_sent "$sub_port")
    kill "$pub" "$subs" 2>/dev/null || true; wait "$pub" "$subs" 2>/dev/null || true
    tck=$(getconf CLK_TCK)
    awk -v r=$((r1 - r0)) -v b="$(delivered_bytes "$proto" "$size")" -v s=$((s1 - s0)) -v k=$((k1 - k0)) \
        -v d="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" -v tck="$tck" -v w="$(tk_workers)" \
        -v p=$((w1 - w0)) -v pb="$(tk_pub_bytes "$proto" "$size")" -v n="$n" \
        -v sb=$((b1 - b0)) -v sg=$((g1 - g0)) -v x=$((x1 - x0)) -v c=$((c1 - c0)) \
        'BEGIN { printf "%.0f %.0f %.0f %.0f %.0f %.2f %.0f\n", r / b / d, 100 * s / tck / d, 100 * k / tck / d / w,
                 p / pb / d * n, (sg > 0 ? sb / sg : 0), (r > 0 ? x / (r / 1e6) : 0), (c > 0 ? r / c : 0) }'
}
# tk_latency N S MSGS_PER_S: "p50_us p99_us" from scripts/tcpkali/fanout-latency.sh (na if none).
tk_latency() {
    local line
    line=$(PROTO=$(tk_proto "$server") ADDR="127.0.0.1:$port" WS_ADDR="127.0.0.1:${ws_port:-0}" N=$1 SIZE=$2 RATE=$3 DURATION=${secs%.*} \
        taskset -c "$load_cpus" scripts/tcpkali/fanout-latency.sh 2>/dev/null |
        grep -a "latency at percentiles" | tail -1) || true # no figure (e.g. the ramp failed): na
    # "Message latency at percentiles: 0.3/0.4/0.8/3.1 ms (50/90/99/99.9%)"
    sed -n 's|.*percentiles: \([0-9.]*\)/[0-9.]*/\([0-9.]*\)/.*|\1 \2|p' <<<"$line" |
        awk '{ printf "%.0f %.0f\n", $1 * 1000, $2 * 1000 } END { if (NR == 0) print "na na" }'
}
tcpkali_tables() {
    local size subs server r vals sb kb p50 p99 rate res off offered seg wake rd segs wakes rds
    : >"$tmp/tk-results"
    for size in $sizes; do
        for subs in $subs_list; do
            rate=$(awk -v d="$(fixed_deliveries "$subs" "$size")" -v n="$subs" 'BEGIN { printf "%d", d / n }')
            for server in $available_servers; do
                vals=(); sb=(); kb=(); p50=(); p99=(); offered=(); segs=(); wakes=(); rds=()
                for r in $(seq "$runs"); do
                    log "tcpkali: $server N=$subs S=$size max rate, run $r/$runs"
                    start "$server" || continue
                    read -r res s k off seg wake rd < <(tk_max_rate "$subs" "$size")
                    stop
                    vals+=("$res"); sb+=("$s"); kb+=("$k"); offered+=("$off"); segs+=("$seg"); wakes+=("$wake"); rds+=("$rd")
                    log "  -> $res msgs/s of $off offered, server $s %, tcpkali receiver $k %, $seg B per segment, $wake wake-ups per MB, $rd B per read"
                    log "tcpkali: $server N=$subs S=$size latency at $rate msgs/s, run $r/$runs"
                    start "$server" || continue
                    read -r a b < <(tk_latency "$subs" "$size" "$rate")
                    stop
                    p50+=("$a"); p99+=("$b")
                    log "  -> p50 $a µs, p99 $b µs"
                done
                read -r mm ml mh < <(stats "${vals[@]}")
                read -r sbm _ _ < <(stats "${sb[@]}")
                read -r kbm _ _ < <(stats "${kb[@]}")
                read -r p50m _ _ < <(stats "${p50[@]}")
                read -r p99m _ _ < <(stats "${p99[@]}")
                read -r om _ _ < <(stats "${offered[@]}")
                read -r segm _ _ < <(stats "${segs[@]}")
                read -r wakem _ _ < <(stats "${wakes[@]}")
                read -r rdm _ _ < <(stats "${rds[@]}")
                echo "$server|$subs|$size|$mm|$ml|$mh|$sbm|$kbm|$rate|$p50m|$p99m|$om|$segm|$wakem|$rdm" >>"$tmp/tk-results"
            done
        done
    done
    for server in $available_servers; do
        p50=(); p99=()
        for r in $(seq "$runs"); do
            log "tcpkali: unbatched latency, $server N=$unbatched_subs $unbatched_rate msgs/s, run $r/$runs"
            start "$server" || continue
            read -r a b < <(tk_latency "$unbatched_subs" 64 "$unbatched_rate")
            stop
            p50+=("$a"); p99+=("$b")
            log "  -> p50 $a µs, p99 $b µs"
        done
        read -r p50m _ _ < <(stats "${p50[@]}")
        read -r p99m _ _ < <(stats "${p99[@]}")
        echo "unbatched|$server|$p50m|$p99m" >>"$tmp/tk-results"
    done
    echo "Reproduce: \`scripts/bench.sh${args:+ $args}\` (tcpkali $(tcpkali --version 2>&1 | head -1 | grep -o '[0-9][0-9.]*' | head -1))"
    echo
    echo "tcpkali as publisher and subscribers ($(date -u +%Y-%m-%d), $ncpu cores, kernel $(uname -r); each server on core 0 with one thread, tcpkali on cores $load_cpus; ${secs} s measured after a ${warmup} s warm-up, $runs runs per configuration, a fresh server per run):"
    echo
    echo "| server | N | S | delivered msgs/s, median (min–max) | offered deliveries/s (asked; written by the publisher, median) | CPU busy: server / tcpkali subscribers | bytes per segment sent / subscriber wake-ups per MB / bytes per read() | p50 / p99 latency at fixed rate (msgs/s published) |"
    echo "|---|---|---|---|---|---|---|---|"
    while IFS='|' read -r server subs size mm ml mh sbm kbm rate p50m p99m om segm wakem rdm; do
        [ "$server" = unbatched ] && continue
        printf '| %s | %s | %s | %s (%s–%s) | %s; %s | %s / %s | %s / %s / %s | %s / %s (%s) |\n' "$server" "$subs" "$size" \
            "$(fmt_int "$mm")" "$(fmt_int "$ml")" "$(fmt_int "$mh")" "$(fmt_int "$(tk_offered "$size")")" "$(fmt_int "$om")" \
            "$(na_pct "$sbm")" "$(na_pct "$kbm")" "$(fmt_int "$segm")" "$wakem" "$(fmt_int "$rdm")" \
            "$(fmt_us "$p50m")" "$(fmt_us "$p99m")" "$(fmt_int "$rate")"
    done <"$tmp/tk-results"
    echo
    echo "ringfan-ws: tcpkali --websocket subscribers on ringfan's WebSocket listener (path /), a line publisher; a delivered message is its frame (S-1 payload bytes and a 2-byte header, 4 from 126). ringfan-resp: ringfan's Redis-protocol listener, driven exactly as redis."
    echo
    echo "Unbatched with tcpkali: N = $unbatched_subs subscribers, $unbatched_rate msgs/s, 64 B:"
    echo
    echo "| server | p50 / p99 latency (tcpkali --message-marker, every subscriber) |"
    echo "|---|---|"
    grep '^unbatched|' "$tmp/tk-results" | while IFS='|' read -r _ server p50m p99m; do
        printf '| %s | %s / %s |\n' "$server" "$(fmt_us "$p50m")" "$(fmt_us "$p99m")"
    done
}
if [ "$tool" = tcpkali ]; then
    tcpkali_tables
    exit 0
fi

# ---- idle RSS: per (server, N), R runs -------------------------------------------------------
declare -A rss
for subs in $subs_list; do
    for server in $available_servers; do
        vals=()
        for r in $(seq "$runs"); do
            log "idle RSS: $server N=$subs run $r/$runs"
            start "$server" || continue
            sleep 0.3
            line=$(load --scenario idle --subscribers "$subs" --duration "$idle_secs")
            stop
            vals+=("$(field rss_per_conn_bytes "$line")")
        done
        read -r med lo hi < <(stats "${vals[@]}")
        rss[$server,$subs]="$med $lo $hi"
    done
done

# ---- main matrix ----------------------------------------------------------------------------
for size in $sizes; do
    for subs in $subs_list; do
        rate=$(awk -v d="$(fixed_deliveries "$subs" "$size")" -v n="$subs" 'BEGIN { printf "%g", d / n }')
        # generator ceiling
        vals=(); sink_cpu=(); tmem=(); over=0
        for r in $(seq "$runs"); do
            log "generator ceiling: N=$subs S=$size run $r/$runs"
            start sink "$subs" "$size" || continue
            line=$(load --subscribers "$subs" --size "$size" --rate 1 --duration "$secs" --warmup "$warmup" --drain 0)
            stop
            vals+=("$(field delivered_msgs_per_s "$line")")
            read -r tp to < <(tcp_mem "$line"); tmem+=("$tp"); over=$((over + to))
            # The sink's share of its core in the window: well under 100 % = the generator is the limit.
            sink_cpu+=("$(awk -v c="$(field server_cpu_s "$line")" -v d="$secs" 'BEGIN { if (c != "" && c != "na") printf "%.0f", 100 * c / d }')")
            log "  -> $(field delivered_msgs_per_s "$line") msgs/s, sink CPU ${sink_cpu[-1]} %"
        done
        read -r med lo hi < <(stats "${vals[@]}")
        read -r sc _ _ < <(stats "${sink_cpu[@]}")
        read -r tm _ _ < <(stats "${tmem[@]}")
        echo "ceiling|$subs|$size|$med|$lo|$hi|$sc||||||||$tm|$over" >>"$results"
        for server in $available_servers; do
            max=(); disc=(); tmem=(); over=0; sbusy=(); gbusy=()
            for r in $(seq "$runs"); do
                log "$server N=$subs S=$size max rate, run $r/$runs"
                start "$server" || continue
                line=$(load --subscribers "$subs" --size "$size" --duration "$secs" --warmup "$warmup" --drain 0)
                stop
                max+=("$(field delivered_msgs_per_s "$line")")
                disc+=("$(field disconnected "$line")")
                read -r tp to < <(tcp_mem "$line"); tmem+=("$tp"); over=$((over + to))
                sbusy+=("$(busy "$(field server_cpu_s "$line")" 1)")
                gbusy+=("$(busy "$(field load_cpu_s "$line")" "$(field load_cores "$line")")")
                log "  -> $(field delivered_msgs_per_s "$line") msgs/s, disconnected $(field disconnected "$line"), TCP memory peak $tp pages"
            done
            fixed_rate_runs "$server N=$subs S=$size fixed rate $rate msgs/s" "$subs" "$size" "$rate"
            notes=""
            if printf '%s\n' "${disc[@]}" | grep -qv '^0$'; then
                notes=" (subscribers disconnected by the server, per run: $(printf '%s\n' "${disc[@]}" | paste -sd, - | sed 's/,/, /g'))"
            fi
            read -r mm ml mh < <(stats "${max[@]}")
            read -r cm cl ch < <(stats "${cpu[@]}")
            read -r p50m _ _ < <(stats "${p50[@]}")
            read -r p99m _ _ < <(stats "${p99[@]}")
            read -r _ _ lostmax < <(stats "${fixed_lost[@]}")
            read -r tm _ _ < <(stats "${tmem[@]}")
            read -r sb _ _ < <(stats "${sbusy[@]}")
            read -r gb _ _ < <(stats "${gbusy[@]}")
            echo "$server|$subs|$size|$mm|$ml|$mh|$cm|$cl|$ch|$p50m|$p99m|$rate|$lostmax|${notes:-}|$tm|$over|$sb|$gb" >>"$results"
        done
    done
done

# ---- topics: ringfan-resp and redis, pinned, fixed rate, 64 B ----------------------------------
topics_servers=""
for s in $available_servers; do
    case "$s" in ringfan-resp|redis) topics_servers="$topics_servers $s" ;; esac
done
topics_deliveries=${TOPICS_DELIVERIES:-200000}
topics_n=1000
# LABEL:K:T:P (channels, channels per connection, patterns); (b) is also measured idle.
topics_cfgs="a:1:1:0 b:10000:100:0 c:10000:100:100"
declare -A topics
for server in $topics_servers; do
    for c in $topics_cfgs; do
        IFS=: read -r lab k t p <<<"$c"
        # Each message reaches N*T/K subscribers: the same deliveries/s in every configuration.
        rate=$(( topics_deliveries * k / (topics_n * t) ))
        fixed_rate_runs "topics ($lab): $server K=$k T=$t P=$p $rate msgs/s" "$topics_n" 64 "$rate" \
            --topics "$k" --topic-subs "$t" --patterns "$p"
        read -r cm cl ch < <(stats "${cpu[@]}")
        read -r pm _ _ < <(stats "${p99[@]}")
        read -r _ _ lostmax < <(stats "${fixed_lost[@]}")
        topics[$server,$lab]="$cm $cl $ch $pm $lostmax $rate"
    done
    vals=()
    for r in $(seq "$runs"); do
        log "topics idle RSS (b): $server N=$topics_n K=10000 T=100 run $r/$runs"
        start "$server" || continue
        sleep 0.3
        line=$(load --scenario idle --subscribers "$topics_n" --topics 10000 --topic-subs 100 --duration "$idle_secs")
        stop
        vals+=("$(field rss_per_conn_bytes "$line")")
    done
    read -r med lo hi < <(stats "${vals[@]}")
    topics[$server,rss]="$med $lo $hi"
done

# ---- unbatched: N=unbatched_subs at unbatched_rate msgs/s, S=64 -------------------------------
declare -A unb
for server in $available_servers; do
    fixed_rate_runs "unbatched: $server N=$unbatched_subs ${unbatched_rate} msgs/s" "$unbatched_subs" 64 "$unbatched_rate"
    read -r cm cl ch < <(stats "${cpu[@]}")
    read -r pm _ _ < <(stats "${p99[@]}")
    unb[$server]="$cm $cl $ch $pm"
done

# ---- every core: latency at moderate fixed rates, each server on every core -----------------
declare -A allc
mode=all
for c in $allcore_cfgs; do
    n=${c%%:*}; mps=${c##*:}
    for server in $available_servers; do
        fixed_rate_runs "every core: $server N=$n $mps msgs/s" "$n" 64 "$mps"
        read -r cm cl ch < <(stats "${cpu[@]}")
        read -r p50m _ _ < <(stats "${p50[@]}")
        read -r p99m p99l p99h < <(stats "${p99[@]}")
        read -r _ _ lostmax < <(stats "${fixed_lost[@]}")
        allc[$server,$n]="$cm $cl $ch $p50m $p99m $p99l $p99h $lostmax"
    done
done
mode=pinned

# ---- metrics on/off (ringfan) ---------------------------------------------------------------
metrics_out=""
if [ "$quick" = 1 ]; then
    metrics_out="(not in --quick: scripts/metrics-overhead.sh)"
elif [[ " $available_servers " == *" ringfan "* ]]; then
    log "metrics overhead (scripts/metrics-overhead.sh 1000 2000 $secs $runs)"
    metrics_out=$(RINGFAN_BENCH_BIN=$bin scripts/metrics-overhead.sh 1000 2000 "$secs" "$runs" 2>/dev/null) || metrics_out="metrics-overhead.sh failed"
fi

# ---- output ---------------------------------------------------------------------------------
elapsed=$(( $(date +%s) - t_start ))
echo "Reproduce: \`scripts/bench.sh${args:+ $args}\`"
echo
echo "($(date -u +%Y-%m-%d), $ncpu cores, kernel $(uname -r); each server on core 0 with one thread, ringfan-load on cores $load_cpus; ${secs} s measured after a ${warmup} s warm-up per run, $runs runs per configuration, a fresh server per run; took ${elapsed} s)"
echo
echo "| server | N | S | delivered msgs/s at max rate, median (min–max) | CPU busy at max rate: server / generator | TCP memory at max rate (machine-wide peak, median) | fixed rate: msgs/s published (deliveries/s) | server CPU-s per M deliveries at fixed rate, median (min–max) | p50 / p99 latency at fixed rate | RSS per idle connection, median (min–max) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
while IFS='|' read -r server subs size a b c d e f g h rate lostmax notes tm over sb gb; do
    if [ "$server" = ceiling ]; then
        printf '| *generator ceiling* (fanout-sink; its CPU: %s %%) | %s | %s | %s (%s–%s) | | %s | | | | |\n' "$d" "$subs" "$size" \
            "$(fmt_int "$a")" "$(fmt_int "$b")" "$(fmt_int "$c")" "$(fmt_mem "$tm" "$over" "$runs")"
        continue
    fi
    read -r rm rl rh <<<"${rss[$server,$subs]:-na na na}"
    rss_cell="n/a"
    [ "$rm" != na ] && rss_cell="$(fmt_int "$rm") B ($(fmt_int "$rl")–$(fmt_int "$rh"))"
    lat="$(fmt_us "$g") / $(fmt_us "$h")"
    [ "$lostmax" != na ] && [ "$lostmax" != 0 ] && lat="$lat (lost up to $(fmt_int "$lostmax"))"
    printf '| %s | %s | %s | %s (%s–%s)%s | %s / %s | %s | %s (%s) | %s (%s–%s) | %s | %s |\n' "$server" "$subs" "$size" \
        "$(fmt_int "$a")" "$(fmt_int "$b")" "$(fmt_int "$c")" "$notes" "$(na_pct "$sb")" "$(na_pct "$gb")" "$(fmt_mem "$tm" "$over" "$runs")" \
        "$(fmt_int "$rate")" "$(fmt_int "$(fixed_deliveries "$subs" "$size")")" \
        "$(fmt_cpu "$d")" "$(fmt_cpu "$e")" "$(fmt_cpu "$f")" "$lat" "$rss_cell"
done <"$results"
echo
echo "Max rate: one publisher writing as fast as the server reads; delivered = messages received in the measured window, whenever sent. Fixed rate: one publisher paced in 1 ms ticks. ringfan-ws: the subscribers over WebSocket (a frame of S-1 payload bytes per message: the line without its newline), the publisher over lines; ringfan-resp: ringfan's Redis-protocol listener, driven exactly as redis. CPU (utime+stime of the server process) is sampled over the measured window only; CPU-s per M deliveries = CPU-µs per delivery. Subscribers disconnected at max rate: the server evicted subscribers that fell behind (the generator could not keep up)."
# ratio X Y: X / Y to two decimals, n/a unless both are positive numbers.
# (A median of two runs may come as 1.70236e+07: awk's own number format.)
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { if (x ~ /^[0-9.]+(e[+-][0-9]+)?$/ && y ~ /^[0-9.]+(e[+-][0-9]+)?$/ && y + 0 > 0) printf "%.2f", x / y; else print "n/a" }'; }
ratio_rows=""
for pair in ringfan-resp:redis ringfan-ws:ringfan; do
    a=${pair%%:*}; b=${pair##*:}
    [[ " $available_servers " == *" $a "* && " $available_servers " == *" $b "* ]] || continue
    while IFS='|' read -r server subs size mm _ _ cm _; do
        [ "$server" = "$a" ] || continue
        other=$(grep "^$b|$subs|$size|" "$results" | head -1 || true)
        IFS='|' read -r _ _ _ bmm _ _ bcm _ <<<"$other"
        read -r ra _ <<<"${rss[$a,$subs]:-na}"
        read -r rb _ <<<"${rss[$b,$subs]:-na}"
        ratio_rows+="| $a / $b | $subs | $size | $(ratio "$mm" "${bmm:-}") | $(ratio "$cm" "${bcm:-}") | $(ratio "$ra" "$rb") |"$'\n'
    done <"$results"
done
if [ -n "$ratio_rows" ]; then
    echo
    echo "Ratios (medians of the main table; above 1: the first server delivers more, spends more CPU per delivery, holds more memory per connection):"
    echo
    echo "| servers | N | S | delivered msgs/s at max rate | server CPU per delivery at fixed rate | RSS per idle connection |"
    echo "|---|---|---|---|---|---|"
    printf '%s' "$ratio_rows"
fi
echo
echo "Unbatched: N = $unbatched_subs subscribers, $unbatched_rate msgs/s in total, 64 B (every message is one small send per subscriber):"
echo
echo "| server | server CPU-s per M deliveries (= CPU-µs per delivery), median (min–max) | p99 latency |"
echo "|---|---|---|"
for server in $available_servers; do
    read -r cm cl ch pm <<<"${unb[$server]:-na na na na}"
    printf '| %s | %s (%s–%s) | %s |\n' "$server" "$(fmt_cpu "$cm")" "$(fmt_cpu "$cl")" "$(fmt_cpu "$ch")" "$(fmt_us "$pm")"
done
echo
echo "Every core: each server with its default threads on all $ncpu cores (ringfan and tokio-fanout: one worker per core; NATS: GOMAXPROCS=$ncpu; Redis: single-threaded), ringfan-load unpinned beside it; 64 B, fixed rate:"
echo
echo "| server | N | msgs/s published (deliveries/s) | server CPU-s per M deliveries, median (min–max) | p50 / p99 latency (p99 min–max) |"
echo "|---|---|---|---|---|"
for c in $allcore_cfgs; do
    n=${c%%:*}; mps=${c##*:}
    for server in $available_servers; do
        read -r cm cl ch p50m p99m p99l p99h lostmax <<<"${allc[$server,$n]:-na na na na na na na na}"
        lat="$(fmt_us "$p50m") / $(fmt_us "$p99m") ($(fmt_us "$p99l")–$(fmt_us "$p99h"))"
        [ "$lostmax" != na ] && [ "$lostmax" != 0 ] && lat="$lat (lost up to $(fmt_int "$lostmax"))"
        printf '| %s | %s | %s (%s) | %s (%s–%s) | %s |\n' "$server" "$n" "$mps" "$(fmt_int "$((n * mps))")" \
            "$(fmt_cpu "$cm")" "$(fmt_cpu "$cl")" "$(fmt_cpu "$ch")" "$lat"
    done
done
if [ -n "$topics_servers" ]; then
    echo
    echo "Topics: $topics_n subscriber connections, 64 B, one publisher at a fixed rate, $(fmt_int "$topics_deliveries") deliveries/s in total in every configuration; each server on core 0 with one thread:"
    echo
    echo "| server | configuration | msgs/s published | server CPU-s per M deliveries, median (min–max) | ratio to (a) | p99 latency | lost | RSS per idle connection, median (min–max) |"
    echo "|---|---|---|---|---|---|---|---|"
    for server in $topics_servers; do
        read -r am _ <<<"${topics[$server,a]:-na}"
        for c in $topics_cfgs; do
            IFS=: read -r lab k t p <<<"$c"
            read -r cm cl ch pm lostmax rate <<<"${topics[$server,$lab]:-na na na na na na}"
            case "$lab" in
                a) desc="(a) 1 channel, $(fmt_int "$topics_n") subscribers" ;;
                b) desc="(b) $(fmt_int "$k") channels, $t per connection ($(( topics_n * t / k )) subscribers each)" ;;
                c) desc="(c) as (b) + $p patterns matching no channel" ;;
            esac
            rss_cell=""
            if [ "$lab" = b ]; then
                read -r rm rl rh <<<"${topics[$server,rss]:-na na na}"
                rss_cell="n/a"
                [ "$rm" != na ] && rss_cell="$(fmt_int "$rm") B ($(fmt_int "$rl")–$(fmt_int "$rh"))"
            fi
            printf '| %s | %s | %s | %s (%s–%s) | %s | %s | %s | %s |\n' "$server" "$desc" "$(fmt_int "$rate")" \
                "$(fmt_cpu "$cm")" "$(fmt_cpu "$cl")" "$(fmt_cpu "$ch")" "$(ratio "$cm" "$am")" "$(fmt_us "$pm")" \
                "$(fmt_int "$lostmax")" "$rss_cell"
        done
    done
fi
if [ -n "$metrics_out" ]; then
    echo
    echo "Metrics on/off (ringfan, N = 1000, 2000 msgs/s, 64 B, CPU over the measured window):"
    echo
    echo "$metrics_out"
fi
if [ "$tool" = both ]; then
    echo
    tcpkali_tables
fi
