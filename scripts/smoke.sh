#!/usr/bin/env bash
# The README's first command, end to end: `cargo run --release` builds and starts ringfan on
# 127.0.0.1:7000 with its defaults; two clients connect; a line from one reaches the other and,
# with the default RINGFAN_ECHO=0, not its sender; SIGTERM makes the server exit 0.
# Every wait has a deadline; any failure prints what was expected, what happened and the
# server's output, and exits 1.
#
# Settings (environment): BUILD_TIMEOUT_SECS (default 900): time for `cargo run` to build and
# print its listening line; STEP_TIMEOUT_SECS (default 10): each later step.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_TIMEOUT_SECS=${BUILD_TIMEOUT_SECS:-900}
STEP_TIMEOUT_SECS=${STEP_TIMEOUT_SECS:-10}
ADDR=127.0.0.1:7000
for v in BUILD_TIMEOUT_SECS STEP_TIMEOUT_SECS; do
    case "${!v}" in ''|*[!0-9]*|0) echo "smoke: $v must be a whole number of seconds > 0 (got '${!v}')" >&2; exit 2 ;; esac
done

tmp=$(mktemp -d)
pid=""
cleanup() {
    if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "smoke: FAIL: $*" >&2
    echo "--- server stdout:" >&2
    cat "$tmp/out" >&2 2>/dev/null || true
    echo "--- server stderr (last 30 lines):" >&2
    tail -n 30 "$tmp/err" >&2 2>/dev/null || true
    exit 1
}

# Zombie or gone: the process has exited (a zombie still answers kill -0).
exited() { [ ! -r "/proc/$1/stat" ] || [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" = Z ]; }

# A server already on the port would answer our clients instead of the one we start.
if python3 -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('127.0.0.1', 7000)) != 0)"; then
    fail "something already accepts connections on $ADDR; stop it first"
fi

# The README's command with the defaults: no RINGFAN_* variable from the caller's environment.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^RINGFAN_' || true)
echo "smoke: cargo run --release (build, then serve on $ADDR)" >&2
cargo run --release >"$tmp/out" 2>"$tmp/err" &
pid=$!

deadline=$((SECONDS + BUILD_TIMEOUT_SECS))
until grep -q "^ringfan listening on $ADDR\$" "$tmp/out"; do
    exited "$pid" && fail "cargo run --release exited before printing 'ringfan listening on $ADDR'"
    [ "$SECONDS" -lt "$deadline" ] || fail "no 'ringfan listening on $ADDR' within ${BUILD_TIMEOUT_SECS}s"
    sleep 0.2
done
# cargo replaces itself with the program it runs (exec), so SIGTERM to $pid reaches ringfan
# itself; if it did not, the signal would stop cargo and leave the server running.
exe=$(readlink "/proc/$pid/exe" || true)
[ "${exe##*/}" = ringfan ] ||
    fail "process $pid is '$exe', not the ringfan binary: SIGTERM would not reach the server"

STEP_TIMEOUT_SECS=$STEP_TIMEOUT_SECS python3 - <<'PY' || fail "the clients' exchange (above)"
import os, socket, sys, time

step = float(os.environ["STEP_TIMEOUT_SECS"])

def die(msg):
    print(f"smoke: {msg}", file=sys.stderr)
    sys.exit(1)

class Client:
    def __init__(self, name):
        self.name = name
        self.sock = socket.create_connection(("127.0.0.1", 7000), timeout=step)
        self.buf = b""

    def send(self, line):
        self.sock.sendall(line)

    def line(self, deadline, waiting_for):
        """The next line, or None at the deadline."""
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not data:
                die(f"client {self.name}: the server closed the connection while waiting for {waiting_for}")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

a, b = Client("A"), Client("B")

# The server registers each connection on its own time: B sends until A receives one of its
# lines, so both are subscribed before the line under test.
deadline = time.monotonic() + step
n = 0
while True:
    if time.monotonic() > deadline:
        die(f"client A never received any of B's {n} 'smoke-ready' lines within {step:.0f}s")
    b.send(b"smoke-ready %d\n" % n)
    n += 1
    got = a.line(min(deadline, time.monotonic() + 0.2), "B's smoke-ready line")
    if got is not None:
        if not got.startswith(b"smoke-ready "):
            die(f"client A expected a 'smoke-ready' line from B, got {got!r}")
        break

a.send(b"smoke-line from A\n")
deadline = time.monotonic() + step
while True:
    got = b.line(deadline, "A's line")
    if got is None:
        die(f"client B did not receive A's line 'smoke-line from A' within {step:.0f}s")
    if got == b"smoke-line from A\n":
        break
    if not got.startswith(b"smoke-ready "):
        die(f"client B expected A's line, got {got!r}")

# Anything of A's own would reach A before this line from B (sent after B received A's).
b.send(b"smoke-end\n")
deadline = time.monotonic() + step
while True:
    got = a.line(deadline, "B's smoke-end line")
    if got is None:
        die(f"client A did not receive B's 'smoke-end' within {step:.0f}s")
    if got == b"smoke-end\n":
        break
    if got == b"smoke-line from A\n":
        die("client A received its own line: the default must be RINGFAN_ECHO=0")
    if not got.startswith(b"smoke-ready "):
        die(f"client A expected B's 'smoke-end', got {got!r}")

a.sock.close()
b.sock.close()
print("smoke: a line from one client reached the other, and not its sender", file=sys.stderr)
PY

kill -TERM "$pid"
deadline=$((SECONDS + STEP_TIMEOUT_SECS))
until exited "$pid"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "ringfan (pid $pid) still running ${STEP_TIMEOUT_SECS}s after SIGTERM"
    sleep 0.1
done
status=0
wait "$pid" || status=$?
pid=""
[ "$status" -eq 0 ] || fail "ringfan exited with status $status after SIGTERM, expected 0"
echo "smoke: ok (served on $ADDR, exited 0 after SIGTERM)" >&2
