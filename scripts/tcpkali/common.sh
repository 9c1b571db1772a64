# Shared by the scripts in scripts/tcpkali/ (sourced, not run). Settings come from the
# environment; every script prints its own in its --help.

ADDR=${ADDR:-127.0.0.1:7000}
DURATION=${DURATION:-30}
host=${ADDR%:*}
port=${ADDR##*:}

case "$port" in ''|*[!0-9]*) echo "ADDR must be HOST:PORT (got '$ADDR')" >&2; exit 2 ;; esac

# PROTO=ws (scripts that take it): the subscribers connect to WS_ADDR, the server's WebSocket
# listener (ringfan: RINGFAN_WS_LISTEN), with tcpkali --websocket; the publisher sends lines to
# ADDR. ws_args is what the subscribers' tcpkali adds, sub_addr where they connect.
sub_addr=$ADDR
ws_args=()
if [ "${PROTO:-line}" = ws ]; then
    WS_ADDR=${WS_ADDR:-}
    case "${WS_ADDR##*:}" in ''|*[!0-9]*|0) echo "PROTO=ws needs WS_ADDR=HOST:PORT, the server's WebSocket listener (got '$WS_ADDR')" >&2; exit 2 ;; esac
    sub_addr=$WS_ADDR
    ws_args=(--websocket)
fi
case "$DURATION" in ''|*[!0-9]*) echo "DURATION must be whole seconds (got '$DURATION')" >&2; exit 2 ;; esac

# require_tcpkali "EQUIVALENT RINGFAN-LOAD ARGS": returns if tcpkali is installed; otherwise
# says how to get it, prints the equivalent ringfan-load command, and exits with status 3.
require_tcpkali() {
    command -v tcpkali >/dev/null 2>&1 && return 0
    cat >&2 <<MSG
tcpkali is not installed. It is not packaged for Debian 12; build it from source:

    apt-get install -y git build-essential autoconf automake libtool bison flex libssl-dev libncurses-dev
    git clone https://github.com/satori-com/tcpkali && cd tcpkali
    # glibc 2.32+ (Debian 12) has no <sys/sysctl.h>; on Linux tcpkali reads /proc/sys instead.
    sed -i '/sys\/sysctl.h/d' src/tcpkali_syslimits.c
    autoreconf -iv && ./configure && make && make install

Or run the equivalent ringfan-load command (same measurement, from this repository):

    cargo build --release -p ringfan-benches
    target/release/ringfan-load $1
MSG
    exit 3
}

# ringfan-load's flags for PROTO, ahead of --addr in the equivalent command require_tcpkali
# prints (the channel is the scripts' `bench`).
load_proto_args() {
    case "${PROTO:-line}" in
        redis|nats) printf -- '--proto %s --channel bench ' "$PROTO" ;;
        ws) printf -- '--proto ws --ws-addr %s ' "$WS_ADDR" ;;
    esac
}

# A payload line of SIZE bytes (newline included) after PREFIX, padded with 'x', for -m with -e.
payload() { # PREFIX SIZE PREFIX_LEN_ON_THE_WIRE
    local pad=$(( $2 - $3 - 1 ))
    [ "$pad" -ge 0 ] || pad=0
    printf '%s%s\\n' "$1" "$(head -c "$pad" /dev/zero | tr '\0' x)"
}

# The publisher's -m argument for one message of PROTO (line, redis, nats) whose payload is
# PREFIX padded with 'x' to SIZE bytes on the wire; PREFIX_LEN is PREFIX's length on the wire.
# line (and ws, whose publisher sends lines): the payload is the whole line, newline included
# (as ringfan-load's --size); redis and nats: SIZE payload bytes inside the protocol's framing
# (as ringfan-load). Escapes (\r, \n) are left for tcpkali's -e, as are those of the two
# functions below.
publish_message() { # PROTO PREFIX SIZE PREFIX_LEN
    local p
    p=$(payload "$2" "$(( $3 + 1 ))" "$4")
    p=${p%\\n}
    case "$1" in
        line|ws) payload "$2" "$3" "$4" ;;
        redis) printf 'PUBLISH bench %s\\r\\n' "$p" ;;
        nats) printf 'PUB bench %d\\r\\n%s\\r\\n' "$3" "$p" ;;
    esac
}
# What a subscriber of PROTO sends once on connecting (tcpkali -1), empty for line and ws
# (tcpkali --websocket sends the upgrade request for the path of its address, / here).
subscribe_message() {
    case "$1" in
        redis) printf '%s' 'SUBSCRIBE bench\r\n' ;;
        nats) printf '%s' 'CONNECT {"verbose":false}\r\nSUB bench 1\r\n' ;;
    esac
}
# What a publisher of PROTO sends once on connecting, empty for line and redis.
publisher_hello() { [ "$1" = nats ] && printf '%s' 'CONNECT {"verbose":false}\r\n'; true; }
# Bytes a subscriber of PROTO receives per message of SIZE (as built by publish_message):
# redis "*3\r\n$7\r\nmessage\r\n$5\r\nbench\r\n$SIZE\r\n" + payload + "\r\n", nats
# "MSG bench 1 SIZE\r\n" + payload + "\r\n", ws one unmasked frame of the line without its
# newline: a 2-byte header up to 125 payload bytes, 4 up to 65535, else 10.
delivered_bytes() { # PROTO SIZE
    case "$1" in
        line) echo "$2" ;;
        ws) local n=$(( $2 - 1 )); echo $(( n + (n <= 125 ? 2 : (n <= 65535 ? 4 : 10)) )) ;;
        redis) echo $(( 31 + ${#2} + $2 + 2 )) ;;
        nats) echo $(( 14 + ${#2} + $2 + 2 )) ;;
    esac
}

# Server-side TCP states of connections to PORT (local port = PORT) from /proc/net/tcp{,6}:
# prints "established=E close_wait=C fin_wait2=F fin_wait1=W last_ack=L time_wait=T".
server_states() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v p=":$hex" '
        FNR > 1 && substr($2, length($2) - 4) == p {
            s[$4]++
        }
        END {
            printf "established=%d close_wait=%d fin_wait2=%d fin_wait1=%d last_ack=%d time_wait=%d\n",
                s["01"], s["08"], s["05"], s["04"], s["09"], s["06"]
        }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# PID of the process listening on PORT, if `ss` can tell (same user or root); empty otherwise.
listener_pid() {
    command -v ss >/dev/null 2>&1 || return 0
    ss -Htlnp "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1
}

# watch_server SECONDS: once a second, the server's connection states (and open fds when its
# PID is known: SERVER_PID or from ss) on stderr; bounded by SECONDS. Last line = final state.
watch_server() {
    local secs=$1 pid=${SERVER_PID:-} fds i
    [ -n "$pid" ] || pid=$(listener_pid "$port")
    for i in $(seq "$secs"); do
        fds=""
        [ -n "$pid" ] && [ -d "/proc/$pid/fd" ] && fds=" fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)"
        echo "[watch t=${i}s] port $port: $(server_states "$port")$fds" >&2
        sleep 1
    done
}
