#!/usr/bin/env bash
# deploy/local-cluster.sh: a Tessera cluster of several nodes on 127.0.0.1.
#
# Usage: deploy/local-cluster.sh COMMAND [ARG]
#   start N     start N nodes (1-6): n1 forms the cluster, the others join it
#   add         start one more node, joining the running ones
#   stop        stop every node (gracefully; data is kept)
#   kill NAME   kill one node with SIGKILL (e.g. kill n2)
#   restart NAME  start a stopped or killed node again, with its old command
#   status      show the nodes (tessera ctl nodes) and the ranges
#
# Node k listens for clients on 127.0.0.1:2379 (n1), 22379, 32379, ... and for
# peers on 12380 (n1), 22380, 32380, ... (etcd's local convention). Data and
# logs go under $TESSERA_CLUSTER_DIR (default ./tessera-cluster). The binary is
# $TESSERA (default: tessera on PATH, else built from this repository).
# Extra server flags: $TESSERA_FLAGS (split on spaces), e.g.
#   TESSERA_FLAGS="--dead-node-timeout 30s" deploy/local-cluster.sh start 4
#
# With TESSERA_TLS=1 the nodes serve clients and each other over TLS with
# client and peer certificate checks: a CA and certificates (n1..n6, and
# root for clients) are made with openssl in $TESSERA_CLUSTER_DIR/certs,
# and status calls tessera ctl with --cacert, --cert and --key. Clients:
#   etcdctl --endpoints https://127.0.0.1:2379 --cacert DIR/certs/ca.pem \
#     --cert DIR/certs/root.pem --key DIR/certs/root-key.pem ...
# Extra ctl flags for status: $TESSERA_CTL_FLAGS (e.g. "--user root:PASSWORD"
# once auth is on).
set -euo pipefail

DIR=${TESSERA_CLUSTER_DIR:-./tessera-cluster}
MAX=6

die() { echo "local-cluster: $*" >&2; exit 1; }

binary() {
  if [ -n "${TESSERA:-}" ]; then echo "$TESSERA"; return; fi
  if command -v tessera >/dev/null 2>&1; then command -v tessera; return; fi
  local root
  root=$(cd "$(dirname "$0")/.." && pwd)
  mkdir -p "$DIR"
  (cd "$root" && go build -o "$(cd "$DIR" && pwd)/tessera" ./cmd/tessera) || die "building tessera failed"
  echo "$(cd "$DIR" && pwd)/tessera"
}

TLS=${TESSERA_TLS:-}
SCHEME=http
[ -z "$TLS" ] || SCHEME=https

# certs makes (once) a CA and a certificate for each node and for root,
# good for 127.0.0.1 as server and as client.
certs() {
  local c="$DIR/certs" n
  [ -f "$c/ca.pem" ] && return
  command -v openssl >/dev/null || die "TESSERA_TLS needs openssl"
  mkdir -p "$c"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=tessera-ca" -keyout "$c/ca-key.pem" -out "$c/ca.pem" 2>/dev/null
  for n in n1 n2 n3 n4 n5 n6 root; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$n" \
      -keyout "$c/$n-key.pem" -out "$c/$n.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$c/ext"
    openssl x509 -req -in "$c/$n.csr" -CA "$c/ca.pem" -CAkey "$c/ca-key.pem" -CAcreateserial \
      -days 365 -extfile "$c/ext" -out "$c/$n.pem" 2>/dev/null
    rm -f "$c/$n.csr"
  done
}

# ctl runs tessera ctl against the running nodes.
ctl() {
  local bin args=()
  bin=$(binary)
  if [ -n "$TLS" ]; then
    args=(--cacert "$DIR/certs/ca.pem" --cert "$DIR/certs/root.pem" --key "$DIR/certs/root-key.pem")
  fi
  # shellcheck disable=SC2086
  "$bin" ctl --endpoints "$(endpoints)" "${args[@]}" ${TESSERA_CTL_FLAGS:-} "$@"
}

client_port() { if [ "$1" -eq 1 ]; then echo 2379; else echo $(( $1 * 10000 + 2379 )); fi; }
peer_port() { if [ "$1" -eq 1 ]; then echo 12380; else echo $(( $1 * 10000 + 2380 )); fi; }

running() { [ -f "$DIR/n$1/pid" ] && kill -0 "$(cat "$DIR/n$1/pid")" 2>/dev/null; }

