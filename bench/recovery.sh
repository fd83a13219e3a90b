#!/usr/bin/env bash
# bench/recovery.sh: how long a Tessera cluster takes to rebuild a dead
# node's replicas, for several amounts of data, beside etcd v3.7.3 catching
# up a new member with the same data, on one machine.
#
# For each size S (MiB) in --sizes:
#   - Tessera: --nodes nodes (the first alone, the others --join), the key
#     prefix p/ split into --ranges ranges of equal key counts; S MiB of
#     --value-size values written under sequential keys; once placement has
#     spread the replicas (each node's replica and leader counts within one
#     of the others', every range with three replicas), the last node is
#     killed with SIGKILL. The run then polls `tessera ctl nodes` and
#     `tessera ctl ranges` on the other nodes until the node shows dead
#     (after --dead-after, the --dead-node-timeout the nodes run with) and
#     until every range has three replicas again, none on the dead node:
#     each of those replicas was added from a snapshot of its range, caught
#     up and promoted (a move records the range's new replicas only then).
#   - etcd: three members with the same S MiB; then a fourth member is added
#     as a learner (MemberAdd through etcd's JSON gateway) and started, and
#     the run asks every 0.2 s to promote it (MemberPromote), which etcd
#     refuses until the learner is in sync with the leader: the time to ship
#     it a snapshot of everything and apply it.
#
# Writes results.md (one row per size and system), `tessera ctl nodes
# --json` and `tessera ctl ranges --json` before the kill and after the
# repair, and the servers' logs. Processes it starts are stopped when it
# exits, however it exits.
#
# Usage: bench/recovery.sh [--sizes "256 1024 2048"] [--nodes N] [--ranges N]
#                          [--value-size B] [--dead-after D] [--out DIR]
#   --sizes LIST        data written per run, in MiB (default "256 1024 2048")
#   --nodes N           Tessera nodes (default 4)
#   --ranges N          ranges the data is split into (default 24)
#   --value-size B      value size in bytes (default 4096)
#   --dead-after D      the nodes' --dead-node-timeout (default 10s)
#   --out DIR           where results go (default: $CACHE/results/recovery-<date>)
# Environment:
#   TESSERA_BENCH_CACHE      cache for the etcd build (default ~/.cache/tessera-bench)
#   TESSERA_FLAGS            extra flags for every Tessera server (split on spaces)
#   TESSERA_BENCH_PORT_BASE  first of the 127.0.0.1 ports used (default 15000;
#                            uses BASE+10 … BASE+101+10×nodes)
set -euo pipefail

SIZES="256 1024 2048"
NODES=4
RANGES=24
VALUE_SIZE=4096
DEAD_AFTER=10s
OUT=""
ARGS="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) SIZES="$2"; shift ;;
    --nodes) NODES="$2"; shift ;;
    --ranges) RANGES="$2"; shift ;;
    --value-size) VALUE_SIZE="$2"; shift ;;
    --dead-after) DEAD_AFTER="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "recovery.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

