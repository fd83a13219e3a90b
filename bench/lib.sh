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
build_etcd() { # sets ETCD: etcd $ETCD_VERSION, built once into $CACHE
  ETCD_DIR=$CACHE/etcd-$ETCD_VERSION
  ETCD=$ETCD_DIR/etcd
  if [ ! -x "$ETCD" ]; then
    # etcd's server module is its main package; its go.mod has replace
    # directives, so `go install …@version` refuses it: build it from a
    # throwaway module that requires it.
    log "building etcd $ETCD_VERSION from the module proxy into $ETCD_DIR"
    mkdir -p "$ETCD_DIR/src"
    (
      cd "$ETCD_DIR/src" || exit 1
      [ -f go.mod ] || GOFLAGS='' go mod init tessera-bench/etcd-build >/dev/null 2>&1
      GOFLAGS=-mod=mod GOWORK=off go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
      GOFLAGS=-mod=mod GOWORK=off go build -o "$ETCD.tmp" go.etcd.io/etcd/server/v3
      mv "$ETCD.tmp" "$ETCD"
    )
  fi
  case "$("$ETCD" --version)" in
    *"etcd Version: ${ETCD_VERSION#v}"*) ;;
    *) die "$ETCD is not etcd $ETCD_VERSION (remove it to rebuild)" ;;
  esac
}

build_tessera() { # sets TESSERA and TESSBENCH, built from $ROOT into $WORK/bin
  log "building tessera and tessbench"
  (cd "$ROOT" && go build -o "$WORK/bin/tessera" ./cmd/tessera && go build -o "$WORK/bin/tessbench" ./cmd/tessbench)
  TESSERA=$WORK/bin/tessera
  TESSBENCH=$WORK/bin/tessbench
}

# wait_serving EP...: until each endpoint acknowledges a Put (60 s at most).
wait_serving() {
  local ep deadline=$((SECONDS + 60))
  for ep in "$@"; do
    until "$TESSBENCH" put --endpoints "$ep" --clients 1 --conns 1 --total 1 --key-space 1 >/dev/null 2>&1; do
      [ $SECONDS -lt $deadline ] || die "$ep not serving after 60s; logs in $WORK"
      sleep 0.5
    done
  done
}
