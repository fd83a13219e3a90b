#!/usr/bin/env bash
# bench/snapshot.sh: how long snapshots take to save and to restore, Tessera
# beside etcd v3.7.3, with the same data, on one machine.
#
# For each size S (MiB) in --sizes, S MiB of --value-size values under
# sequential keys are written into:
#   - etcd, one member: `etcdctl snapshot save` is timed, then `etcdutl
#     snapshot restore` of the file into a new data directory, then etcd
#     started on it until it serves a read;
#   - Tessera, one node, the keys split into --ranges ranges:
#     `etcdctl snapshot save` against it is timed, then `tessera ctl
#     restore` of the file into a new data directory, then the node started
#     on it until it serves a read (member 1 loads the snapshot first);
#   - Tessera again, from etcd's file: `tessera ctl import-etcd-snapshot`
#     and a start until it serves a read.
# Every restored store is checked to hold the loaded key count.
#
# Writes results.md (one row per size and system) and the servers' logs.
# Processes it starts are stopped when it exits, however it exits.
#
# Usage: bench/snapshot.sh [--sizes "256 1024"] [--ranges N] [--value-size B] [--out DIR]
#   --sizes LIST        data written per run, in MiB (default "256")
#   --ranges N          ranges Tessera's keys are split into (default 12)
#   --value-size B      value size in bytes (default 4096)
#   --out DIR           where results go (default: $CACHE/results/snapshot-<date>)
# Environment:
#   TESSERA_BENCH_CACHE      cache for the etcd builds (default ~/.cache/tessera-bench)
#   TESSERA_BENCH_PORT_BASE  first of the 127.0.0.1 ports used (default 16000)
set -euo pipefail

SIZES="256"
RANGES=12
VALUE_SIZE=4096
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) SIZES="$2"; shift ;;
    --ranges) RANGES="$2"; shift ;;
    --value-size) VALUE_SIZE="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "snapshot.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for s in $SIZES; do [[ "$s" =~ ^[1-9][0-9]*$ ]] || { echo "snapshot.sh: --sizes takes MiB counts, got $s" >&2; exit 2; }; done
