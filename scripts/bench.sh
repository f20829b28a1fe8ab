#!/usr/bin/env bash
# wsd side by side with websocketd and websocat 1.x, on 127.0.0.1 only:
#   1. builds wsd and the load generator (bench/loadgen) in release mode; installs websocketd
#      with apt-get when missing (as root); builds websocat 1.x into target/bench/websocat once
#   2. runs each scenario with every server started together, pinned with their programs to
#      one core, and the load generator on another, taking turns in short slices:
#      spawn (the raw cost of starting a program), churn, echo, pipeline, flood, broadcast
#      (one feed, many clients), then idle memory and soak one server at a time
#   3. prints a table per scenario (medians over slices; ratios are wsd's advantage, above 1
#      means wsd is better) and the issue's targets, and writes target/bench/results.json
#
#   scripts/bench.sh            the full run (under 10 minutes, after the one-time builds)
#   scripts/bench.sh --quick    small counts, about a minute: checks that it all works
#
# Environment: BENCH_SERVER_CPU (default 1) and BENCH_LOADGEN_CPU (default 0) choose the
# cores; BENCH_LOGLEVEL (default error) is the servers' --loglevel; BENCH_PORT (default 18100)
# the first port used; BENCH_SCENARIOS (default all) a space-separated subset of: spawn churn
# echo_pipeline flood broadcast idle soak. Only processes this script started are ever stopped.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

QUICK=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "bench.sh: unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

OUT=target/bench
RESULTS=$OUT/results.jsonl
LOGS=$OUT/logs
WSD=target/release/wsd
LOADGEN=target/release/loadgen
WEBSOCAT=$OUT/websocat/bin/websocat
SERVER_CPU=${BENCH_SERVER_CPU:-1}
LOADGEN_CPU=${BENCH_LOADGEN_CPU:-0}
LOGLEVEL=${BENCH_LOGLEVEL:-error}
NEXT_PORT=${BENCH_PORT:-18100}

# The same programs for every server. The flood line is 64 bytes with its newline.
ECHO=$(type -P echo)
CAT=$(type -P cat)
YES=$(type -P yes)
FLOOD_LINE=0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+

if [ $QUICK = 1 ]; then
  ROUNDS=2 SLICE_MS=200 CHURN_SLICE_MS=300 PAUSE_MS=100 IDLE_SETTLE_MS=500
  IDLE_COUNTS=(100 300) SOAK_CYCLES=300
  BCAST_CLIENTS=200 BCAST_ROUNDS=1 BCAST_SLICE_MS=1500
else
  ROUNDS=5 SLICE_MS=1000 CHURN_SLICE_MS=1500 PAUSE_MS=150 IDLE_SETTLE_MS=2000
  # The open-file hard limit is 20,000 per process; at about 4 descriptors per connection
  # that is some 4,950 connections (a server that needs more per connection stops earlier).
  IDLE_COUNTS=(1000 4950) SOAK_CYCLES=10000
  BCAST_CLIENTS=1000 BCAST_ROUNDS=3 BCAST_SLICE_MS=5000
fi
# The broadcast feed: a stamped 64-byte line every BCAST_TICK_US microseconds, 20 a second:
# 20,000 messages a second to 1,000 clients, well within what the load generator can take in
# (about 90,000 a second), so that the latency measured is the servers'.
BCAST_TICK_US=50000
TURNS=(--rounds "$ROUNDS" --slice-ms "$SLICE_MS" --pause-ms "$PAUSE_MS")

started_at=$SECONDS
say() { printf '\n==> %s\n' "$*"; }
warn() { printf 'bench.sh: %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Setup

build() {
  say "building wsd and the load generator (release)"
  # Two builds: one would unify the crates' features and give a wsd unlike `cargo build`'s.
  cargo build --release --quiet
  cargo build --release --quiet -p loadgen
}

have_websocketd() {
  if command -v websocketd >/dev/null; then return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing websocketd from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq websocketd >/dev/null; } || true
  fi
  command -v websocketd >/dev/null
}

