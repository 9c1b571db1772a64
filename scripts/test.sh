#!/usr/bin/env bash
# Every test: the workspace (unit, property, simulated-ring and integration tests, with the
# io_uring driver), the server's integration suite again on the epoll driver, then the simulated
# ring's tests again with debug assertions and overflow checks on (the `sim` profile).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo test --workspace --release (io_uring driver)"
cargo test --workspace --release
echo "== server integration suite on the epoll driver (RINGFAN_TEST_DRIVER=epoll)"
RINGFAN_TEST_DRIVER=epoll cargo test --release -p ringfan --tests
# Release speed with the checks of a debug build: an arithmetic slip wraps silently in release
# and may still pass a seed; here it fails it. The debug seed count (1000) is meant for unoptimised
# builds, so the sweep's size is set here: 10000 seeds took about 20 s on a 2-core machine.
echo "== simulated ring with debug assertions and overflow checks (cargo test --profile sim)"
RINGFAN_SIM_SEEDS=10000 cargo test --profile sim -p ringfan --lib sim
