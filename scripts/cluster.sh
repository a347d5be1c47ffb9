#!/usr/bin/env bash
# A local cluster of partyhost nodes behind HAProxy, on PostgreSQL, all on
# loopback:
#
#   scripts/cluster.sh up [N]       starts N nodes (default 3), HAProxy and PostgreSQL
#   scripts/cluster.sh status       one line per live node: "<name> <pid> <address>"
#   scripts/cluster.sh down [--clean]  stops all of them (--clean: deletes the folder too)
#   scripts/cluster.sh db-restart   restarts PostgreSQL as a crash would (-m immediate)
#
# `up` on a fresh clone builds what it needs as scripts/run.sh does. It needs
# PostgreSQL 15's server on PATH (initdb, pg_ctl, postgres, psql) and installs
# HAProxy with apt-get when missing. Run as root, PostgreSQL runs as a system
# user (partyhost-pg, made when missing).
#
# Environment (all optional):
#   PARTYHOST_CLUSTER_DIR       its folder: pgdata, logs, pid files, haproxy.cfg
#                               and `nodes` (default target/cluster)
#   PARTYHOST_CLUSTER_PORT      HAProxy's port on 127.0.0.1 (default 2000)
#   PARTYHOST_CLUSTER_PG_PORT   PostgreSQL's (default PORT + 432)
#   PARTYHOST_CLUSTER_NODE_PORT node1's; node k listens on it + k - 1 (default PORT + 101)
#   PARTYHOST_CLUSTER_MANIFEST  the manifest the nodes serve (default, as
#                               `partyhost serve`: partykit.toml, else partykit.toml.example)
#   PARTYHOST_BIN               the binary (default target/release/partyhost, built when missing)
#   PARTYHOST_CLUSTER_LEASE_MS  passed to every node as --cluster-lease-ms
#   PARTYHOST_CLUSTER_ARGS      more arguments for every node (split on spaces)
#   PARTYHOST_CLUSTER_WAIT_S    how long `up` waits for everything to be ready (default 120)
set -euo pipefail