have_websocat() {
  if [ -x "$WEBSOCAT" ]; then return 0; fi
  say "building websocat 1.x into $OUT/websocat (once; about two minutes)"
  cargo install --quiet --locked --root "$OUT/websocat" websocat --version '^1' || true
  [ -x "$WEBSOCAT" ]
}

# ---------------------------------------------------------------------------------------------
# Servers: each started in a session of its own (so its process group can be signalled) and
# pinned, with every program it starts, to SERVER_CPU.

declare -A LIVE      # servers this script started and has not stopped: pid -> start time
declare -A PID PORT  # the current set, by name

# Every descendant of a pid, from one snapshot of the process table (a leaking server may
# have thousands).
descendants() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { kids[$2] = kids[$2] " " $1 }
    END {
      n = split(kids[root], todo, " ")
      while (n > 0) {
        p = todo[n--]; print p
        m = split(kids[p], more, " ")
        for (i = 1; i <= m; i++) todo[++n] = more[i]
      }
    }'
}

# stat_field PID N: field N of /proc/PID/stat as proc(5) numbers them (3 is the state).
stat_field() {
  local line fields
  read -r line 2>/dev/null <"/proc/$1/stat" || return 1
  # After the command name, which may hold spaces, the fields start at number 3.
  read -r -a fields <<<"${line##*) }"
  echo "${fields[$2 - 3]}"
}

# A process's start time, so that a pid is only signalled while it still names the process
# it named when it was noted.
start_time() { stat_field "$1" 22; }

# True while a process runs (not gone, not a zombie waiting to be reaped).
running() {
  local state
  state=$(stat_field "$1" 3) && [ "$state" != Z ]
}

listening() {
  local hex
  hex=$(printf '%04X' "$1")
  grep -q "^ *[0-9]*: 0100007F:$hex 00000000:0000 0A" /proc/net/tcp
}

# start NAME COMMAND...: runs COMMAND, with @PORT@ in its arguments replaced by a free port,
# and waits until it listens.
start() {
  local name=$1
  shift
  while listening "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
  local port=$NEXT_PORT
  NEXT_PORT=$((NEXT_PORT + 1))
  local args=("${@//@PORT@/$port}")
  # setsid execs in place (a background job is no group leader), so $! is the server itself.
  setsid taskset -c "$SERVER_CPU" "${args[@]}" >>"$LOGS/$name.log" 2>&1 &
  local pid=$!
  LIVE[$pid]=$(start_time "$pid" || echo gone)
  for _ in $(seq 100); do
    listening "$port" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if ! listening "$port"; then
    warn "$name did not start listening on port $port (log: $LOGS/$name.log)"
    stop_pid "$pid"
    return 1
  fi
  PID[$name]=$pid
  PORT[$name]=$port
}

# True while PID still names the process that had start time TIME (bash reaps its children
# as they exit, so a pid may be reused before `wait`).
same() { [ "$(start_time "$1" || true)" = "$2" ]; }

# Stops one server: SIGTERM to it and its process group (wsd shuts down gracefully and stops
# its programs itself; websocketd's and websocat's programs share its group), then SIGKILL to
# whatever is left of it, its group and the descendants it had. A pid or group is only
# signalled while it provably still belongs to what this script started.
stop_pid() {
  local pid=$1 k
  [ -n "${LIVE[$pid]:-}" ] || return 0
  local born=${LIVE[$pid]}
  local -A kids=()
  for k in $(descendants "$pid"); do kids[$k]=$(start_time "$k" || echo gone); done
  if same "$pid" "$born"; then
    kill -TERM "$pid" 2>/dev/null || true
    kill -TERM -- "-$pid" 2>/dev/null || true
  fi
  for _ in $(seq 50); do
    if ! { same "$pid" "$born" && running "$pid"; }; then break; fi
    sleep 0.1
  done
  if same "$pid" "$born"; then
    kill -KILL -- "-$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  unset "LIVE[$pid]"
  for k in "${!kids[@]}"; do
    if same "$k" "${kids[$k]}"; then kill -KILL "$k" 2>/dev/null || true; fi
  done
}

