#!/usr/bin/env bash
# Installs what building and testing partyhost needs, on a fresh machine,
# and does nothing where it is already there. Safe to run again.
#
#   1. A wasm32-wasip2 target for the guests. Route A: `rustup target add`
#      (under a timeout: the download is not available everywhere). Route B
#      when that fails: Debian's rustc-web + rust-web-src + wasi-libc, used
#      with -Zbuild-std by scripts/build-guests.sh.
#   2. The example pages (web/): npm packages from the lockfile, then the
#      partysocket bundle, rebuilt every time (esbuild takes milliseconds).
#   3. With --tests: the Node packages of the client and browser tests
#      (tests/node, from the lockfile), those of the TypeScript example
#      parties (guests-ts: zod), and Debian's chromium (with an emoji font,
#      for the reaction buttons) for the browser tests, and for the cluster
#      tests HAProxy and (when no `initdb` is found) PostgreSQL. The JavaScript build
#      toolchain itself (esbuild, componentize-js) is installed by partyhost
#      on its first build (host/src/js.rs).
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

npm_ci() {
  command -v npm >/dev/null || apt_install nodejs npm
  step "installing $1's npm packages (from package-lock.json)"
  (cd "$1" && npm ci --no-audit --no-fund --loglevel=error)
}

[[ -d web/node_modules/y-codemirror.next ]] || npm_ci web
step "bundling the example pages (web/public/build)"
(cd web && npm run --silent build -- --log-level=warning)

if [[ "${1:-}" == --tests ]]; then
  [[ -d tests/node/node_modules/y-partykit ]] || npm_ci tests/node
  [[ -d guests-ts/node_modules/zod ]] || npm_ci guests-ts
  if ! command -v chromium >/dev/null || [[ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]]; then
    step "installing Debian's chromium for the browser tests"
    apt_install chromium fonts-noto-color-emoji
  fi
  # scripts/cluster.sh, which the cluster tests run, finds Debian's
  # PostgreSQL under /usr/lib/postgresql when it is not on PATH.
  if ! command -v haproxy >/dev/null; then
    step "installing HAProxy for the cluster tests"
    apt_install haproxy
  fi
  if ! command -v initdb >/dev/null && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    step "installing PostgreSQL for the cluster tests"
    apt_install postgresql
  fi
fi
