#!/usr/bin/env bash
# Sets up (if needed), builds the guests, then runs every test: unit tests,
# manifest goldens and the integration tests, which start real hosts and
# drive them with real WebSocket and partysocket clients.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
scripts/build-guests.sh
# Also builds target/release/partyhost, which host/tests and tests/all/operate.rs run.
cargo test --release "$@"
