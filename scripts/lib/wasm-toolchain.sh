# Sourced by scripts/setup.sh and scripts/build-guests.sh: finds a way to
# build wasm32-wasip2 components on this machine (see ../shared notes in the
# README's "Toolchain" section). Sets nothing until a function is called.

# The rustup toolchain's own bin dir: wasm-component-ld and gcc-ld/wasm-ld
# ship with the host toolchain even when no wasm target is installed.
rustup_bin_dir() {
  echo "$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin"
}

# Prints the route that works here ("rustup" or "debian"); fails if none.
# PARTYHOST_WASM_ROUTE=debian forces route B (to test it).
wasm_route() {
  if [[ "${PARTYHOST_WASM_ROUTE:-}" != debian ]] &&
     rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo rustup
  elif [[ -x /usr/bin/rustc && -d /usr/lib/rustlib/src/rust/library && -d /usr/lib/wasm32-wasi &&
          -x "$(rustup_bin_dir)/wasm-component-ld" ]]; then
    echo debian
  else
    return 1
  fi
}

# Runs `cargo "$@"` for the wasm32-wasip2 target by the route that works.
wasm_cargo() {
  case "$(wasm_route)" in
    rustup) cargo "$@" --target wasm32-wasip2 ;;
    debian)
      local bin; bin="$(rustup_bin_dir)"
      RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
      CARGO_TARGET_WASM32_WASIP2_LINKER="$bin/wasm-component-ld" \
      PATH="$bin/gcc-ld:$PATH" \
      RUSTFLAGS="-C link-self-contained=no -L /usr/lib/wasm32-wasi" \
        /usr/bin/cargo "$@" --target wasm32-wasip2 -Zbuild-std=std,panic_abort ;;
    *) echo "error: no wasm32-wasip2 toolchain; run scripts/setup.sh" >&2; return 1 ;;
  esac
}

apt_install() {
  local sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}