stop_all() {
  local name
  for name in "${!PID[@]}"; do stop_pid "${PID[$name]}"; done
  PID=() PORT=()
}

cleanup() {
  local pid
  for pid in "${!LIVE[@]}"; do stop_pid "$pid"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_one NAME MODE PROGRAM [ARGS...]: one server serving PROGRAM. MODE is what the ceiling
# does in process instead (one, echo, flood, broadcast); `broadcast` also makes wsd and
# websocat share one PROGRAM among all clients.
start_one() {
  local name=$1 mode=$2
  shift 2
  local program=$1
  shift
  case $name in
    wsd)
      local shared=()
      [ "$mode" = broadcast ] && shared=(--broadcast)
      start wsd "$WSD" --port @PORT@ --address 127.0.0.1 --loglevel "$LOGLEVEL" \
        --maxforks 0 "${shared[@]}" "$program" "$@"
      ;;
    websocketd)
      start websocketd websocketd --port @PORT@ --address 127.0.0.1 --loglevel "$LOGLEVEL" \
        "$program" "$@"
      ;;
    websocat)
      local exec_args=()
      [ $# -gt 0 ] && exec_args=(--exec-args "$@")
      if [ "$mode" = broadcast ]; then
        # Its broadcast reuser shares one program among all clients, as wsd --broadcast;
        # the queue as long as wsd's --send-queue (without -E: one client's leaving must not
        # end the rest).
        start websocat "$WEBSOCAT" -t --linemode-strip-newlines --queue-len 1024 \
          ws-l:127.0.0.1:@PORT@ "broadcast:exec:$program" "${exec_args[@]}"
      else
        start websocat "$WEBSOCAT" -t -E --linemode-strip-newlines ws-l:127.0.0.1:@PORT@ \
          "exec:$program" "${exec_args[@]}"
      fi
      ;;
    ceiling)
      local line=hi
      [ "$mode" = flood ] && line=$FLOOD_LINE
      start ceiling "$LOADGEN" serve --port @PORT@ --mode "$mode" --line "$line" \
        --interval-us "$BCAST_TICK_US"
      ;;
  esac
}

# start_set MODE PROGRAM [ARGS...]: every server at once.
start_set() {
  local name
  for name in "${SERVERS[@]}"; do start_one "$name" "$@" || true; done
}

targets() {
  local name
  for name in "${SERVERS[@]}"; do
    [ -n "${PID[$name]:-}" ] && printf -- '--target %s:%s:%s ' "$name" "${PORT[$name]}" "${PID[$name]}"
  done
}

loadgen() {
  # shellcheck disable=SC2046 # targets are words by design
  taskset -c "$LOADGEN_CPU" "$LOADGEN" "$1" --out "$RESULTS" $(targets) "${@:2}"
}

report() { "$LOADGEN" report --results "$RESULTS" --scenario "$1"; }

# ---------------------------------------------------------------------------------------------
# Scenarios

scenario_spawn() {
  say "spawn: the raw cost of starting '$ECHO hi' with three pipes, one at a time (server core)"
  taskset -c "$SERVER_CPU" "$LOADGEN" spawn --out "$RESULTS" "${TURNS[@]}" -- "$ECHO" hi
  report spawn
}

scenario_churn() {
  say "churn: connect, first line of '$ECHO hi', close"
  start_set one "$ECHO" hi
  local c
  for c in 1 32; do
    loadgen churn --concurrency "$c" --rounds "$ROUNDS" --slice-ms "$CHURN_SLICE_MS" \
      --pause-ms "$PAUSE_MS"
  done
  stop_all
  report churn
}

scenario_echo_pipeline() {
  say "echo latency and pipeline throughput through '$CAT'"
  start_set echo "$CAT"
  local n size
  for n in 1 64; do loadgen echo --clients "$n" --size 64 "${TURNS[@]}"; done
  report echo
  for size in 64 4096; do loadgen pipeline --clients 4 --size "$size" "${TURNS[@]}"; done
  stop_all
  report pipeline
}

