#!/usr/bin/env bash
# bench/splitwait.sh: how long a range nobody has led yet keeps writes waiting.
#
# For each cluster size, starts a new cluster on 127.0.0.1 (data in a
# temporary directory), times how long after the processes start the first
# Put is acknowledged, then splits the keyspace SPLITS times with `tessera ctl
# split` and times, after each split, a Put of a key in the new range. The
# Puts are `etcdctl put` runs (etcdctl v3.7.3, built from this module), so
# each figure includes starting etcdctl (a few tens of ms). Prints a Markdown
# table. Everything it starts is stopped when it exits.
#
# Usage: bench/splitwait.sh [--nodes "1 3"] [--splits N] [-- TESSERA_FLAGS...]
# Environment: TESSERA_BENCH_PORT_BASE (default 14400; uses BASE … BASE+31)
set -euo pipefail

NODES="1 3"
SPLITS=8
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES="$2"; shift ;;
    --splits) SPLITS="$2"; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "splitwait.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=${TESSERA_BENCH_PORT_BASE:-14400}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tessera-splitwait.XXXXXX")
PIDS=()
log() { printf '%s splitwait: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
stop() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
}
cleanup() { local rc=$?; stop; rm -rf "$WORK"; exit $rc; }
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building tessera and etcdctl"
(cd "$ROOT" && go build -o "$WORK/tessera" ./cmd/tessera && go build -o "$WORK/etcdctl" go.etcd.io/etcd/etcdctl/v3)

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}'; }

echo "| nodes | first Put after start (s) | Put after each split (s) |"
echo "|---|---|---|"
for n in $NODES; do
  rm -rf "$WORK/data"
  cluster=""
  for ((i = 1; i <= n; i++)); do cluster+="${cluster:+,}m$i=http://127.0.0.1:$((PORT + 10 * i + 1))"; done
  start=$(now)
  for ((i = 1; i <= n; i++)); do
    "$WORK/tessera" --name "m$i" --data-dir "$WORK/data/m$i" \
      --listen-client-urls "http://127.0.0.1:$((PORT + 10 * i))" \
      --listen-peer-urls "http://127.0.0.1:$((PORT + 10 * i + 1))" \
      --initial-cluster "$cluster" "${EXTRA[@]}" >"$WORK/m$i.log" 2>&1 &
    PIDS+=($!)
  done
  EP="127.0.0.1:$((PORT + 10))"
  # Wait for the client port first: a gRPC client refused a connection
  # backs off for a second before it tries again.
  for _ in $(seq 1000); do (exec 3<>"/dev/tcp/127.0.0.1/$((PORT + 10))") 2>/dev/null && break; sleep 0.005; done
  ok=""
  for _ in $(seq 1000); do
    if "$WORK/etcdctl" --endpoints "$EP" --command-timeout 5s put a 1 >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.02
  done
  [ -n "$ok" ] || { echo "splitwait: no Put acknowledged on the new $n-node cluster" >&2; exit 1; }
  first=$(since "$start")
  waits=""
  for ((k = 1; k <= SPLITS; k++)); do
    key=$(printf 'k%03d' "$k")
    "$WORK/tessera" ctl --endpoints "$EP" split "$key" >/dev/null
    t=$(now)
    "$WORK/etcdctl" --endpoints "$EP" --command-timeout 20s put "${key}x" 1 >/dev/null
    waits+="${waits:+ }$(since "$t")"
    sleep 1
  done
  log "$n nodes: first Put after ${first}s; after splits: $waits"
  echo "| $n | $first | $waits |"
  stop
done
