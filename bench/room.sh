#!/usr/bin/env bash
# bench/room.sh: how much data a Tessera cluster holds when every node has
# etcd's backend quota, beside etcd v3.7.3 with the same quota, on one
# machine.
#
# Tessera: --nodes nodes (the first alone, the others --join), each with
# --quota-backend-bytes of --quota-mib MiB (etcd's default is 2048); the key
# prefix p/ split into --ranges ranges of equal key counts; then --load-mib
# MiB of --value-size values written under sequential keys (one Put each),
# once placement has spread the ranges' replicas over the nodes.
# Afterwards the run checks that the cluster serves all of it:
#   - a watch from the first write's revision (etcdctl watch --rev) delivers
#     every Put, each a creation, in revision order;
#   - counts of the prefix at ten revisions spread over the load
#     (etcdctl get --count-only --rev) are each the number of Puts the watch
#     showed at or below that revision;
#   - a list of every key (etcdctl get --keys-only, paginated by etcdctl)
#     finds each one;
#   - 200 random keys read back with their full values;
#   - no node raised NOSPACE (etcdctl alarm list) and no Put was refused.
# It reports every node's size on disk (tessera ctl nodes) after the splits
# and after the load, and placement's spread.
#
# etcd: --etcd-members members with the same quota, the same load: the run
# reports how much etcd took before it raised NOSPACE and refused Puts.
#
# Writes results.md, `tessera ctl nodes --json` and `ranges --json` after
# the load, and the servers' logs. Processes it starts are stopped when it
# exits, however it exits.
#
# Usage: bench/room.sh [--nodes N] [--quota-mib M] [--load-mib M] [--ranges N]
#                      [--value-size B] [--etcd-members N] [--out DIR]
#   --nodes N          Tessera nodes (default 6)
#   --quota-mib M      every server's --quota-backend-bytes, in MiB (default 2048)
#   --load-mib M       data written, in MiB of values (default 3072)
#   --ranges N         ranges p/ is split into (default 48)
#   --value-size B     value size in bytes (default 4096)
#   --etcd-members N   etcd members (default 3)
#   --out DIR          where results go (default: $CACHE/results/room-<date>)
# Environment:
#   TESSERA_BENCH_CACHE      cache for the etcd build (default ~/.cache/tessera-bench)
#   TESSERA_FLAGS            extra flags for every Tessera server (split on spaces)
#   TESSERA_BENCH_PORT_BASE  first of the 127.0.0.1 ports used (default 15000;
#                            uses BASE+10 … BASE+101+10×nodes)
set -euo pipefail

NODES=6
QUOTA_MIB=2048
LOAD_MIB=3072
RANGES=48
VALUE_SIZE=4096
ETCD_MEMBERS=3
OUT=""
ARGS="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES="$2"; shift ;;
    --quota-mib) QUOTA_MIB="$2"; shift ;;
    --load-mib) LOAD_MIB="$2"; shift ;;
    --ranges) RANGES="$2"; shift ;;
    --value-size) VALUE_SIZE="$2"; shift ;;
    --etcd-members) ETCD_MEMBERS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "room.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

