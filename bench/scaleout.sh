#!/usr/bin/env bash
# bench/scaleout.sh: how Tessera's write throughput grows with nodes when
# every node has a fixed share of a CPU, beside etcd v3.7.3, on one machine.
#
# Every server process runs in a cgroup (v1) CPU group of its own, capped at
# --quota of a core (cpu.cfs_period_us --period, default 100000 µs, and
# cpu.cfs_quota_us quota × period); the load generator, tessbench, runs
# outside the caps. In one run it measures the put and txn-put workloads against, in this order:
#   - Tessera, 3 nodes, then etcd, 3 members;
#   - Tessera, 6 nodes, then etcd, 5 members.
# A Tessera cluster is started as deploy/local-cluster.sh does (the first
# node alone, the others with --join); the key prefixes of both workloads
# (p/ and t/) are then split into --ranges ranges each (default 12) with
# `tessera ctl split`, and the run waits until placement has spread the replicas: `tessera ctl
# nodes --json` showing, twice in a row, every node's replica count and
# leader count within one of every other's, with every range holding its
# three replicas (at most --balance-timeout; past it the run goes on and
# the report says so). Each case is a 3 s warm-up (not counted) and a run
# of --duration; keys are random in a space of 1.2M per workload, so writes
# spread over those ranges.
#
# Writes results.md (a Markdown table per system and topology, the
# scale-out ratios against their targets, the servers' CPU against their
# caps, and the placement seen before and after each Tessera cluster's
# runs), one JSON file per run (tessbench --json), `tessera ctl nodes
# --json` before and after each Tessera cluster's runs, and the servers'
# logs. Needs root (to make cgroups) and the cgroup v1 cpu controller
# mounted. Processes and cgroups it makes are removed when it exits,
# however it exits.
#
# Usage: bench/scaleout.sh [--quota F] [--duration D] [--clients N] [--conns N]
#                          [--value-size B] [--balance-timeout S] [--out DIR]
#                          [--clusters LIST] [--profile S] [--period US]
#                          [--ranges N] [--rate R]
#   --quota F            fraction of a core per server process (default 0.25)
#   --duration D         measured time per case (default 20s)
#   --clients N          tessbench clients (default 100)
#   --conns N            gRPC connections they share (default 10)
#   --value-size B       value size in bytes (default 256)
#   --balance-timeout S  longest wait for placement to spread a Tessera
#                        cluster, in seconds (default 300)
#   --out DIR            where results go (default: $CACHE/results/scaleout-<date>)
#   --clusters LIST      the clusters measured, in order (default
#                        "tessera:3 etcd:3 tessera:6 etcd:5")
#   --profile S          take an S-second CPU profile of every Tessera node
#                        during each Tessera case, from the middle of the
#                        measured run (profiles/ in the results; S at most
#                        the duration less 2 s)
#   --period US          the caps' accounting period in µs (default 100000,
#                        the kernel's): a process uses its quota × period of
#                        CPU time, then waits for the next period
#   --ranges N           ranges each workload's prefix is split into (default 12)
#   --rate R             requests per second over all clients (default 0: as
#                        fast as they go)
# Environment:
#   TESSERA_BENCH_CACHE      cache for the etcd build (default ~/.cache/tessera-bench)
#   TESSERA_FLAGS            extra flags for every Tessera server (split on spaces)
#   TESSERA_BENCH_PORT_BASE  first of the 127.0.0.1 ports used (default 15000;
#                            uses BASE+10 … BASE+161)
#   TESSERA_BENCH_CGROUP_CPU the cgroup v1 cpu hierarchy (default /sys/fs/cgroup/cpu)
set -euo pipefail

QUOTA=0.25
DURATION=20s
CLIENTS=100
CONNS=10
VALUE_SIZE=256
BALANCE_TIMEOUT=300
OUT=""
CLUSTERS="tessera:3 etcd:3 tessera:6 etcd:5"
PROFILE=0
PERIOD_US=100000
RANGES=12
RATE=0
ARGS="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --quota) QUOTA="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --clients) CLIENTS="$2"; shift ;;
    --conns) CONNS="$2"; shift ;;
    --value-size) VALUE_SIZE="$2"; shift ;;
    --balance-timeout) BALANCE_TIMEOUT="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --clusters) CLUSTERS="$2"; shift ;;
    --profile) PROFILE="$2"; shift ;;
    --period) PERIOD_US="$2"; shift ;;
    --ranges) RANGES="$2"; shift ;;
    --rate) RATE="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "scaleout.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

