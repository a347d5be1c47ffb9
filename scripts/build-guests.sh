#!/usr/bin/env bash
# Builds every guest crate (guests/* and the test guests in tests/guests/*),
# or only the crates named as arguments, into wasm32-wasip2 components:
#   target/guests/wasm32-wasip2/guest/<crate>.wasm
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/wasm-toolchain.sh

packages=()
for name in "$@"; do packages+=(-p "$name"); done
if [[ $# -eq 0 ]]; then
  for manifest in guests/*/Cargo.toml tests/guests/*/Cargo.toml; do
    packages+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -n1)")
  done
fi
printf '\033[1m==> building %d guests (%s)\033[0m\n' "$((${#packages[@]} / 2))" "$(wasm_route)" >&2
wasm_cargo build --profile guest --target-dir target/guests "${packages[@]}"
