#!/usr/bin/env bash
# bench/idle.sh: what many idle ranges cost one node.
#
# For each count N, starts a fresh single node (data in a temporary
# directory), splits its keyspace by hand into N ranges with `tessera ctl
# split`, waits for the ranges to go quiet, then reads the process's CPU time
# (utime+stime from /proc/PID/stat) over a window and its RSS (VmRSS from
# /proc/PID/status). Prints a Markdown table. Everything it starts is stopped
# when it exits.
#
# Usage: bench/idle.sh [--ranges "1 100 1000"] [--settle SECONDS] [--window SECONDS] [-- TESSERA_FLAGS...]
#   --ranges  the range counts to measure (default "1 100 1000")
#   --settle  seconds to wait after the last split before measuring (default 20;
#             a data range quiesces after ten election timeouts without traffic)
#   --window  seconds of CPU measurement (default 30)
#   after --, flags for every tessera server (e.g. --heartbeat-interval 200)
# Environment: TESSERA_BENCH_PORT_BASE (default 14300; uses BASE and BASE+1)
set -euo pipefail

COUNTS="1 100 1000"
SETTLE=20
WINDOW=30
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ranges) COUNTS="$2"; shift ;;
    --settle) SETTLE="$2"; shift ;;
    --window) WINDOW="$2"; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "idle.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=${TESSERA_BENCH_PORT_BASE:-14300}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tessera-idle.XXXXXX")
PID=""
log() { printf '%s idle: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
stop() {
  if [ -n "$PID" ]; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
  fi
}
cleanup() { local rc=$?; stop; rm -rf "$WORK"; exit $rc; }
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building tessera"
(cd "$ROOT" && go build -o "$WORK/tessera" ./cmd/tessera)
TICKS=$(getconf CLK_TCK)
EP="127.0.0.1:$PORT"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_mib() { awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

echo "| ranges | idle CPU (% of one core) | RSS (MiB) |"
echo "|---|---|---|"
for n in $COUNTS; do
  rm -rf "$WORK/data"
  "$WORK/tessera" --data-dir "$WORK/data" \
    --listen-client-urls "http://$EP" --advertise-client-urls "http://$EP" \
    --listen-peer-urls "http://127.0.0.1:$((PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((PORT + 1))" \
    --initial-cluster "default=http://127.0.0.1:$((PORT + 1))" \
    "${EXTRA[@]}" >"$WORK/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do
    "$WORK/tessera" ctl --endpoints "$EP" ranges >/dev/null 2>&1 && break
    sleep 0.2
  done
  # Split in rounds, each round at the midpoints of the key intervals the
  # earlier rounds left, in parallel: the splits of one round hit different
  # ranges, and a new range's election (a second or two) is waited for once
  # per round rather than once per split.
  log "$n ranges: splitting"
  step=1
  while [ $step -lt "$n" ]; do step=$((step * 2)); done
  while [ $step -gt 1 ]; do
    half=$((step / 2))
    for ((i = half; i < n; i += step)); do printf 'idle/%06d\n' "$i"; done |
      xargs -r -P 32 -I KEY "$WORK/tessera" ctl --endpoints "$EP" --command-timeout 60s split KEY >/dev/null
    step=$half
  done
  got=$("$WORK/tessera" ctl --endpoints "$EP" ranges --json | grep -o '"id"' | wc -l)
  log "$n ranges: $got ranges; settling ${SETTLE}s, then measuring ${WINDOW}s"
  sleep "$SETTLE"
  t0=$(cpu_ticks "$PID")
  sleep "$WINDOW"
  t1=$(cpu_ticks "$PID")
  cpu=$(awk -v d=$((t1 - t0)) -v hz="$TICKS" -v w="$WINDOW" 'BEGIN {printf "%.2f", 100 * d / hz / w}')
  echo "| $got | $cpu % | $(rss_mib "$PID") |"
  stop
done