# endpoints lists the client URLs of the running nodes, comma-separated.
endpoints() {
  local out="" k
  for k in $(seq 1 $MAX); do
    if running "$k"; then out="$out,$SCHEME://127.0.0.1:$(client_port "$k")"; fi
  done
  echo "${out#,}"
}

# launch starts node k: n1 alone, the others joining the nodes running now.
launch() {
  local k=$1 bin join
  bin=$(binary)
  mkdir -p "$DIR/n$k"
  local args=(--name "n$k" --data-dir "$DIR/n$k/data"
    --listen-client-urls "$SCHEME://127.0.0.1:$(client_port "$k")"
    --listen-peer-urls "$SCHEME://127.0.0.1:$(peer_port "$k")")
  if [ -n "$TLS" ]; then
    certs
    local c="$DIR/certs"
    args+=(--cert-file "$c/n$k.pem" --key-file "$c/n$k-key.pem" --trusted-ca-file "$c/ca.pem" --client-cert-auth
      --peer-cert-file "$c/n$k.pem" --peer-key-file "$c/n$k-key.pem" --peer-trusted-ca-file "$c/ca.pem" --peer-client-cert-auth)
  fi
  if [ "$k" -gt 1 ]; then
    join=$(endpoints)
    [ -n "$join" ] || die "no node is running for n$k to join"
    # A node that joined before rejoins from its data directory.
    [ -f "$DIR/n$k/join" ] && join=$(cat "$DIR/n$k/join") || echo "$join" >"$DIR/n$k/join"
    args+=(--join "$join")
  fi
  # shellcheck disable=SC2086
  "$bin" "${args[@]}" ${TESSERA_FLAGS:-} >>"$DIR/n$k/log" 2>&1 &
  echo $! >"$DIR/n$k/pid"
  wait_ready "$k"
  echo "n$k: clients $SCHEME://127.0.0.1:$(client_port "$k"), peers $SCHEME://127.0.0.1:$(peer_port "$k"), data $DIR/n$k/data, log $DIR/n$k/log"
}

wait_ready() {
  local k=$1
  for _ in $(seq 300); do
    running "$k" || die "n$k exited; see $DIR/n$k/log"
    if (exec 3<>"/dev/tcp/127.0.0.1/$(client_port "$k")") 2>/dev/null; then return; fi
    sleep 0.1
  done
  die "n$k is not listening after 30 s; see $DIR/n$k/log"
}

next_free() {
  local k
  for k in $(seq 1 $MAX); do
    if [ ! -d "$DIR/n$k" ]; then echo "$k"; return; fi
  done
  die "at most $MAX nodes"
}

cmd=${1:-}
case "$cmd" in
  start)
    n=${2:-3}
    [[ "$n" =~ ^[1-6]$ ]] || die "start takes a node count from 1 to $MAX"
    [ -z "$(endpoints)" ] || die "nodes are running already (stop them first)"
    for k in $(seq 1 "$n"); do launch "$k"; done
    echo "endpoints: $(endpoints)"
    ;;
  add)
    [ -n "$(endpoints)" ] || die "no node is running (start first)"
    launch "$(next_free)"
    echo "endpoints: $(endpoints)"
    ;;
  stop)
    for k in $(seq 1 $MAX); do
      if running "$k"; then kill -TERM "$(cat "$DIR/n$k/pid")"; fi
    done
    for k in $(seq 1 $MAX); do
      while running "$k"; do sleep 0.1; done
      rm -f "$DIR/n$k/pid"
    done
    ;;
  kill)
    name=${2:-}
    [[ "$name" =~ ^n([1-6])$ ]] || die "kill takes a node name, n1 to n$MAX"
    k=${BASH_REMATCH[1]}
    running "$k" || die "$name is not running"
    kill -KILL "$(cat "$DIR/n$k/pid")"
    rm -f "$DIR/n$k/pid"
    echo "killed $name"
    ;;
  restart)
    name=${2:-}
    [[ "$name" =~ ^n([1-6])$ ]] || die "restart takes a node name, n1 to n$MAX"
    k=${BASH_REMATCH[1]}
    [ -d "$DIR/n$k/data" ] || die "$name has no data to restart from"
    ! running "$k" || die "$name is running"
    launch "$k"
    ;;
  status)
    [ -n "$(endpoints)" ] || die "no node is running"
    ctl nodes
    echo
    ctl ranges
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    [ -z "$cmd" ] || [ "$cmd" = "-h" ] || [ "$cmd" = "--help" ] || exit 2
    ;;
esac