usage_error() { echo "recovery.sh: $*" >&2; exit 2; }
for s in $SIZES; do [[ "$s" =~ ^[1-9][0-9]*$ ]] || usage_error "--sizes takes MiB counts, got $s"; done
[[ "$NODES" =~ ^[0-9]+$ && "$NODES" -ge 4 ]] || usage_error "--nodes must be at least 4 (three replicas must fit on the live ones), got $NODES"
[[ "$RANGES" =~ ^[1-9][0-9]*$ ]] || usage_error "--ranges must be a positive integer, got $RANGES"
[[ "$VALUE_SIZE" =~ ^[1-9][0-9]*$ ]] || usage_error "--value-size must be a byte count, got $VALUE_SIZE"
[[ "$DEAD_AFTER" =~ ^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$ ]] || usage_error "--dead-after takes a Go duration such as 10s, got $DEAD_AFTER"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${TESSERA_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tessera-bench}
PORT_BASE=${TESSERA_BENCH_PORT_BASE:-15000}
OUT=${OUT:-$CACHE/results/recovery-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tessera-recovery.XXXXXX")
LOG_NAME=recovery
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

trap cleanup_work EXIT
trap 'exit 130' INT TERM

build_etcd
build_tessera
# Room for the largest size on every node: the quota is not what is measured.
TESSERA_FLAGS="--dead-node-timeout $DEAD_AFTER --quota-backend-bytes 17179869184 ${TESSERA_FLAGS:-}"
ETCD_FLAGS=(--quota-backend-bytes 17179869184 --snapshot-count 10000)

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

keys_of() { echo $(($1 * 1048576 / VALUE_SIZE)); } # keys_of MIB

# load MIB: MIB MiB of values under p/ (sequential 16-byte keys) into
# ENDPOINTS; prints the seconds it took.
load() {
  local t0
  t0=$(now)
  "$TESSBENCH" put --endpoints "$ENDPOINTS" --sequential-keys --key-space 0 --total "$(keys_of "$1")" \
    --value-size "$VALUE_SIZE" --clients 64 --conns 8 >"$WORK/load.out" 2>&1 ||
    die "loading $1 MiB failed: $(tail -3 "$WORK/load.out")"
  since "$t0"
}

split_ranges() { # split_ranges MIB: p/ into RANGES ranges of equal key counts
  local keys k key tries
  keys=$(keys_of "$1")
  for k in $(seq $((RANGES - 1))); do
    key=$(printf 'p/%014d' $((k * keys / RANGES)))
    tries=0
    until "$TESSERA" ctl --endpoints "$ENDPOINTS" split "$key" >/dev/null 2>"$WORK/split.err"; do
      tries=$((tries + 1))
      [ $tries -lt 20 ] || die "tessera ctl split $key: $(cat "$WORK/split.err")"
      sleep 1
    done
  done
}

ROWS=$WORK/rows
: >"$ROWS"

# repaired ID: every range has three replicas, none on node ID.
repaired() {
  "$TESSERA" ctl --endpoints "$ENDPOINTS" ranges --json 2>/dev/null |
    jq -e --argjson dead "$1" 'length > 0 and all(.[]; (.replicas | length) == 3 and (.replicas | index($dead) | not))' >/dev/null
}
node_dead() { nodes_json | jq -e --argjson id "$1" 'any(.[]; .id == $id and .state == "dead")' >/dev/null; }

run_tessera() { # run_tessera MIB
  local mib=$1 pids names victim_pid victim_id live loaded t0 t_dead="" t_full="" disk moved
  start_tessera "$NODES"
  split_ranges "$mib"
  loaded=$(load "$mib")
  log "tessera: $mib MiB loaded in ${loaded}s; waiting for placement to spread it"
  wait_spread "$NODES"
  nodes_json >"$OUT/nodes-$mib-before.json"
  "$TESSERA" ctl --endpoints "$ENDPOINTS" ranges --json >"$OUT/ranges-$mib-before.json"
  IFS=, read -ra pids <<<"$SERVER_PIDS"
  IFS=, read -ra names <<<"$SERVER_NAMES"
  victim_pid=${pids[-1]}
  victim_id=$(jq -r --arg n "n$NODES" '.[] | select(.name == $n) | .id' "$OUT/nodes-$mib-before.json")
  disk=$(jq -r --argjson id "$victim_id" '.[] | select(.id == $id) | .disk_used_bytes / 1048576 | floor' "$OUT/nodes-$mib-before.json")
  moved=$(jq -r --argjson id "$victim_id" '[.[] | select(.replicas | index($id)) | .size_bytes] | add / 1048576 | floor' "$OUT/ranges-$mib-before.json")
  # Ask the live nodes only from now on.
  IFS=, read -ra live <<<"$ENDPOINTS"
  ENDPOINTS=$(IFS=,; echo "${live[*]:0:$((NODES - 1))}")
  kill -KILL "$victim_pid"
  t0=$(now)
  log "tessera: killed n$NODES (node $victim_id, ${disk} MiB on disk, ranges of ${moved} MiB)"
  local deadline=$((SECONDS + 1800))
  while [ -z "$t_full" ]; do
    [ -n "$t_dead" ] || { node_dead "$victim_id" && t_dead=$(since "$t0"); } || true
    if [ -n "$t_dead" ] && repaired "$victim_id"; then t_full=$(since "$t0"); fi
    [ $SECONDS -lt $deadline ] || die "the ranges were not repaired in 1800s"
    sleep 0.5
  done
  nodes_json >"$OUT/nodes-$mib-after.json" || true
  "$TESSERA" ctl --endpoints "$ENDPOINTS" ranges --json >"$OUT/ranges-$mib-after.json" || true
  log "tessera: node dead after ${t_dead}s, every range at three replicas after ${t_full}s"
  echo "tessera|$mib|$loaded|$disk|$moved|$t_dead|$t_full" >>"$ROWS"
  ENDPOINTS=$(IFS=,; echo "${live[*]}")
  stop_cluster
}

gateway() { # gateway PORT PATH JSON: POST to etcd's JSON gateway
  curl -s -m 5 -X POST "http://127.0.0.1:$1$2" -d "$3"
}

run_etcd() { # run_etcd MIB
  local mib=$1 loaded port peer target t0 t_full="" name=etcd-new cluster disk
  start_etcd 3
  loaded=$(load "$mib")
  log "etcd: $mib MiB loaded in ${loaded}s; adding a learner"
  port=$(client_port 0 4); peer=$((port + 1))
  check_ports "$port" "$peer"
  # etcd refuses a member while it judges the cluster unhealthy (members
  # started moments ago): try for a while.
  local tries=0
  until gateway "$(client_port 0 1)" /v3/cluster/member/add "{\"peerURLs\":[\"http://127.0.0.1:$peer\"],\"isLearner\":true}" >"$WORK/add.json" &&
    jq -e .member "$WORK/add.json" >/dev/null; do
    tries=$((tries + 1))
    [ $tries -lt 30 ] || die "etcd MemberAdd failed: $(cat "$WORK/add.json")"
    sleep 1
  done
  target=$(gateway "$(client_port 0 1)" /v3/maintenance/status '{}' | jq -r '.raftIndex')
  disk=$(gateway "$(client_port 0 1)" /v3/maintenance/status '{}' | jq -r '.dbSize | tonumber / 1048576 | floor')
  cluster=""
  for i in 1 2 3; do cluster+="m$i=http://127.0.0.1:$(($(client_port 0 "$i") + 1)),"; done
  cluster+="m4=http://127.0.0.1:$peer"
  t0=$(now)
  "$SERVER_START" "$name" "$ETCD" --name m4 --data-dir "$WORK/data/$name" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$cluster" --initial-cluster-state existing --initial-cluster-token tessbench \
    --log-level error "${ETCD_FLAGS[@]}"
  SERVER_PIDS+=",$LAST_PID"; SERVER_NAMES+=",$name"
  # etcd promotes a learner only once it is in sync with the leader (its
  # Raft log matched up to at least 90 % of the leader's commit index).
  local id deadline=$((SECONDS + 1800))
  id=$(jq -r .member.ID "$WORK/add.json")
  while [ -z "$t_full" ]; do
    if gateway "$(client_port 0 1)" /v3/cluster/member/promote "{\"ID\":\"$id\"}" | jq -e .members >/dev/null 2>&1; then
      t_full=$(since "$t0")
    fi
    [ $SECONDS -lt $deadline ] || die "the new etcd member could not be promoted in 1800s"
    sleep 0.2
  done
  log "etcd: the new member (the leader at index $target when it was added) promoted after ${t_full}s"
  echo "etcd|$mib|$loaded|$disk|$disk||$t_full" >>"$ROWS"
  stop_cluster
}

START=$(date -u +%Y-%m-%dT%H:%MZ)
for mib in $SIZES; do
  run_tessera "$mib"
  run_etcd "$mib"
done

{
  echo "# Recovery time"
  echo
  echo "Run $START by \`bench/recovery.sh $ARGS\` at Tessera $TESSERA_BUILD, against etcd $ETCD_VERSION."
  echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, Linux $(uname -r), $(go version | cut -d' ' -f3); every server uncapped on the same machine."
  echo "Tessera: $NODES nodes, p/ split into $RANGES ranges, three replicas each, --dead-node-timeout $DEAD_AFTER; the last node killed with SIGKILL."
  echo "etcd: three members; a fourth added as a learner and started. $VALUE_SIZE-byte values."
  echo
  echo "| system | data written (MiB) | load (s) | on the lost/new node (MiB) | ranges to rebuild (MiB) | declared dead (s) | full again / caught up (s) | after dead (s) |"
  echo "|---|---|---|---|---|---|---|---|"
  while IFS='|' read -r sys mib loaded disk moved dead full; do
    after=""
    [ -n "$dead" ] && after=$(awk -v a="$dead" -v b="$full" 'BEGIN { printf "%.1f", b - a }')
    echo "| $sys | $mib | $loaded | $disk | $moved | ${dead:-—} | $full | ${after:-—} |"
  done <"$ROWS"
} >"$OUT/results.md"
cat "$OUT/results.md"
log "results in $OUT"
