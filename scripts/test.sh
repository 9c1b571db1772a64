#!/usr/bin/env bash
# Every test: the workspace (unit, property, simulated-ring and integration tests, with the
# io_uring driver), then the server's integration suite again on the epoll driver.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo test --workspace --release (io_uring driver)"
cargo test --workspace --release
echo "== server integration suite on the epoll driver (RINGFAN_TEST_DRIVER=epoll)"
RINGFAN_TEST_DRIVER=epoll cargo test --release -p ringfan --tests