usage_error() { echo "scaleout.sh: $*" >&2; exit 2; }
go_seconds() { # go_seconds DURATION: a Go duration (20s, 1m30s, 500ms) in seconds
  awk -v d="$1" 'BEGIN {
    while (match(d, /^[0-9.]+(ms|s|m|h)/)) {
      part = substr(d, 1, RLENGTH); d = substr(d, RLENGTH + 1)
      unit = part; sub(/^[0-9.]+/, "", unit)
      t += (part + 0) * (unit == "ms" ? 0.001 : unit == "s" ? 1 : unit == "m" ? 60 : 3600)
    }
    print t + 0 }'
}
[[ "$PERIOD_US" =~ ^[1-9][0-9]*$ && "$PERIOD_US" -ge 1000 && "$PERIOD_US" -le 1000000 ]] ||
  usage_error "--period must be microseconds between 1000 and 1000000, got $PERIOD_US"
QUOTA_US=$(awk -v q="$QUOTA" -v p=$PERIOD_US 'BEGIN { if (q + 0 > 0 && q + 0 <= 64) printf "%d", q * p; else print "bad" }')
[[ "$QUOTA_US" =~ ^[0-9]+$ && "$QUOTA_US" -ge 1000 ]] || usage_error "--quota × --period must be at least 1000 µs, got $QUOTA × $PERIOD_US"
[[ "$DURATION" =~ ^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$ ]] || usage_error "--duration takes a Go duration such as 20s, got $DURATION"
[[ "$CLIENTS" =~ ^[1-9][0-9]*$ ]] || usage_error "--clients must be a positive integer, got $CLIENTS"
[[ "$CONNS" =~ ^[1-9][0-9]*$ && "$CONNS" -le "$CLIENTS" ]] || usage_error "--conns must be between 1 and --clients, got $CONNS"
[[ "$VALUE_SIZE" =~ ^[0-9]+$ ]] || usage_error "--value-size must be a byte count, got $VALUE_SIZE"
[[ "$BALANCE_TIMEOUT" =~ ^[0-9]+$ ]] || usage_error "--balance-timeout must be seconds, got $BALANCE_TIMEOUT"
for cluster in $CLUSTERS; do
  [[ "$cluster" =~ ^(tessera|etcd):[1-9][0-9]?$ ]] || usage_error "--clusters takes tessera:N and etcd:N, got $cluster"
done
[[ "$RATE" =~ ^[0-9]+$ ]] || usage_error "--rate must be whole requests per second, got $RATE"
[[ "$RANGES" =~ ^[1-9][0-9]?$ ]] || usage_error "--ranges must be between 1 and 99, got $RANGES"
[[ "$PROFILE" =~ ^[0-9]+$ ]] || usage_error "--profile takes whole seconds, got $PROFILE"
awk -v d="$(go_seconds "$DURATION")" -v p="$PROFILE" 'BEGIN { exit !(p <= d - 2) }' || [ "$PROFILE" = 0 ] ||
  usage_error "--profile $PROFILE does not fit in a --duration of $DURATION (at most the duration less 2 s)"
if [ "$PROFILE" -gt 0 ]; then export TESSERA_PPROF=1; fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${TESSERA_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tessera-bench}
PORT_BASE=${TESSERA_BENCH_PORT_BASE:-15000}
CGROUP_CPU=${TESSERA_BENCH_CGROUP_CPU:-/sys/fs/cgroup/cpu}
[[ -w "$CGROUP_CPU" && -f "$CGROUP_CPU/cpu.cfs_quota_us" ]] ||
  usage_error "needs the cgroup v1 cpu controller, writable, at $CGROUP_CPU (run as root, or set TESSERA_BENCH_CGROUP_CPU)"