scenario_flood() {
  say "flood: '$YES' printing 64-byte lines as fast as it can"
  start_set flood "$YES" "$FLOOD_LINE"
  local n
  for n in 1 16; do loadgen flood --clients "$n" --line ${#FLOOD_LINE} "${TURNS[@]}"; done
  stop_all
  report flood
}

scenario_broadcast() {
  say "broadcast: $BCAST_CLIENTS clients of one feed, a stamped line every ${BCAST_TICK_US} us" \
    "(wsd --broadcast and websocat's broadcast: run one program; websocketd one per client)"
  start_set broadcast "$PWD/$LOADGEN" tick --interval-us "$BCAST_TICK_US"
  loadgen broadcast --clients "$BCAST_CLIENTS" --interval-us "$BCAST_TICK_US" \
    --rounds "$BCAST_ROUNDS" --slice-ms "$BCAST_SLICE_MS" --pause-ms "$PAUSE_MS"
  stop_all
  report broadcast
}

scenario_idle() {
  local n name
  for n in "${IDLE_COUNTS[@]}"; do
    say "idle: $n connections to '$CAT', one server at a time"
    for name in "${SERVERS[@]}"; do
      start_one "$name" echo "$CAT" || continue
      loadgen idle --conns "$n" --case "$n connections" --settle-ms "$IDLE_SETTLE_MS" ||
        warn "idle $n: $name failed"
      stop_all
    done
  done
  report idle
}

scenario_soak() {
  local name
  say "soak: $SOAK_CYCLES connect/echo/disconnect cycles (close frame, FIN, RST), one server at a time"
  for name in "${SERVERS[@]}"; do
    start_one "$name" echo "$CAT" || continue
    loadgen soak --cycles "$SOAK_CYCLES" || warn "soak: $name failed"
    stop_all
  done
  report soak
}

# ---------------------------------------------------------------------------------------------

mkdir -p "$OUT" "$LOGS"
: >"$RESULTS"
rm -f "$LOGS"/*.log
build
SERVERS=(wsd)
if have_websocketd; then SERVERS+=(websocketd); else warn "websocketd unavailable: its column stays empty"; fi
if have_websocat; then SERVERS+=(websocat); else warn "websocat 1.x unavailable: its column stays empty"; fi
SERVERS+=(ceiling)

# Each server and the load generator may hold as many descriptors as this machine allows.
ulimit -n "$(ulimit -Hn)"
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
load_before=$(loadavg)
say "servers on core $SERVER_CPU, load generator on core $LOADGEN_CPU; open files $(ulimit -n);" \
  "$([ $QUICK = 1 ] && echo quick || echo full) mode; load average $load_before"
echo "ratios are wsd's advantage: above 1 means wsd is better; 'of ceiling' is wsd's share of the"
echo "in-process server with no child process ('ceiling')"

bench_started=$SECONDS
for scenario in ${BENCH_SCENARIOS:-spawn churn echo_pipeline flood broadcast idle soak}; do
  t0=$SECONDS
  "scenario_$scenario"
  printf '(%s: %ss)\n' "$scenario" "$((SECONDS - t0))"
done
elapsed=$((SECONDS - bench_started))
load_after=$(loadavg)

"$LOADGEN" report --results "$RESULTS" --summary --json "$OUT/results.json" \
  --meta "mode=$([ $QUICK = 1 ] && echo quick || echo full)" \
  --meta "elapsed_s=$elapsed" --meta "date=$(date -u +%FT%TZ)" \
  --meta "wsd=$("$WSD" --version)" --meta "websocat=$("$WEBSOCAT" --version 2>/dev/null || true)" \
  --meta "websocketd=$(dpkg-query -W -f='${Version}' websocketd 2>/dev/null || true)" \
  --meta "server_cpu=$SERVER_CPU" --meta "loadgen_cpu=$LOADGEN_CPU" --meta "loglevel=$LOGLEVEL" \
  --meta "loadavg_before=$load_before" --meta "loadavg_after=$load_after"
printf '\nbenchmark: %ss (setup and builds: %ss); load average %s before, %s after; results in %s\n' \
  "$elapsed" "$((bench_started - started_at))" "$load_before" "$load_after" "$OUT/results.json"
