#!/usr/bin/env bash
# Sets up (if needed), builds the guests and the host, and serves the example
# parties from partykit.toml.example on http://127.0.0.1:1999.
# Arguments go to `partyhost serve` (e.g. --listen 0.0.0.0:1999).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-guests.sh
cargo build --release -p partyhost
exec target/release/partyhost serve "$@"