[[ "$RANGES" =~ ^[1-9][0-9]*$ ]] || { echo "snapshot.sh: --ranges must be a positive integer" >&2; exit 2; }
[[ "$VALUE_SIZE" =~ ^[1-9][0-9]*$ ]] || { echo "snapshot.sh: --value-size must be a byte count" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${TESSERA_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tessera-bench}
PORT_BASE=${TESSERA_BENCH_PORT_BASE:-16000}
OUT=${OUT:-$CACHE/results/snapshot-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tessera-snapshot.XXXXXX")
LOG_NAME=snapshot
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

trap cleanup_work EXIT
trap 'exit 130' INT TERM

build_etcd
build_tessera
build_etcd_tool etcdutl go.etcd.io/etcd/etcdutl/v3
ETCDUTL=$ETCD_DIR/etcdutl
(cd "$ROOT" && go build -o "$WORK/bin/etcdctl" go.etcd.io/etcd/etcdctl/v3)
ETCDCTL=$WORK/bin/etcdctl
QUOTA=17179869184

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
keys_of() { echo $(($1 * 1048576 / VALUE_SIZE)); }
mib_of() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.0f", b / 1048576 }'; }

load() { # load MIB ENDPOINT
  "$TESSBENCH" put --endpoints "$2" --sequential-keys --key-space 0 --total "$(keys_of "$1")" \
    --value-size "$VALUE_SIZE" --clients 64 --conns 8 >"$WORK/load.out" 2>&1 ||
    die "loading $1 MiB failed: $(tail -3 "$WORK/load.out")"
}

# serving ENDPOINT WANT: until a count of the keys answers WANT (10 min at
# most); prints the seconds it took.
serving() {
  local t0 got deadline=$((SECONDS + 600))
  t0=$(now)
  until got=$("$ETCDCTL" --endpoints "$1" get p --prefix --count-only -w fields 2>/dev/null | awk '/"Count"/ { print $3 }') && [ "$got" = "$2" ]; do
    [ $SECONDS -lt $deadline ] || die "$1 does not serve $2 keys after 600s (it answers ${got:-nothing})"
    sleep 0.2
  done
  since "$t0"
}

port() { echo $((PORT_BASE + $1)); }

run_etcd() { # run_etcd MIB
  local mib=$1 client peer keys t0 save restore start
  keys=$(keys_of "$mib")
  client=$(port 0); peer=$(port 1)
  start "etcd-$mib" "$ETCD" --name m1 --data-dir "$WORK/etcd" --quota-backend-bytes $QUOTA \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "m1=http://127.0.0.1:$peer" --log-level error
  local pid=$LAST_PID
  wait_listening "$pid" "$client" "etcd-$mib"
  load "$mib" "127.0.0.1:$client"
  t0=$(now)
  "$ETCDCTL" --endpoints "127.0.0.1:$client" snapshot save "$WORK/etcd-$mib.db" >/dev/null 2>&1 || die "etcdctl snapshot save (etcd) failed"
  save=$(since "$t0")
  stop_pids "$pid"
  t0=$(now)
  "$ETCDUTL" snapshot restore "$WORK/etcd-$mib.db" --data-dir "$WORK/etcd-restored" --name m1 \
    --initial-cluster "m1=http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" >/dev/null 2>&1 || die "etcdutl snapshot restore failed"
  start "etcd-$mib-restored" "$ETCD" --name m1 --data-dir "$WORK/etcd-restored" --quota-backend-bytes $QUOTA \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "m1=http://127.0.0.1:$peer" --log-level error
  pid=$LAST_PID
  serving "127.0.0.1:$client" "$keys" >/dev/null
  restore=$(since "$t0")
  stop_pids "$pid"
  echo "| $mib | etcd | $save | $(mib_of "$WORK/etcd-$mib.db") | $restore (etcdutl, start) |" >>"$WORK/rows"
  cp "$WORK"/etcd-"$mib"*.log "$OUT/" 2>/dev/null || true
  rm -rf "$WORK/etcd" "$WORK/etcd-restored"
}

start_node() { # start_node NAME DATADIR: one Tessera node on the ports
  local client peer
  client=$(port 100); peer=$(port 101)
  start "$1" "$TESSERA" --name n1 --data-dir "$2" --quota-backend-bytes $QUOTA \
    --listen-client-urls "http://127.0.0.1:$client" --listen-peer-urls "http://127.0.0.1:$peer"
  wait_listening "$LAST_PID" "$client" "$1"
}

# restore_tessera COMMAND FILE NAME KEYS: `tessera ctl COMMAND FILE` into a
# new data directory, a node started on it, until it serves KEYS keys;
# prints the seconds it all took.
restore_tessera() {
  local t0 pid
  t0=$(now)
  "$TESSERA" ctl "$1" "$2" --data-dir "$WORK/$3" >/dev/null
  start_node "$3" "$WORK/$3"
  pid=$LAST_PID
  serving "127.0.0.1:$(port 100)" "$4" >/dev/null
  since "$t0"
  stop_pids "$pid"
  rm -rf "${WORK:?}/$3"
}

run_tessera() { # run_tessera MIB
  local mib=$1 ep keys t0 save restore import k pid
  keys=$(keys_of "$mib")
  ep=127.0.0.1:$(port 100)
  start_node "tessera-$mib" "$WORK/tessera"
  pid=$LAST_PID
  wait_serving "$ep"
  for k in $(seq $((RANGES - 1))); do
    "$TESSERA" ctl --endpoints "$ep" split "$(printf 'p/%014d' $((k * keys / RANGES)))" >/dev/null
  done
  load "$mib" "$ep"
  t0=$(now)
  "$ETCDCTL" --endpoints "$ep" snapshot save "$WORK/tessera-$mib.db" >/dev/null 2>&1 || die "etcdctl snapshot save (tessera) failed"
  save=$(since "$t0")
  stop_pids "$pid"
  restore=$(restore_tessera restore "$WORK/tessera-$mib.db" "tessera-$mib-restored" "$keys")
  echo "| $mib | Tessera ($RANGES ranges) | $save | $(mib_of "$WORK/tessera-$mib.db") | $restore (ctl restore, start, load) |" >>"$WORK/rows"
  import=$(restore_tessera import-etcd-snapshot "$WORK/etcd-$mib.db" "tessera-$mib-imported" "$keys")
  echo "| $mib | Tessera, from etcd's file | | | $import (ctl import-etcd-snapshot, start, load) |" >>"$WORK/rows"
  cp "$WORK"/tessera-"$mib"*.log "$OUT/" 2>/dev/null || true
  rm -rf "$WORK/tessera"
}

: >"$WORK/rows"
for mib in $SIZES; do
  log "$mib MiB: etcd"
  run_etcd "$mib"
  log "$mib MiB: tessera"
  run_tessera "$mib"
  rm -f "$WORK"/*.db
done
{
  echo "# Snapshot save and restore"
  echo
  echo "Tessera $TESSERA_BUILD beside etcd $ETCD_VERSION; $(nproc) cores; values of $VALUE_SIZE bytes under sequential keys."
  echo
  echo "| MiB loaded | system | snapshot save (s) | file (MiB) | restore until serving (s) |"
  echo "|---|---|---|---|---|"
  cat "$WORK/rows"
} >"$OUT/results.md"
cat "$OUT/results.md"
log "results in $OUT"