OUT=${OUT:-$CACHE/results/scaleout-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tessera-scaleout.XXXXXX")
LOG_NAME=scaleout
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# Every server's cgroup is a child of this one, made here and removed on exit.
CGROUP=$CGROUP_CPU/tessera-scaleout.$$
remove_cgroups() {
  local dir
  [ -d "$CGROUP" ] || return 0
  for dir in "$CGROUP"/*/; do
    [ -d "$dir" ] && { rmdir "$dir" 2>/dev/null || log "could not remove cgroup $dir"; }
  done
  rmdir "$CGROUP" 2>/dev/null || log "could not remove cgroup $CGROUP"
}
cleanup() {
  local rc=$?
  if [ ${#PIDS[@]} -gt 0 ]; then stop_pids "${PIDS[@]}"; fi
  remove_cgroups
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir "$CGROUP"

# start_capped NAME CMD...: start CMD in a new CPU cgroup NAME capped at
# --quota; the process enters the group before it execs the server.
start_capped() {
  local name=$1; shift
  local group=$CGROUP/$name
  mkdir "$group"
  echo $PERIOD_US >"$group/cpu.cfs_period_us"
  echo "$QUOTA_US" >"$group/cpu.cfs_quota_us"
  # shellcheck disable=SC2016 # expanded by the inner shell
  start "$name" bash -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' capped "$group" "$@"
}

build_etcd
build_tessera
SERVER_START=start_capped
after_stop() { rmdir "$CGROUP/$1" 2>/dev/null || log "could not remove cgroup $CGROUP/$1"; }

# --- keys, splits and placement ----------------------------------------------
# put writes p/ and txn-put t/ followed by 14 digits (16-byte keys), random
# in KEY_SPACE; each prefix is cut into RANGES ranges of equal key counts.
KEY_SPACE=1200000

split_prefixes() { # split_prefixes: ENDPOINTS's cluster
  local prefix k key tries
  for prefix in p/ t/; do
    for k in $(seq $((RANGES - 1))); do
      key=$(printf '%s%014d' "$prefix" $((k * KEY_SPACE / RANGES)))
      tries=0
      until "$TESSERA" ctl --endpoints "$ENDPOINTS" split "$key" >/dev/null 2>"$WORK/split.err"; do
        tries=$((tries + 1))
        [ $tries -lt 20 ] || die "tessera ctl split $key: $(cat "$WORK/split.err")"
        sleep 1
      done
    done
  done
}

PLACEMENT=$WORK/placement.md
: >"$PLACEMENT"
wait_balanced() { # wait_balanced N: poll until balanced twice in a row, bounded
  local n=$1 start=$SECONDS ok=0 file=$OUT/nodes-tessera-$1-before.json
  while :; do
    if nodes_json >"$file.tmp" && balanced "$file.tmp" "$n" && all_replicated; then
      ok=$((ok + 1))
      if [ $ok -ge 2 ]; then
        mv "$file.tmp" "$file"
        log "tessera $n nodes: placement spread after $((SECONDS - start))s: $(spread_of "$file")"
        echo "- Tessera $n nodes: spread after $((SECONDS - start)) s ($(spread_of "$file"), $(ranges_count) ranges)." >>"$PLACEMENT"
        return
      fi
    else
      ok=0
    fi
    if [ $((SECONDS - start)) -ge "$BALANCE_TIMEOUT" ]; then
      mv "$file.tmp" "$file"
      log "tessera $n nodes: placement NOT spread after ${BALANCE_TIMEOUT}s: $(spread_of "$file" 2>/dev/null || echo '(no answer)'); measuring anyway"
      echo "- Tessera $n nodes: **not spread** after the ${BALANCE_TIMEOUT} s allowed ($(spread_of "$file" 2>/dev/null || echo 'no answer from ctl nodes'), $(ranges_count) ranges); measured as it was." >>"$PLACEMENT"
      return
    fi
    sleep 2
  done
}

# --- measuring ---------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # cpu_ticks PID...: utime+stime of each, one a line
  local pid
  for pid in "$@"; do
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0
  done
}
machine_ticks() { awk '/^cpu / { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6 }' /proc/stat; }
now() { date +%s.%N; }

# tessbench's own CPU, when GNU time is there to count it.
CLIENT_TIME=()
if [ -x /usr/bin/time ]; then CLIENT_TIME=(/usr/bin/time -f '%U %S' -o "$WORK/client.time"); fi

FAILURES=$WORK/failures
: >"$FAILURES"
ROWS=$WORK/rows
: >"$ROWS"
RUN=0
case_args() { # case_args WORKLOAD: sets ARGV to the tessbench flags of a case
  ARGV=("$1" --key-space "$KEY_SPACE" --value-size "$VALUE_SIZE" --clients "$CLIENTS" --conns "$CONNS")
  if [ "$RATE" -gt 0 ]; then ARGV+=(--rate "$RATE"); fi
}

bench() { # bench TARGET N WORKLOAD: warm up, then measure, against the running cluster
  local target=$1 n=$2 workload=$3 topo="$2-node" file rc=0 pids before after t0 t1 m0 m1
  RUN=$((RUN + 1))
  file=$(printf '%s/%02d-%s-%s-%s.json' "$OUT" "$RUN" "$target" "$topo" "$workload")
  case_args "$workload"
  "$TESSBENCH" "${ARGV[@]}" --endpoints "$ENDPOINTS" --duration 3s --seed $((RUN + 1000)) \
    >/dev/null 2>"$WORK/tessbench.err" || log "  warm-up failed: $(tr '\n' ' ' <"$WORK/tessbench.err")"
  log "$target $topo $workload"
  IFS=, read -ra pids <<<"$SERVER_PIDS"
  mapfile -t before < <(cpu_ticks "${pids[@]}")
  m0=$(machine_ticks); t0=$(now)
  rm -f "$WORK/client.time"
  local profiling=()
  if [ "$PROFILE" -gt 0 ] && [ "$target" = tessera ]; then profile_nodes "$n" "$workload"; fi
  ${CLIENT_TIME[@]+"${CLIENT_TIME[@]}"} "$TESSBENCH" "${ARGV[@]}" \
    --endpoints "$ENDPOINTS" --duration "$DURATION" --seed $((RUN)) --server-pids "$SERVER_PIDS" \
    --case "$workload" --target "$target" --topology "$topo" --json >"$file" 2>"$WORK/tessbench.err" || rc=$?
  t1=$(now); m1=$(machine_ticks)
  if [ ${#profiling[@]} -gt 0 ]; then wait "${profiling[@]}" || log "  a profile failed"; fi
  mapfile -t after < <(cpu_ticks "${pids[@]}")
  if [ $rc != 0 ]; then
    rm -f "$file"
    echo "- $target $topo $workload failed (exit $rc): $(tr '\n' ' ' <"$WORK/tessbench.err")" >>"$FAILURES"
    log "  FAILED: $(cat "$WORK/tessbench.err")"
    return
  fi
  # Per-node CPU as a share of its cap, the client's CPU in cores and the
  # machine's busy share, over the wall time of the tessbench process.
  local i wall caps="" client machine
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  for i in "${!pids[@]}"; do
    caps+="$(awk -v d=$((after[i] - before[i])) -v hz="$CLK_TCK" -v w="$wall" -v q="$QUOTA" 'BEGIN { printf "%.0f", 100 * d / hz / w / q }') "
  done
  client=$(awk -v w="$wall" '{ printf "%.2f", ($1 + $2) / w }' "$WORK/client.time" 2>/dev/null || echo '')
  machine=$(awk -v a="$m0" -v b="$m1" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.0f", 100 * (y[1] - x[1]) / (y[2] - x[2]) }')
  echo "$target|$n|$workload|$file|$caps|$client|$machine" >>"$ROWS"
  log "  $(jq -r '"\(.throughput_per_second | floor)/s, p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms, \(.errors) errors"' "$file"); node CPU % of cap: $caps; tessbench $client cores; machine $machine % busy"
}

# profile_nodes N WORKLOAD: in the background, wait until the measured run is
# under way, then take a CPU profile of each of the N nodes at once (their
# pprof ports, see start_tessera); their pids go in profiling.
profile_nodes() {
  local n=$1 workload=$2 i port delay
  delay=$(awk -v d="$(go_seconds "$DURATION")" -v p="$PROFILE" 'BEGIN { x = (d - p) / 2; print (x < 1 ? 1 : x) }')
  mkdir -p "$OUT/profiles"
  for i in $(seq "$n"); do
    port=$(( $(client_port 100 "$i") + 2 ))
    (sleep "$delay" && curl -sf -o "$OUT/profiles/tessera-$n-$workload-n$i.pprof" \
      "http://127.0.0.1:$port/debug/pprof/profile?seconds=$PROFILE") &
    profiling+=($!)
  done
}

run_cluster() { # run_cluster etcd|tessera N
  local kind=$1 n=$2 workload
  if [ "$kind" = etcd ]; then
    start_etcd "$n"
  else
    start_tessera "$n"
    split_prefixes
    wait_balanced "$n"
  fi
  for workload in put txn-put; do bench "$kind" "$n" "$workload"; done
  if [ "$kind" = tessera ]; then
    nodes_json >"$OUT/nodes-tessera-$n-after.json" || true
    echo "- Tessera $n nodes after the runs: $(spread_of "$OUT/nodes-tessera-$n-after.json" 2>/dev/null || echo 'no answer from ctl nodes'), $(ranges_count) ranges." >>"$PLACEMENT"
  fi
  stop_cluster
}

START=$(date -u +%Y-%m-%dT%H:%MZ)
for cluster in $CLUSTERS; do run_cluster "${cluster%%:*}" "${cluster#*:}"; done

# --- report ------------------------------------------------------------------
throughput() { # throughput TARGET N WORKLOAD: ops/s, or nothing
  local file
  file=$(awk -F'|' -v t="$1" -v n="$2" -v w="$3" '$1 == t && $2 == n && $3 == w { print $4 }' "$ROWS")
  [ -n "$file" ] && jq -r .throughput_per_second "$file"
}
ratio_line() { # ratio_line LABEL WORKLOAD TARGET_A N_A TARGET_B N_B GOAL
  local a b
  a=$(throughput "$3" "$4" "$2" || true); b=$(throughput "$5" "$6" "$2" || true)
  if [ -z "$a" ] || [ -z "$b" ]; then
    echo "| $1 | $2 | — | ≥ $7× | not measured |"
    return
  fi
  awk -v l="$1" -v w="$2" -v a="$a" -v b="$b" -v g="$7" 'BEGIN {
    r = a / b; printf "| %s | %s | %.2f× | ≥ %s× | %s |\n", l, w, r, g, (r >= g ? "met" : "not met") }'
}
{
  echo "# Scale-out under CPU caps"
  echo
  echo "Run $START by \`bench/scaleout.sh $ARGS\` at Tessera $TESSERA_BUILD${TESSERA_FLAGS:+ with Tessera flags \`$TESSERA_FLAGS\`}, against etcd $ETCD_VERSION."
  echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, Linux $(uname -r), $(go version | cut -d' ' -f3)."
  echo "Every server process capped at $QUOTA of a core (cgroup v1 cpu.cfs_quota_us $QUOTA_US per $PERIOD_US µs); tessbench uncapped."
  if [ "$RATE" -gt 0 ]; then echo "Offered load: $RATE requests per second over all clients."; fi
  echo "$CLIENTS clients over $CONNS connections, $VALUE_SIZE-byte values, random 16-byte keys in a space of $KEY_SPACE per workload, $DURATION per case after a 3 s warm-up."
  echo "Tessera: p/ and t/ split into $RANGES ranges each, 3 replicas per range."
  echo "Latency in ms. CPU % of cap: each server process's CPU over the run as a share of its cap (min–max over the processes); tessbench in cores; machine: share of all $(nproc) CPUs busy."
  echo
  echo "| system | topology | workload | ops/s | p50 | p99 | errors | CPU % of cap | tessbench cores | machine busy |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  while IFS='|' read -r target n workload file caps client machine; do
    system=Tessera; unit=nodes
    [ "$target" = etcd ] && { system="etcd $ETCD_VERSION"; unit=members; }
    capspread=$(tr ' ' '\n' <<<"$caps" | awk 'NF { if (min == "" || $1 < min) min = $1; if ($1 > max) max = $1 } END { print min "–" max }')
    jq -r --arg s "$system" --arg t "$n $unit" --arg w "$workload" --arg c "$capspread" --arg cl "$client" --arg m "$machine %" \
      '"| \($s) | \($t) | \($w) | \(.throughput_per_second | floor) | \(.latency_ms.p50 * 100 | round / 100) | \(.latency_ms.p99 * 100 | round / 100) | \(.errors) | \($c) | \($cl) | \($m) |"' "$file"
  done <"$ROWS"
  echo
  echo "| ratio | workload | measured | target | |"
  echo "|---|---|---|---|---|"
  for w in put txn-put; do ratio_line "Tessera 6 nodes ÷ Tessera 3 nodes" "$w" tessera 6 tessera 3 1.7; done
  for w in put txn-put; do ratio_line "Tessera 6 nodes ÷ etcd 5 members" "$w" tessera 6 etcd 5 2.5; done
  echo
  echo "Placement:"
  echo
  cat "$PLACEMENT"
  echo
  if [ -s "$FAILURES" ]; then
    echo "### Failed runs"
    echo
    cat "$FAILURES"
    echo
  fi
  if jq -e 'select(.errors > 0)' "$OUT"/[0-9]*.json >/dev/null 2>&1; then
    echo "### Errors"
    echo
    for f in "$OUT"/[0-9]*.json; do
      jq -r 'select(.errors > 0) | "- \(.target) \(.topology) \(.case): \(.error_samples | to_entries | map("\(.value)× \(.key)") | join("; "))"' "$f"
    done
    echo
  fi
} >"$OUT/results.md.tmp" 2>"$WORK/report.err" || { cat "$WORK/report.err" >&2; die "report failed"; }
mv "$OUT/results.md.tmp" "$OUT/results.md"
cat "$OUT/results.md"
log "results in $OUT"
