#!/usr/bin/env bash
# bench/compare.sh: Tessera and etcd v3.7.3 side by side, on this machine, in
# one run.
#
# Builds etcd v3.7.3 from the Go module proxy into a cache outside the
# repository (nothing of etcd is committed), builds tessera and tessbench,
# starts etcd and Tessera in the same topologies (1 node, then 3 nodes on
# 127.0.0.1) with their data in a temporary directory, runs every workload
# against each in alternation (plus the empty-handler ceiling,
# `tessbench null-server`, for the KV workloads), and writes results.md (the
# Markdown tables), one JSON file per run and SVG plots. Everything it starts
# is stopped when it exits, however it exits.
#
# Usage: bench/compare.sh [--quick] [--pin] [--tls] [--topologies "1 3"] [--only REGEX] [--out DIR]
#   --quick       small counts (a couple of minutes; for development and tests)
#   --pin         every server process (etcd members, Tessera nodes, the
#                 empty-handler server) on CPU 0 and tessbench on CPU 1
#                 (taskset -c; needs 2 CPUs), and results.md gains a table of
#                 server CPU-seconds per 10k operations, summed over the
#                 topology's server processes, beside throughput
#   --tls         both systems with mutual TLS on every connection: clients
#                 (--cert-file, --key-file, --trusted-ca-file,
#                 --client-cert-auth) and peers (the --peer- flags), with
#                 certificates made by openssl; etcd serves HTTP on a port
#                 of its own (--listen-client-http-urls), which keeps gRPC
#                 on grpc-go's server; no empty-handler runs
#   --topologies  which cluster sizes to run (default "1 3")
#   --only REGEX  run only the cases whose name matches (grep -E), e.g.
#                 --only '^watch' for the watch fan-out cases
#   --out DIR     where results go (default: $CACHE/results/<date>)
# Tessera's watch prefix "w/" is split into 4 ranges before the cases run,
# and txn-span's prefix "s/" into two at "s/m", so that each of its Txns
# spans two ranges.
# The list case runs last, each server in a fresh cluster of its own with the
# other stopped: on this kind of virtual machine, memory touched for the first
# time while another process holds gigabytes costs several times more per
# page, so whichever server listed second (its 400 MB answer and the client's
# copy of it) lost seconds to the first one's heap.
# The fan-out cases (watch-10k-*, watch-1k-*) read the Watch streams directly
# (tessbench --watch-client grpc), so that the watching client, on the same
# two cores, does not set the latency; the -clientv3 cases watch through the
# etcd client, as applications do.
# Environment:
#   TESSERA_BENCH_CACHE      cache for the etcd build (default ~/.cache/tessera-bench)
#   TESSERA_FLAGS            extra flags for every Tessera server (e.g.
#                            "--raft-step-workers 16"; split on spaces)
#   TESSERA_BENCH_PORT_BASE  first of the 127.0.0.1 ports used (default 14000;
#                            uses BASE..BASE+250)
set -euo pipefail

QUICK=0
PIN=0
TLS=0
ONLY=""
TOPOLOGIES="1 3"
OUT=""
ARGS="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --pin) PIN=1 ;;
    --tls) TLS=1 ;;
    --topologies) TOPOLOGIES="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# --pin: servers on CPU 0, the load generator on CPU 1.
