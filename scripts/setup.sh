#!/usr/bin/env bash
# Installs what building and testing partyhost needs, on a fresh machine,
# and does nothing where it is already there. Safe to run again.
#
#   1. A wasm32-wasip2 target for the guests. Route A: `rustup target add`
#      (under a timeout: the download is not available everywhere). Route B
#      when that fails: Debian's rustc-web + rust-web-src + wasi-libc, used
#      with -Zbuild-std by scripts/build-guests.sh.
#   2. The Node packages of the partysocket tests (tests/node), from the
#      lockfile.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/wasm-toolchain.sh

step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if wasm_route >/dev/null; then
  step "wasm32-wasip2 toolchain: $(wasm_route)"
else
  step "installing the wasm32-wasip2 target (rustup, at most 120 s)"
  if [[ "${PARTYHOST_WASM_ROUTE:-}" != debian ]] && timeout 120 rustup target add wasm32-wasip2; then
    step "wasm32-wasip2 toolchain: rustup"
  else
    if [[ "${PARTYHOST_WASM_ROUTE:-}" == debian ]]; then
      step "PARTYHOST_WASM_ROUTE=debian: installing Debian's rustc-web, rust-web-src and wasi-libc"
    else
      step "rustup could not add the target; installing Debian's rustc-web, rust-web-src and wasi-libc"
    fi
    apt_install rustc-web cargo-web rust-web-src wasi-libc
    wasm_route >/dev/null || { echo "error: no usable wasm32-wasip2 toolchain after both routes" >&2; exit 1; }
    step "wasm32-wasip2 toolchain: $(wasm_route)"
  fi
fi

if [[ ! -d tests/node/node_modules/partysocket ]]; then
  command -v npm >/dev/null || apt_install nodejs npm
  step "installing the Node test clients (tests/node, from package-lock.json)"
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi
