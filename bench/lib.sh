# bench/lib.sh: shell helpers shared by the benchmark scripts (sourced, not
# run). The sourcing script sets ROOT (the repository), CACHE (where the etcd
# build is kept), WORK (its temporary directory) and LOG_NAME (its name in
# log lines), and calls stop_pids "${PIDS[@]}" from its exit trap.
# shellcheck shell=bash disable=SC2034 # sets variables for the sourcing script

ETCD_VERSION=v3.7.3

log() { printf '%s %s: %s\n' "$(date +%H:%M:%S)" "$LOG_NAME" "$*" >&2; }
die() { log "$*"; exit 1; }

# --- processes: every one started is recorded and stopped on exit ---------
PIDS=()
stop_pids() { # stop_pids PID...: TERM, then KILL after 5 s
  local pid
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

start() { # start NAME CMD...: run in the background, log to $WORK/NAME.log
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  LAST_PID=$!
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- builds ------------------------------------------------------------------
build_etcd() { # sets ETCD and ETCD_DIR: etcd $ETCD_VERSION, built once into $CACHE
  ETCD_DIR=$CACHE/etcd-$ETCD_VERSION
  ETCD=$ETCD_DIR/etcd
  build_etcd_tool etcd go.etcd.io/etcd/server/v3
  case "$("$ETCD" --version)" in
    *"etcd Version: ${ETCD_VERSION#v}"*) ;;
    *) die "$ETCD is not etcd $ETCD_VERSION (remove it to rebuild)" ;;
  esac
}

build_etcd_tool() { # build_etcd_tool NAME MODULE: $ETCD_DIR/NAME from MODULE@$ETCD_VERSION, once
  [ -x "$ETCD_DIR/$1" ] && return
  # etcd's modules have replace directives, so `go install …@version`
  # refuses them: build from a throwaway module that requires one.
  log "building $1 $ETCD_VERSION from the module proxy into $ETCD_DIR"
  mkdir -p "$ETCD_DIR/src-$1"
  (
    cd "$ETCD_DIR/src-$1" || exit 1
    [ -f go.mod ] || GOFLAGS='' go mod init "tessera-bench/$1-build" >/dev/null 2>&1
    GOFLAGS=-mod=mod GOWORK=off go get "$2@$ETCD_VERSION"
    GOFLAGS=-mod=mod GOWORK=off go build -o "$ETCD_DIR/$1.tmp" "$2"
    mv "$ETCD_DIR/$1.tmp" "$ETCD_DIR/$1"
  )
}

build_tessera() { # sets TESSERA and TESSBENCH, built from $ROOT into $WORK/bin, and TESSERA_BUILD
  log "building tessera and tessbench"
  # The commit the binaries are built from, named now: the tree may move
  # on while a long run goes.
  TESSERA_BUILD="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '(no git)')$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  (cd "$ROOT" && go build -o "$WORK/bin/tessera" ./cmd/tessera && go build -o "$WORK/bin/tessbench" ./cmd/tessbench)
  TESSERA=$WORK/bin/tessera
  TESSBENCH=$WORK/bin/tessbench
}

# CLIENT_TLS: tessbench's and tessera ctl's TLS flags, when the servers
# want them (etcdctl's --cacert, --cert, --key).
CLIENT_TLS=()

# make_certs DIR: a CA, and certificates signed by it for the servers
# (server.pem, for 127.0.0.1, as server and as client of its peers) and
# for the load generator (client.pem), with openssl.
make_certs() {
  command -v openssl >/dev/null || die "openssl is needed for TLS (apt-get install openssl)"
  mkdir -p "$1"
  (
    cd "$1" || exit 1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
      -subj /CN=bench-ca -keyout ca-key.pem -out ca.pem
    for n in server client; do
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$n" -keyout "$n-key.pem" -out "$n.csr"
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >ext.cnf
      openssl x509 -req -in "$n.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 -out "$n.pem" -extfile ext.cnf
    done
  ) >"$1/openssl.log" 2>&1 || die "making certificates failed: $(cat "$1/openssl.log")"
}