usage_error() { echo "room.sh: $*" >&2; exit 2; }
for v in NODES QUOTA_MIB LOAD_MIB RANGES VALUE_SIZE ETCD_MEMBERS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || usage_error "$v must be a positive integer, got ${!v}"
done
[ "$NODES" -ge 3 ] || usage_error "--nodes must be at least 3, got $NODES"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${TESSERA_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tessera-bench}
PORT_BASE=${TESSERA_BENCH_PORT_BASE:-15000}
OUT=${OUT:-$CACHE/results/room-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tessera-room.XXXXXX")
LOG_NAME=room
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

trap cleanup_work EXIT
trap 'exit 130' INT TERM

build_etcd
build_tessera
log "building etcdctl"
(cd "$ROOT" && go build -o "$WORK/bin/etcdctl" go.etcd.io/etcd/etcdctl/v3)
ETCDCTL=$WORK/bin/etcdctl
QUOTA=$((QUOTA_MIB * 1048576))
TESSERA_FLAGS="--quota-backend-bytes $QUOTA ${TESSERA_FLAGS:-}"
ETCD_FLAGS=(--quota-backend-bytes "$QUOTA")
KEYS=$((LOAD_MIB * 1048576 / VALUE_SIZE))
ctl() { "$ETCDCTL" --endpoints "$ENDPOINTS" --command-timeout 60s "$@"; }
key_at() { printf 'p/%014d' "$1"; }
# header_revision: the store's revision now (a count of p/ read with it).
header_revision() { ctl get p/ --prefix --count-only -w fields | awk '/^"Revision" : / { print $3 }'; }

ROWS=$WORK/rows
: >"$ROWS"
CHECKS=$WORK/checks
: >"$CHECKS"
check() { # check WHAT OK|FAILED DETAIL
  echo "- $1: **$2** — $3" >>"$CHECKS"
  log "$1: $2 — $3"
}

# load: KEYS Puts; sets PUT_OK (Puts acknowledged), PUT_ERRORS, LOAD_S.
load() {
  local t0 file=$WORK/load.json
  t0=$(date +%s)
  "$TESSBENCH" put --endpoints "$ENDPOINTS" --sequential-keys --key-space 0 --total "$KEYS" \
    --value-size "$VALUE_SIZE" --clients 64 --conns 8 --json >"$file" 2>"$WORK/load.err" || true
  LOAD_S=$(($(date +%s) - t0))
  PUT_ERRORS=$(jq -r '.errors // "?"' "$file" 2>/dev/null || echo '?')
  PUT_OK=$(jq -r '.count // "?"' "$file" 2>/dev/null || echo '?')
  jq -r '.error_samples // {} | to_entries | map("\(.value)× \(.key)") | join("; ")' "$file" >"$WORK/load.samples" 2>/dev/null || true
}

alarms() { ctl alarm list 2>&1 | tr '\n' ' '; }

run_tessera() {
  local first last rev i got missing disk_after spread
  start_tessera "$NODES"
  for i in $(seq $((RANGES - 1))); do
    until "$TESSERA" ctl --endpoints "$ENDPOINTS" split "$(key_at $((i * KEYS / RANGES)))" >/dev/null 2>"$WORK/split.err"; do
      sleep 1
    done
  done
  log "tessera: waiting for placement to spread the ranges"
  wait_spread "$NODES"
  nodes_json >"$OUT/nodes-tessera-before.json"
  first=$(($(header_revision) + 1))
  log "tessera: $NODES nodes, $RANGES ranges; loading $LOAD_MIB MiB ($KEYS Puts) from revision $first"
  load
  last=$(header_revision)
  log "tessera: $PUT_OK Puts acknowledged, $PUT_ERRORS failed, in ${LOAD_S}s; last revision $last"
  if [ "$PUT_ERRORS" = 0 ]; then check "Tessera: every Put acknowledged" OK "$PUT_OK of $KEYS in ${LOAD_S} s"; else check "Tessera: every Put acknowledged" FAILED "$PUT_ERRORS failed: $(cat "$WORK/load.samples")"; fi
  local al
  al=$(alarms)
  if [ -z "${al// /}" ]; then check "Tessera: no NOSPACE alarm" OK "etcdctl alarm list is empty"; else check "Tessera: no NOSPACE alarm" FAILED "$al"; fi

  # A watch from the first Put replays every one of them, in revision
  # order, each a creation; their revisions give the counts below.
  local wpid revs=$WORK/revisions keys=$WORK/keys seen
  exec 3< <(timeout 1800 "$ETCDCTL" --endpoints "$ENDPOINTS" watch p/ --prefix --rev "$first" -w fields)
  wpid=$!
  # Every acknowledged Put made a key, and a Put whose answer was lost may
  # have made one too: the watch is read up to the last revision.
  seen=$(awk -v end="$last" -v out="$revs" -v keyout="$keys" '
    /^"Type" : / { t = $3 }
    /^"Key" : / { key = $3 }
    /^"Version" : / { if ($3 != 1) notnew++ }
    /^"ModRevision" : / {
      if (t != "PUT") other++
      if ($3 <= last) bad++
      last = $3; c++; print $3 > out; print key > keyout
      if ($3 >= end) exit
    }
    END { print c + 0, bad + 0, other + 0, notnew + 0 }' <&3)
  exec 3<&-
  kill "$wpid" 2>/dev/null || true
  local bad other notnew
  read -r got bad other notnew <<<"$seen"
  if [ "$got" -ge "$PUT_OK" ] && [ "$bad" = 0 ] && [ "$other" = 0 ]; then
    check "Tessera: a watch from revision $first to $last" OK "$got Puts for $PUT_OK acknowledged, in revision order ($notnew of them a key's second)"
  else
    check "Tessera: a watch from revision $first to $last" FAILED "$got events for $PUT_OK acknowledged Puts: $bad out of order, $other not Puts"
  fi

  # The prefix's count at ten revisions over the load: the Puts the watch
  # showed at or below each.
  local wrong=0
  for i in $(seq 1 10); do
    rev=$((first - 1 + i * (last - first + 1) / 10))
    got=$(ctl get p/ --prefix --count-only --rev "$rev" -w fields | awk '/^"Count" : / { print $3 }')
    want=$(awk -v r="$rev" '$1 <= r { n++ } END { print n + 0 }' "$revs")
    [ "$got" = "$want" ] || { wrong=$((wrong + 1)); log "  count at revision $rev: $got, want $want"; }
  done
  if [ $wrong = 0 ]; then check "Tessera: counts at ten revisions over the load" OK "each the number of Puts at or below it"; else check "Tessera: counts at ten revisions over the load" FAILED "$wrong of 10 wrong"; fi

  # Every key, listed (etcdctl pages through it).
  local want
  want=$(sort -u "$keys" | wc -l)
  got=$(ctl get p/ --prefix --keys-only | awk 'NF' | wc -l)
  if [ "$got" = "$want" ]; then check "Tessera: list of every key" OK "$got keys, those the watch showed"; else check "Tessera: list of every key" FAILED "$got keys, the watch showed $want"; fi

  # Random keys with their values.
  missing=0
  while read -r key; do
    got=$(ctl get "${key//\"/}" --print-value-only | wc -c)
    [ "$got" -ge "$VALUE_SIZE" ] || missing=$((missing + 1))
  done < <(shuf -n 200 "$keys")
  if [ $missing = 0 ]; then check "Tessera: 200 random keys read with their values" OK "all $VALUE_SIZE bytes"; else check "Tessera: 200 random keys read with their values" FAILED "$missing missing or short"; fi

  sleep 5 # let the nodes' sizes settle in the registry
  nodes_json >"$OUT/nodes-tessera-after.json"
  "$TESSERA" ctl --endpoints "$ENDPOINTS" ranges --json >"$OUT/ranges-tessera-after.json" || true
  disk_after=$(jq -r 'map(.disk_used_bytes / 1048576 | floor | tostring) | join(", ")' "$OUT/nodes-tessera-after.json")
  spread=$(spread_of "$OUT/nodes-tessera-after.json")
  echo "Tessera|$NODES nodes|$PUT_OK|$PUT_ERRORS|$LOAD_S|$(jq -r 'map(.disk_used_bytes / 1048576 | floor | tostring) | join(", ")' "$OUT/nodes-tessera-before.json")|$disk_after|$al|$spread" >>"$ROWS"
  stop_cluster
}

run_etcd() {
  local al size
  start_etcd "$ETCD_MEMBERS"
  log "etcd: $ETCD_MEMBERS members; loading $LOAD_MIB MiB ($KEYS Puts)"
  load
  al=$(alarms)
  size=$(ctl endpoint status -w json | jq -r 'map(.Status.dbSize / 1048576 | floor | tostring) | join(", ")')
  log "etcd: $PUT_OK Puts acknowledged, $PUT_ERRORS failed; alarms: $al; sizes $size MiB"
  echo "etcd $ETCD_VERSION|$ETCD_MEMBERS members|$PUT_OK|$PUT_ERRORS|$LOAD_S||$size|$al|" >>"$ROWS"
  stop_cluster
}

START=$(date -u +%Y-%m-%dT%H:%MZ)
run_tessera
run_etcd

{
  echo "# Room"
  echo
  echo "Run $START by \`bench/room.sh $ARGS\` at Tessera $TESSERA_BUILD, against etcd $ETCD_VERSION."
  echo "Machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, Linux $(uname -r), $(go version | cut -d' ' -f3)."
  echo "Every server with --quota-backend-bytes $QUOTA ($QUOTA_MIB MiB); $LOAD_MIB MiB written as $KEYS Puts of $VALUE_SIZE-byte values under sequential keys; Tessera's p/ split into $RANGES ranges, three replicas each."
  echo
  echo "| system | topology | Puts acknowledged | Puts failed | load (s) | size per node before (MiB) | size per node after (MiB) | alarms | placement after |"
  echo "|---|---|---|---|---|---|---|---|---|"
  while IFS='|' read -r sys topo ok failed secs before after al spread; do
    echo "| $sys | $topo | $ok | $failed | $secs | ${before:-—} | $after | ${al:-none} | ${spread:-—} |"
  done <"$ROWS"
  echo
  echo "Checks:"
  echo
  cat "$CHECKS"
} >"$OUT/results.md"
cat "$OUT/results.md"
log "results in $OUT"