SERVER_CPU=()
CLIENT_CPU=()
if [ $PIN = 1 ]; then
  command -v taskset >/dev/null || { echo "compare.sh: --pin needs taskset (util-linux), which is not installed" >&2; exit 2; }
  [ "$(nproc)" -ge 2 ] || { echo "compare.sh: --pin needs 2 CPUs, have $(nproc)" >&2; exit 2; }
  SERVER_CPU=(taskset -c 0)
  CLIENT_CPU=(taskset -c 1)
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${TESSERA_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tessera-bench}
PORT_BASE=${TESSERA_BENCH_PORT_BASE:-14000}
OUT=${OUT:-$CACHE/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tessera-compare.XXXXXX")
LOG_NAME=compare
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

cleanup() {
  local rc=$?
  if [ ${#PIDS[@]} -gt 0 ]; then stop_pids "${PIDS[@]}"; fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- builds ------------------------------------------------------------------
build_etcd
build_tessera
SCHEME=http
SERVER_TLS=()
if [ $TLS = 1 ]; then
  make_certs "$WORK/certs"
  SCHEME=https
  SERVER_TLS=(--cert-file "$WORK/certs/server.pem" --key-file "$WORK/certs/server-key.pem"
    --trusted-ca-file "$WORK/certs/ca.pem" --client-cert-auth
    --peer-cert-file "$WORK/certs/server.pem" --peer-key-file "$WORK/certs/server-key.pem"
    --peer-trusted-ca-file "$WORK/certs/ca.pem" --peer-client-cert-auth)
  CLIENT_TLS=(--cacert "$WORK/certs/ca.pem" --cert "$WORK/certs/client.pem" --key "$WORK/certs/client-key.pem")
fi

# --- servers -----------------------------------------------------------------
# Ports: etcd BASE+10i (client) / +1 (peer), Tessera BASE+100+10i, null BASE+200.
QUOTA=$((8 << 30)) # both: room for the 1M-key and list loads without NOSPACE
ENDPOINTS=""
SERVER_PIDS=""

start_cluster() { # start_cluster etcd|tessera N: sets ENDPOINTS, SERVER_PIDS
  local kind=$1 n=$2 offset=0 i cluster="" clients=() pids=()
  [ "$kind" = tessera ] && offset=100
  for i in $(seq "$n"); do
    cluster+="${cluster:+,}m$i=$SCHEME://127.0.0.1:$((PORT_BASE + offset + 10 * i + 1))"
  done
  for i in $(seq "$n"); do
    local client=$((PORT_BASE + offset + 10 * i)) peer=$((PORT_BASE + offset + 10 * i + 1))
    port_free "$client" && port_free "$peer" || die "port $client or $peer on 127.0.0.1 is taken (set TESSERA_BENCH_PORT_BASE)"
    local common=(--name "m$i" --data-dir "$WORK/data/$kind-$n/m$i"
      --listen-client-urls "$SCHEME://127.0.0.1:$client" --advertise-client-urls "$SCHEME://127.0.0.1:$client"
      --listen-peer-urls "$SCHEME://127.0.0.1:$peer" --initial-advertise-peer-urls "$SCHEME://127.0.0.1:$peer"
      --initial-cluster "$cluster" --initial-cluster-state new --quota-backend-bytes "$QUOTA" --log-level error
      ${SERVER_TLS[@]+"${SERVER_TLS[@]}"})
    if [ "$kind" = etcd ]; then
      local etcd_http=()
      # etcd serves gRPC through Go's HTTP/2 handler (ServeHTTP) when one
      # TLS port serves HTTP too; HTTP on a port of its own leaves the client
      # port to grpc-go's own server, etcd's faster configuration.
      [ $TLS = 0 ] || etcd_http=(--listen-client-http-urls "https://127.0.0.1:$((client + 2))")
      start "$kind-$n-m$i" ${SERVER_CPU[@]+"${SERVER_CPU[@]}"} "$ETCD" "${common[@]}" ${etcd_http[@]+"${etcd_http[@]}"} --initial-cluster-token tessbench
    else
      # shellcheck disable=SC2086 # TESSERA_FLAGS is split on purpose
      start "$kind-$n-m$i" ${SERVER_CPU[@]+"${SERVER_CPU[@]}"} "$TESSERA" "${common[@]}" ${TESSERA_FLAGS:-}
    fi
    pids+=("$LAST_PID")
    clients+=("127.0.0.1:$client")
  done
  ENDPOINTS=$(IFS=,; echo "${clients[*]}")
  SERVER_PIDS=$(IFS=,; echo "${pids[*]}")
  # Ready when every member takes a write.
  wait_serving "${clients[@]}"
  log "$kind $n-node up: $ENDPOINTS (pids $SERVER_PIDS)"
}

stop_cluster() { # stop_cluster PIDS(comma-separated) KIND N
  local pids
  IFS=, read -ra pids <<<"$1"
  stop_pids "${pids[@]}"
  rm -rf "$WORK/data/$2-$3"
}

# --- workloads ---------------------------------------------------------------
# One case per line: NAME|WORKLOAD ARGS|TOPOLOGIES|FLAGS, FLAGS "null" (run
# against the empty-handler server too) or "alone" (each server in a fresh
# cluster, the other stopped). All with 100 clients over 10 connections.
if [ $QUICK = 1 ]; then
  CASES="
put|put --total 5000 --sequential-keys --key-space 0|1 3|null
put-mem|put --total 20000 --sequential-keys --key-space 0|1|
range-linearizable|range --total 5000 --key-space 1000|1 3|null
range-serializable|range --total 5000 --key-space 1000 --consistency s|1 3|
txn-put|txn-put --total 5000|1 3|null
txn-span|txn-span --total 2000 --key-space 1000|1 3|
watch|watch --total 1000 --watchers 100 --watch-streams 10|1 3|
lease|lease --total 2000|1 3|
k8s|k8s --total 2000 --k8s-objects 500|1 3|
list|list --objects 2000 --value-size 4096|1|alone"
else
  CASES="
put|put --total 100000 --sequential-keys --key-space 0|1 3|null
put-1M|put --total 1000000 --sequential-keys --key-space 0|1|
range-linearizable|range --total 100000 --key-space 1000|1 3|null
range-serializable|range --total 100000 --key-space 1000 --consistency s|1 3|
txn-put|txn-put --total 100000|1 3|null
txn-span|txn-span --total 20000 --key-space 100000|1 3|
watch|watch --total 5000 --rate 1000 --watchers 100 --watch-streams 10|1 3|
watch-10k-at-10|watch --duration 20s --rate 10 --watchers 10000 --watch-streams 100 --watch-client grpc|1|
watch-1k-at-100|watch --duration 20s --rate 100 --watchers 1000 --watch-streams 100 --watch-client grpc|1|
watch-1k-at-300|watch --duration 20s --rate 300 --watchers 1000 --watch-streams 100 --watch-client grpc|1|
watch-1k-at-400|watch --duration 20s --rate 400 --watchers 1000 --watch-streams 100 --watch-client grpc|1|
watch-1k-at-600|watch --duration 20s --rate 600 --watchers 1000 --watch-streams 100 --watch-client grpc|1|
watch-10k-at-10-clientv3|watch --duration 20s --rate 10 --watchers 10000 --watch-streams 100|1|
watch-1k-at-100-clientv3|watch --duration 20s --rate 100 --watchers 1000 --watch-streams 100|1|
lease|lease --total 20000|1 3|
k8s|k8s --total 20000 --k8s-objects 2000|1 3|
list|list --objects 100000 --value-size 4096|1|alone"
fi

FAILURES=$WORK/failures
: >"$FAILURES"
RUN=0
bench() { # bench TARGET TOPOLOGY CASE ENDPOINTS PIDS WORKLOAD ARGS...
  local target=$1 topo=$2 name=$3 eps=$4 pids=$5; shift 5
  RUN=$((RUN + 1))
  # Numbered so the report lists cases in the order they ran.
  local file rc=0
  file=$(printf '%s/%02d-%s-%s-%s.json' "$OUT" "$RUN" "$topo" "$name" "$target")
  log "$topo $name: $target"
  local tlsflags=()
  [ "$target" = null ] || tlsflags=(${CLIENT_TLS[@]+"${CLIENT_TLS[@]}"})
  ${CLIENT_CPU[@]+"${CLIENT_CPU[@]}"} "$TESSBENCH" "$@" ${tlsflags[@]+"${tlsflags[@]}"} --clients 100 --conns 10 --endpoints "$eps" --server-pids "$pids" \
    --case "$name" --target "$target" --topology "$topo" --json >"$file" 2>"$WORK/tessbench.err" || rc=$?
  case $rc in
    0) ;;
    3) log "  not supported by $target: $(jq -r .unsupported "$file" 2>/dev/null || cat "$WORK/tessbench.err")" ;;
    *) rm -f "$file"
       echo "- $topo $name against $target failed: $(tr '\n' ' ' <"$WORK/tessbench.err")" >>"$FAILURES"
       log "  FAILED: $(cat "$WORK/tessbench.err")" ;;
  esac
}

# The watch workload's keys (w/ + 14 digits) over 4 Tessera ranges, and
# txn-span's over two.
split_prefixes() { # split_prefixes ENDPOINTS
  local k
  for k in 25000 50000 75000; do
    "$TESSERA" ctl --endpoints "${1%%,*}" ${CLIENT_TLS[@]+"${CLIENT_TLS[@]}"} split "$(printf 'w/%014d' "$k")" >/dev/null
  done
  "$TESSERA" ctl --endpoints "${1%%,*}" ${CLIENT_TLS[@]+"${CLIENT_TLS[@]}"} split s/m >/dev/null
}

NULL_PORT=$((PORT_BASE + 200))
port_free "$NULL_PORT" || die "port $NULL_PORT on 127.0.0.1 is taken (set TESSERA_BENCH_PORT_BASE)"
start null ${SERVER_CPU[@]+"${SERVER_CPU[@]}"} "$TESSBENCH" null-server --listen "127.0.0.1:$NULL_PORT"
NULL_PID=$LAST_PID

for n in $TOPOLOGIES; do
  topo="$n-node"
  start_cluster etcd "$n"; ETCD_EPS=$ENDPOINTS; ETCD_PIDS=$SERVER_PIDS
  start_cluster tessera "$n"; TESS_EPS=$ENDPOINTS; TESS_PIDS=$SERVER_PIDS
  split_prefixes "$TESS_EPS"
  i=0
  ALONE=()
  while IFS='|' read -r name args topos flags; do
    [ -n "$name" ] || continue
    case " $topos " in *" $n "*) ;; *) continue ;; esac
    if [ -n "$ONLY" ] && ! grep -qE "$ONLY" <<<"$name"; then continue; fi
    if [ "$flags" = alone ]; then ALONE+=("$name|$args"); continue; fi
    # shellcheck disable=SC2086 # args is a word list
    set -- $args
    # Alternate which server goes first, so drift on the machine (page
    # cache, frequency, a neighbour's load) does not favour one.
    if [ $((i % 2)) = 0 ]; then
      bench etcd "$topo" "$name" "$ETCD_EPS" "$ETCD_PIDS" "$@"
      bench tessera "$topo" "$name" "$TESS_EPS" "$TESS_PIDS" "$@"
    else
      bench tessera "$topo" "$name" "$TESS_EPS" "$TESS_PIDS" "$@"
      bench etcd "$topo" "$name" "$ETCD_EPS" "$ETCD_PIDS" "$@"
    fi
    if [ "$flags" = null ] && [ $TLS = 0 ]; then
      bench null "$topo" "$name" "127.0.0.1:$NULL_PORT" "$NULL_PID" "$@"
    fi
    i=$((i + 1))
  done <<<"$CASES"
  stop_cluster "$ETCD_PIDS" etcd "$n"
  stop_cluster "$TESS_PIDS" tessera "$n"
  for c in ${ALONE[@]+"${ALONE[@]}"}; do
    name=${c%%|*}
    # shellcheck disable=SC2086 # args is a word list
    set -- ${c#*|}
    for target in etcd tessera; do
      start_cluster "$target" "$n"
      [ "$target" = tessera ] && split_prefixes "$ENDPOINTS"
      bench "$target" "$topo" "$name" "$ENDPOINTS" "$SERVER_PIDS" "$@"
      stop_cluster "$SERVER_PIDS" "$target" "$n"
    done
  done
done

# --- report ------------------------------------------------------------------
{
  echo "# Tessera vs etcd $ETCD_VERSION"
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) by \`bench/compare.sh $ARGS\` at Tessera $TESSERA_BUILD${TESSERA_FLAGS:+ with Tessera flags \`$TESSERA_FLAGS\`}."
  echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, Linux $(uname -r), $(go version | cut -d' ' -f3)."
  if [ $PIN = 1 ]; then
    echo "Pinned: every server process on CPU 0, tessbench on CPU 1 (taskset). 100 clients over 10 connections; values 256 B unless stated."
  else
    echo "Clients and servers share the machine. 100 clients over 10 connections; values 256 B unless stated."
  fi
  if [ $TLS = 1 ]; then
    echo "Mutual TLS (ECDSA P-256 certificates) between clients and servers and between members, on both systems."
  fi
  echo "ops/s counts completed requests (watch: Puts, with every watcher seeing each; lease: grant+keepalive+revoke cycles; list: loaded objects);"
  echo "latency is per request (watch: from a Put's response to each watcher's event)."
  echo
  REPORT_FLAGS=()
  [ $PIN = 0 ] || REPORT_FLAGS=(--server-cost)
  "$TESSBENCH" report --out "$OUT" ${REPORT_FLAGS[@]+"${REPORT_FLAGS[@]}"} "$OUT"/*.json
  if [ -s "$FAILURES" ]; then
    echo "### Failed runs"
    echo
    cat "$FAILURES"
    echo
  fi
  echo "Plots: $(cd "$OUT" && ls ./*.svg | tr '\n' ' ')"
} >"$OUT/results.md.tmp" 2>"$WORK/report.err" || { cat "$WORK/report.err" >&2; die "report failed"; }
mv "$OUT/results.md.tmp" "$OUT/results.md"
cat "$OUT/results.md"
log "results in $OUT"