# wait_serving EP...: until each endpoint acknowledges a Put (60 s at most).
wait_serving() {
  local ep deadline=$((SECONDS + 60))
  for ep in "$@"; do
    until "$TESSBENCH" put --endpoints "$ep" ${CLIENT_TLS[@]+"${CLIENT_TLS[@]}"} --clients 1 --conns 1 --total 1 --key-space 1 >/dev/null 2>&1; do
      [ $SECONDS -lt $deadline ] || die "$ep not serving after 60s; logs in $WORK"
      sleep 0.5
    done
  done
}

# --- clusters ----------------------------------------------------------------
# The sourcing script also sets PORT_BASE. Ports: etcd member i BASE+10i
# (client) and +1 (peer); Tessera node i BASE+100+10i and +1. Servers are
# started by $SERVER_START (start, or a script's own wrapper of it); a
# script that needs to undo more per server when a cluster stops defines
# after_stop NAME. Extra server flags: the array ETCD_FLAGS, the string
# TESSERA_FLAGS (split on spaces).
SERVER_START=start
ENDPOINTS=""
SERVER_PIDS=""
SERVER_NAMES=""

client_port() { echo $((PORT_BASE + $1 + 10 * $2)); } # client_port OFFSET I
check_ports() { # check_ports CLIENT PEER
  port_free "$1" || die "port $1 on 127.0.0.1 is taken (set TESSERA_BENCH_PORT_BASE)"
  port_free "$2" || die "port $2 on 127.0.0.1 is taken (set TESSERA_BENCH_PORT_BASE)"
}

wait_listening() { # wait_listening PID PORT NAME: 30 s at most
  for _ in $(seq 300); do
    kill -0 "$1" 2>/dev/null || die "$3 exited; its log: $(tail -5 "$WORK/$3.log")"
    if ! port_free "$2"; then return; fi
    sleep 0.1
  done
  die "$3 is not listening on $2 after 30s"
}

start_etcd() { # start_etcd N: sets ENDPOINTS, SERVER_PIDS, SERVER_NAMES
  local n=$1 i cluster="" clients=() pids=() names=()
  for i in $(seq "$n"); do
    cluster+="${cluster:+,}m$i=http://127.0.0.1:$(($(client_port 0 "$i") + 1))"
  done
  for i in $(seq "$n"); do
    local client peer name=etcd-$n-m$i
    client=$(client_port 0 "$i"); peer=$((client + 1))
    check_ports "$client" "$peer"
    "$SERVER_START" "$name" "$ETCD" --name "m$i" --data-dir "$WORK/data/$name" \
      --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token tessbench --log-level error \
      ${ETCD_FLAGS[@]+"${ETCD_FLAGS[@]}"}
    pids+=("$LAST_PID"); names+=("$name"); clients+=("127.0.0.1:$client")
  done
  cluster_up "etcd $n members" clients pids names
}

# cluster_up WHAT CLIENTS PIDS NAMES (array names): waits until every client
# endpoint serves, then sets ENDPOINTS, SERVER_PIDS and SERVER_NAMES.
cluster_up() {
  local -n up_clients=$2 up_pids=$3 up_names=$4
  wait_serving "${up_clients[@]}"
  ENDPOINTS=$(IFS=,; echo "${up_clients[*]}")
  SERVER_PIDS=$(IFS=,; echo "${up_pids[*]}")
  SERVER_NAMES=$(IFS=,; echo "${up_names[*]}")
  log "$1 up: $ENDPOINTS"
}