# Paths given relative to where we were called from.
abspath() { if [[ "$1" == /* ]]; then printf '%s\n' "$1"; else printf '%s\n' "$PWD/$1"; fi; }
[[ -n "${PARTYHOST_CLUSTER_DIR:-}" ]] && PARTYHOST_CLUSTER_DIR="$(abspath "$PARTYHOST_CLUSTER_DIR")"
[[ -n "${PARTYHOST_CLUSTER_MANIFEST:-}" ]] && PARTYHOST_CLUSTER_MANIFEST="$(abspath "$PARTYHOST_CLUSTER_MANIFEST")"
[[ -n "${PARTYHOST_BIN:-}" ]] && PARTYHOST_BIN="$(abspath "$PARTYHOST_BIN")"

cd "$(dirname "$0")/.."
ROOT="$PWD"
source scripts/lib/wasm-toolchain.sh # apt_install

step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit "${1:-2}"; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

DIR="${PARTYHOST_CLUSTER_DIR:-$ROOT/target/cluster}"
PORT="${PARTYHOST_CLUSTER_PORT:-2000}"
is_uint "$PORT" || die "PARTYHOST_CLUSTER_PORT is not a port: $PORT"
PG_PORT="${PARTYHOST_CLUSTER_PG_PORT:-$((PORT + 432))}"
NODE_PORT="${PARTYHOST_CLUSTER_NODE_PORT:-$((PORT + 101))}"
is_uint "$PG_PORT" || die "PARTYHOST_CLUSTER_PG_PORT is not a port: $PG_PORT"
is_uint "$NODE_PORT" || die "PARTYHOST_CLUSTER_NODE_PORT is not a port: $NODE_PORT"
DEFAULT_BIN="$ROOT/target/release/partyhost"
BIN="${PARTYHOST_BIN:-$DEFAULT_BIN}"
if [[ -n "${PARTYHOST_CLUSTER_MANIFEST:-}" ]]; then MANIFEST="$PARTYHOST_CLUSTER_MANIFEST"
elif [[ -f "$ROOT/partykit.toml" ]]; then MANIFEST="$ROOT/partykit.toml"
else MANIFEST="$ROOT/partykit.toml.example"; fi
WAIT_S="${PARTYHOST_CLUSTER_WAIT_S:-120}"
is_uint "$WAIT_S" || die "PARTYHOST_CLUSTER_WAIT_S is not a number of seconds: $WAIT_S"

# Debian's PostgreSQL keeps its server tools off PATH.
if ! command -v initdb >/dev/null; then
  for bin in /usr/lib/postgresql/*/bin; do [[ -x "$bin/initdb" ]] && PATH="$bin:$PATH"; done
fi
PG_USER=partyhost-pg # PostgreSQL refuses to run as root
PGDATA="$DIR/pgdata"
DB_URL="postgres://partyhost@127.0.0.1:$PG_PORT/partyhost"
MARKER="$DIR/.partyhost-cluster" # `down --clean` deletes only a folder that has it
HAPROXY_SOCK="$DIR/haproxy.sock" # HAProxy's stats page (CSV at /;csv)

# --- processes ---------------------------------------------------------------

# Whether process $1 is alive and its command line has every further argument
# as one of its own (so a recycled pid is never taken for ours). A zombie has
# an empty command line: dead.
proc_has() {
  local pid="$1" arg; shift
  is_uint "$pid" && [[ -r "/proc/$pid/cmdline" ]] || return 1
  local args; args="$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
  [[ -n "$args" ]] || return 1
  for arg in "$@"; do grep -qxF -- "$arg" <<<"$args" || return 1; done
}
node_alive() { proc_has "$2" "$1" "$3"; } # name pid address
# Whether our own child $1 is running (neither reaped nor a zombie).
child_running() {
  local stat
  stat="$(cat 2>/dev/null "/proc/$1/stat")" || return 1
  stat="${stat##*) }"
  [[ "${stat%% *}" != Z ]]
}
haproxy_pid() {
  local pid; pid="$(head -n1 "$DIR/haproxy.pid" 2>/dev/null)" || return 1
  proc_has "$pid" "$DIR/haproxy.cfg" && printf '%s\n' "$pid"
}

# Runs a PostgreSQL command, as $PG_USER when we are root, from inside $DIR
# (its tools want a working directory they may read).
pg_run() {
  if [[ $(id -u) -eq 0 ]]; then (cd "$DIR" && runuser -u "$PG_USER" -- "$@")
  else (cd "$DIR" && "$@"); fi
}
pg_running() {
  [[ -f "$PGDATA/PG_VERSION" ]] && command -v pg_ctl >/dev/null || return 1
  [[ $(id -u) -ne 0 ]] || id -u "$PG_USER" >/dev/null 2>&1 || return 1
  pg_run pg_ctl -D "$PGDATA" status >/dev/null 2>&1
}

http_status() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" 2>/dev/null || true; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Sends $1 to the given pids' process groups (a node is its group's leader,
# by setsid), or to the pid alone when it leads none.
signal_all() {
  local sig="$1" pid; shift
  for pid in "$@"; do kill "-$sig" -- "-$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null || true; done
}

# --- status ------------------------------------------------------------------

cmd_status() {
  [[ $# -eq 0 ]] || usage
  if [[ ! -f "$DIR/nodes" ]]; then
    echo "no cluster in $DIR" >&2
    return 0
  fi
  local name pid addr dead=0
  while read -r name pid addr; do
    [[ -n "${name:-}" ]] || continue
    if node_alive "$name" "$pid" "$addr"; then echo "$name $pid $addr"; else dead=$((dead + 1)); fi
  done <"$DIR/nodes"
  ((dead == 0)) || echo "($dead node(s) of $DIR/nodes not running)" >&2
  if pid="$(haproxy_pid)"; then echo "(haproxy $pid on 127.0.0.1:$PORT)" >&2; else echo "(haproxy not running)" >&2; fi
  if pg_running; then echo "(postgres running: $DB_URL)" >&2; else echo "(postgres not running)" >&2; fi
}

# --- down --------------------------------------------------------------------

# Stops whatever of a cluster in $DIR is running; safe when nothing is.
stop_all() {
  local name pid addr pids=() left=() i
  if [[ -f "$DIR/nodes" ]]; then
    while read -r name pid addr; do
      [[ -n "${name:-}" ]] || continue
      if node_alive "$name" "$pid" "$addr"; then pids+=("$pid"); fi
    done <"$DIR/nodes"
  fi
  if ((${#pids[@]})); then
    step "stopping ${#pids[@]} node(s)"
    signal_all TERM "${pids[@]}"
    local now_us end_us=$((${EPOCHREALTIME/./} + 10000000)) # 10 s
    while now_us=${EPOCHREALTIME/./}; ((now_us < end_us)); do
      left=()
      for pid in "${pids[@]}"; do if proc_has "$pid"; then left+=("$pid"); fi; done
      ((${#left[@]})) || break
      sleep 0.1
    done
    left=()
    for pid in "${pids[@]}"; do if proc_has "$pid"; then left+=("$pid"); fi; done
    if ((${#left[@]})); then
      step "node(s) ${left[*]} still running after 10 s: SIGKILL"
      signal_all KILL "${left[@]}"
    fi
  fi
  rm -f "$DIR/nodes"

  if pid="$(haproxy_pid)"; then
    step "stopping haproxy ($pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do proc_has "$pid" || break; sleep 0.1; done
    if proc_has "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$DIR/haproxy.pid" "$HAPROXY_SOCK"

  if pg_running; then
    step "stopping postgres"
    pg_run pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  fi
}

cmd_down() {
  local clean=0
  case "${1:-}" in --clean) clean=1; shift ;; esac
  [[ $# -eq 0 ]] || usage
  [[ -d "$DIR" ]] || { echo "no cluster in $DIR" >&2; return 0; }
  stop_all
  if ((clean)); then
    if [[ -f "$MARKER" ]]; then
      step "removing $DIR"
      rm -rf -- "$DIR"
    else
      die "$DIR has no $(basename "$MARKER"): not removing a folder cluster.sh did not make"
    fi
  fi
}

# --- up ----------------------------------------------------------------------

# Builds the binary (and the guests the manifest names) when missing, as
# scripts/run.sh does.
build_if_missing() {
  if [[ ! -x "$BIN" ]]; then
    [[ "$BIN" == "$DEFAULT_BIN" ]] || die "PARTYHOST_BIN=$BIN does not exist"
    step "no target/release/partyhost: setting up and building it (scripts/run.sh's steps)"
    scripts/setup.sh
    scripts/build-guests.sh
    cargo build --release -p partyhost
    return
  fi
  # The binary is there but the example guests may not be.
  local dir wasm missing=0
  dir="$(dirname "$MANIFEST")"
  while read -r wasm; do
    [[ "$wasm" == /* ]] || wasm="$dir/$wasm"
    wasm="$(realpath -m "$wasm")"
    if [[ "$wasm" == "$ROOT/target/guests/"* && ! -f "$wasm" ]]; then missing=1; fi
  done < <(sed -n 's/^[[:space:]]*wasm[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$MANIFEST")
  if ((missing)); then
    step "the manifest's guests are not built: scripts/setup.sh, scripts/build-guests.sh"
    scripts/setup.sh
    scripts/build-guests.sh
  fi
}

start_postgres() {
  command -v initdb >/dev/null ||
    die "initdb is not on PATH: the cluster needs PostgreSQL 15's server (initdb, pg_ctl, postgres, psql; Debian: apt-get install postgresql-15, then PATH=/usr/lib/postgresql/15/bin:\$PATH)"
  local tool
  for tool in pg_ctl postgres psql; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH (PostgreSQL 15's server tools are needed)"
  done
  if [[ $(id -u) -eq 0 ]]; then
    if ! id -u "$PG_USER" >/dev/null 2>&1; then
      step "making the system user $PG_USER (PostgreSQL will not run as root)"
      useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
    fi
    # Its data, its socket and its log all go in $DIR.
    chown "$PG_USER" "$DIR"
    [[ ! -d "$PGDATA" ]] || chown -R "$PG_USER" "$PGDATA"
    pg_run test -w "$DIR" || die "$PG_USER cannot write $DIR (is a folder above it closed to others?); set PARTYHOST_CLUSTER_DIR elsewhere"
  fi
  if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
    rm -rf -- "$PGDATA" # what a failed initdb left, if anything
    step "initdb $PGDATA"
    pg_run initdb -D "$PGDATA" -A trust -U partyhost -E UTF8 --locale=C --no-sync >"$DIR/initdb.log" 2>&1 ||
      { tail -n 20 "$DIR/initdb.log" >&2; die "initdb failed (log: $DIR/initdb.log)"; }
  fi
  step "starting postgres on 127.0.0.1:$PG_PORT"
  pg_run pg_ctl -D "$PGDATA" \
    -o "-p $PG_PORT -k '$DIR' -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=300" \
    -l "$DIR/postgres.log" -w start >/dev/null ||
    { tail -n 20 "$DIR/postgres.log" >&2; die "postgres did not start (log: $DIR/postgres.log)"; }
  local psql=(psql -h 127.0.0.1 -p "$PG_PORT" -U partyhost -d postgres -v ON_ERROR_STOP=1 -q)
  if [[ "$("${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = 'partyhost'")" != 1 ]]; then
    step "creating the database partyhost"
    "${psql[@]}" -c "CREATE DATABASE partyhost"
  fi
}

ensure_haproxy() {
  command -v haproxy >/dev/null && return
  local sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  step "haproxy is not on PATH: $sudo apt-get install -y haproxy"
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy; then
    step "that failed: $sudo apt-get update, then again"
    if ! { $sudo apt-get update && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy; }; then
      die "could not install haproxy with apt-get; install it and run again"
    fi
  fi
  command -v haproxy >/dev/null || die "haproxy is still not on PATH after apt-get install"
}

write_haproxy_cfg() {
  local n="$1" k maxconn=20000 hard
  # Two descriptors a connection: under a lower hard limit (containers),
  # fewer connections, or HAProxy refuses to start.
  hard="$(ulimit -Hn)"
  if [[ "$hard" != unlimited ]] && ((hard < 2 * maxconn + 200)); then maxconn=$(((hard - 200) / 2)); fi
  {
    cat <<EOF
# Written by scripts/cluster.sh up (again on every up): HAProxy on
# 127.0.0.1:$PORT in front of $n partyhost nodes. Runs as whoever started it.
global
    # 20000, or what the open-files hard limit ($hard) allows
    maxconn $maxconn

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # WebSockets, once upgraded (the nodes ping every 30 s).
    timeout tunnel 1h
    # The nodes tell proxied clients from local operators by it
    # (host/src/http/ops.rs, is_loopback).
    option forwardfor

frontend partyhost
    bind 127.0.0.1:$PORT
    default_backend nodes

# One room, one node: the hash is the path up to its third segment (depth 3)
# and never the query (the _pk connection id differs per socket), so
# /parties/<party>/<room>, /parties/<party>/<room>/anything and
# /parties/<party>/<room>?_pk=... hash alike. path-only: absolute URIs and
# HTTP/2 hash as HTTP/1's origin form. Consistent hashing: a node going
# down or up moves only its own share of the rooms.
# Legacy /party/<room> hashes on /party/<room>, but /party/<room>/<more> on
# /party/<room>/<more>, and neither as /parties/main/<room>: such requests
# may reach another node than the room's (which the cluster forwards).
backend nodes
    balance uri path-only depth 3
    hash-type consistent
    option httpchk
    http-check send meth GET uri /_partyhost/ready ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
EOF
    for ((k = 1; k <= n; k++)); do
      echo "    server node$k 127.0.0.1:$((NODE_PORT + k - 1)) check inter 500ms fall 2 rise 2"
    done
    cat <<EOF

# The servers' states, on a Unix socket only:
#   curl --unix-socket $HAPROXY_SOCK 'http://localhost/;csv'
listen stats
    bind "unix@$HAPROXY_SOCK"
    stats enable
    stats uri /
EOF
  } >"$DIR/haproxy.cfg"
}

start_haproxy() {
  write_haproxy_cfg "$1"
  haproxy -c -q -f "$DIR/haproxy.cfg" || die "haproxy rejects $DIR/haproxy.cfg"
  step "starting haproxy on 127.0.0.1:$PORT"
  rm -f "$DIR/haproxy.pid"
  haproxy -f "$DIR/haproxy.cfg" -D -p "$DIR/haproxy.pid" || die "haproxy did not start"
}

start_node() {
  local k="$1" name="node$1" addr="127.0.0.1:$((NODE_PORT + $1 - 1))"
  local args=(serve --manifest "$MANIFEST" --listen "$addr"
    --cluster-database "$DB_URL" --cluster-node "$name" --cluster-advertise "$addr")
  [[ -z "${PARTYHOST_CLUSTER_LEASE_MS:-}" ]] || args+=(--cluster-lease-ms "$PARTYHOST_CLUSTER_LEASE_MS")
  local extra=()
  read -ra extra <<<"${PARTYHOST_CLUSTER_ARGS:-}"
  ((${#extra[@]} == 0)) || args+=("${extra[@]}")
  # setsid: the node leads its own process group, which `down` signals.
  setsid nohup "$BIN" "${args[@]}" >"$DIR/$name.log" 2>&1 </dev/null &
  local pid=$! i
  echo "$name $pid $addr" >>"$DIR/nodes"
  # Until it has exec'd, it is not recognisable by its command line (which
  # node_alive, status and down go by).
  for ((i = 0; i < 100; i++)); do
    if node_alive "$name" "$pid" "$addr" || ! child_running "$pid"; then break; fi
    sleep 0.05
  done
  step "$name: pid $pid, $addr (log: $DIR/$name.log)"
}

DEADLINE=0
# Whether the node has exited (then shows the end of its log).
node_exited() {
  node_alive "$@" && return 1
  # When `up` started it, its status says how it ended (a signal leaves no
  # line in the log): 128 + N is signal N.
  local how="exited" status=0
  if child_running "$2"; then
    how="no longer recognisable by its command line (pid $2 still runs)"
  else
    wait "$2" 2>/dev/null || status=$?
    ((status == 127)) || how="exited with status $status"
  fi
  echo >&2
  echo "$1 $how; the end of $DIR/$1.log:" >&2
  tail -n 30 "$DIR/$1.log" >&2
}

# Waits until nodes $1..$2 answer 200 on /_partyhost/ready; fails (tail of
# the log) when one exits or the deadline passes.
wait_nodes() {
  local from="$1" to="$2" k name pid addr
  local -A ready=()
  printf 'waiting for node%s..node%s to be ready ' "$from" "$to" >&2
  while :; do
    local all=1
    while read -r name pid addr; do
      k="${name#node}"
      if ((k < from || k > to)) || [[ -n "${ready[$k]:-}" ]]; then continue; fi
      if node_exited "$name" "$pid" "$addr"; then die "$name did not start"; fi
      if [[ "$(http_status "http://$addr/_partyhost/ready")" == 200 ]]; then ready[$k]=1; else all=0; fi
    done <"$DIR/nodes"
    ((all)) && break
    if ((SECONDS >= DEADLINE)); then
      echo >&2
      for ((k = from; k <= to; k++)); do
        if [[ -n "${ready[$k]:-}" ]]; then continue; fi
        echo "node$k not ready after ${WAIT_S}s; the end of $DIR/node$k.log:" >&2
        tail -n 30 "$DIR/node$k.log" >&2
      done
      die "the nodes were not ready within ${WAIT_S}s (PARTYHOST_CLUSTER_WAIT_S)"
    fi
    printf . >&2
    sleep 1
  done
  echo " ready" >&2
}

# Waits until HAProxy counts every node UP and answers 200 itself.
wait_haproxy() {
  local n="$1" up
  printf 'waiting for haproxy to see %s node(s) up ' "$n" >&2
  while :; do
    haproxy_pid >/dev/null || { echo >&2; die "haproxy exited"; }
    local name pid addr
    while read -r name pid addr; do
      if node_exited "$name" "$pid" "$addr"; then die "$name exited"; fi
    done <"$DIR/nodes"
    up="$(curl -s --max-time 2 --unix-socket "$HAPROXY_SOCK" 'http://localhost/;csv' 2>/dev/null |
      awk -F, '$1 == "nodes" && $2 ~ /^node[0-9]+$/ && $18 == "UP"' | wc -l)" || up=0
    if ((up == n)) && [[ "$(http_status "http://127.0.0.1:$PORT/_partyhost/ready")" == 200 ]]; then break; fi
    if ((SECONDS >= DEADLINE)); then
      echo >&2
      die "haproxy saw $up of $n node(s) up within ${WAIT_S}s"
    fi
    printf . >&2
    sleep 0.5
  done
  echo " ready" >&2
}

UP_DONE=0
on_up_exit() {
  local rc=$?
  ((UP_DONE)) && return
  ((rc != 0)) || rc=1
  step "up failed: stopping what it started"
  stop_all || true
  exit "$rc"
}

cmd_up() {
  local n="${1:-3}"
  if [[ $# -gt 1 ]] || ! is_uint "$n" || ((n < 1)); then usage; fi
  mkdir -p "$DIR"
  if [[ ! -f "$MARKER" && -n "$(ls -A "$DIR")" ]]; then
    die "$DIR is not empty and not a cluster.sh folder; set PARTYHOST_CLUSTER_DIR to a new or empty one"
  fi
  touch "$MARKER"

  local running=() name pid addr
  if [[ -f "$DIR/nodes" ]]; then
    while read -r name pid addr; do
      if [[ -n "${name:-}" ]] && node_alive "$name" "$pid" "$addr"; then running+=("$name (pid $pid)"); fi
    done <"$DIR/nodes"
  fi
  if pid="$(haproxy_pid)"; then running+=("haproxy (pid $pid)"); fi
  if pg_running; then running+=("postgres"); fi
  if ((${#running[@]})); then
    echo "a cluster from $DIR is still running: ${running[*]}" >&2
    echo "stop it first: scripts/cluster.sh down" >&2
    exit 1
  fi

  [[ -f "$MANIFEST" ]] || die "no manifest at $MANIFEST"
  local k p
  for p in "$PORT" "$PG_PORT" $(seq "$NODE_PORT" $((NODE_PORT + n - 1))); do
    ! port_busy "$p" || die "127.0.0.1:$p is already in use (see PARTYHOST_CLUSTER_*PORT)"
  done
  command -v curl >/dev/null || apt_install curl

  trap on_up_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  build_if_missing
  ensure_haproxy
  rm -f "$DIR/nodes"

  start_postgres
  start_haproxy "$n"

  # node1 first: on a cold compile cache (the manifest's data_dir, shared by
  # all nodes) it compiles the parties alone and the others load its code.
  DEADLINE=$((SECONDS + WAIT_S))
  start_node 1
  wait_nodes 1 1
  if ((n > 1)); then
    for ((k = 2; k <= n; k++)); do start_node "$k"; done
    wait_nodes 2 "$n"
  fi
  wait_haproxy "$n"
  UP_DONE=1

  cat <<EOF

partyhost cluster of $n node(s) up:
  HAProxy:    http://127.0.0.1:$PORT (a room's requests all go to one node)
  nodes:      node1..node$n on 127.0.0.1:$NODE_PORT..$((NODE_PORT + n - 1))
  database:   $DB_URL
  logs, pids: $DIR
  scripts/cluster.sh status   the live nodes: name, pid, address
  scripts/cluster.sh down     stops it all (down --clean: deletes $DIR too)
EOF
}

# What a database crash looks like to the nodes: every session cut, the
# server back after recovery (the tests check that nothing acknowledged is lost).
cmd_db_restart() {
  [[ $# -eq 0 ]] || usage
  pg_running || die "PostgreSQL is not running in $DIR"
  pg_run pg_ctl -D "$PGDATA" -l "$DIR/postgres.log" -m immediate -w restart >/dev/null
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  db-restart) shift; cmd_db_restart "$@" ;;
  status) shift; cmd_status "$@" ;;
  down) shift; cmd_down "$@" ;;
  -h | --help | help) usage 0 ;;
  *) usage ;;
esac
