#!/usr/bin/env bash
# The long form of the mixed-population soak (server/tests/soak.rs): publishers with
# sequence-numbered, checksummed lines, churners (FIN, RST, half-close), slowloris clients,
# binary garbage, over-long lines, never-reading and late-reading subscribers; then SIGTERM.
#
#   scripts/soak.sh [SECONDS] [io_uring|epoll|both]     (default: 300 s on both drivers)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-300}"
drivers="${2:-both}"
case "$drivers" in
    both) drivers="io_uring epoll" ;;
    io_uring|epoll) ;;
    *) echo "soak.sh: driver must be io_uring, epoll or both, got '$drivers'" >&2; exit 2 ;;
esac
case "$secs" in
    ''|*[!0-9]*) echo "soak.sh: SECONDS must be a whole number, got '$secs'" >&2; exit 2 ;;
esac
cargo build --release -p ringfan --tests
for d in $drivers; do
    echo "== soak: ${secs} s on the ${d} driver"
    RINGFAN_TEST_DRIVER="$d" RINGFAN_SOAK_SECS="$secs" \
        cargo test --release -p ringfan --test soak -- --nocapture 2>&1 | grep -E '^soak:|test result|panicked|FAILED|^test '
done