start_tessera() { # start_tessera N: the first node alone, the others --join
  local n=$1 i clients=() pids=() names=()
  for i in $(seq "$n"); do
    local client peer name=tessera-$n-n$i args
    client=$(client_port 100 "$i"); peer=$((client + 1))
    check_ports "$client" "$peer"
    args=(--name "n$i" --data-dir "$WORK/data/$name"
      --listen-client-urls "http://127.0.0.1:$client" --listen-peer-urls "http://127.0.0.1:$peer")
    if [ "$i" -gt 1 ]; then args+=(--join "$(IFS=,; echo "${clients[*]/#/http://}")"); fi
    # TESSERA_PPROF=1: every node serves /debug/pprof on its client port + 2.
    if [ "${TESSERA_PPROF:-}" = 1 ]; then
      check_ports $((client + 2)) $((client + 2))
      args+=(--listen-metrics-urls "http://127.0.0.1:$((client + 2))" --enable-pprof)
    fi
    # shellcheck disable=SC2086 # TESSERA_FLAGS is split on purpose
    "$SERVER_START" "$name" "$TESSERA" "${args[@]}" ${TESSERA_FLAGS:-}
    wait_listening "$LAST_PID" "$client" "$name"
    pids+=("$LAST_PID"); names+=("$name"); clients+=("127.0.0.1:$client")
  done
  cluster_up "tessera $n nodes" clients pids names
}

stop_cluster() { # stop_cluster: the one in SERVER_PIDS / SERVER_NAMES
  local pids names name
  IFS=, read -ra pids <<<"$SERVER_PIDS"
  IFS=, read -ra names <<<"$SERVER_NAMES"
  stop_pids "${pids[@]}"
  local pid left=()
  for pid in "${PIDS[@]}"; do [[ ",$SERVER_PIDS," == *",$pid,"* ]] || left+=("$pid"); done
  PIDS=(${left[@]+"${left[@]}"})
  mkdir -p "$OUT/logs"
  for name in "${names[@]}"; do
    cp "$WORK/$name.log" "$OUT/logs/" 2>/dev/null || true
    if declare -F after_stop >/dev/null; then after_stop "$name"; fi
    rm -rf "${WORK:?}/data/$name"
  done
}

# --- placement, as `tessera ctl` shows it (TESSERA and ENDPOINTS set) -------
nodes_json() { "$TESSERA" ctl --endpoints "$ENDPOINTS" nodes --json 2>/dev/null; }

# spread_of FILE: "replicas MIN–MAX, leaders MIN–MAX over N live nodes"
spread_of() {
  jq -r '[.[] | select(.state == "live")] |
    "replicas \(map(.replicas) | min)–\(map(.replicas) | max), leaders \(map(.leaders) | min)–\(map(.leaders) | max) over \(length) live nodes"' "$1"
}

# balanced FILE N: N live nodes, replicas and leaders each within one.
balanced() {
  jq -e --argjson n "$2" '[.[] | select(.state == "live")] | length == $n and
    (map(.replicas) | max - min) <= 1 and (map(.leaders) | max - min) <= 1' "$1" >/dev/null
}

# all_replicated: every range has its 3 replicas (a move in progress has 4).
all_replicated() {
  "$TESSERA" ctl --endpoints "$ENDPOINTS" ranges --json 2>/dev/null | jq -e 'length > 0 and all(.[]; (.replicas | length) >= 3)' >/dev/null
}
wait_spread() { # wait_spread N: balanced and fully replicated, twice in a row (10 min at most)
  local ok=0 deadline=$((SECONDS + 600))
  while [ $ok -lt 2 ]; do
    if nodes_json >"$WORK/nodes.json" && balanced "$WORK/nodes.json" "$1" && all_replicated; then
      ok=$((ok + 1))
    else
      ok=0
    fi
    [ $SECONDS -lt $deadline ] || die "placement did not spread the replicas in 600s: $(spread_of "$WORK/nodes.json" 2>/dev/null)"
    sleep 1
  done
}
ranges_count() { "$TESSERA" ctl --endpoints "$ENDPOINTS" ranges --json 2>/dev/null | jq length 2>/dev/null || echo '?'; }

# cleanup_work is the exit trap of a script with nothing more to undo: it
# stops every process the script started and removes WORK.
cleanup_work() {
  local rc=$?
  if [ ${#PIDS[@]} -gt 0 ]; then stop_pids "${PIDS[@]}"; fi
  rm -rf "$WORK"
  exit $rc
}
