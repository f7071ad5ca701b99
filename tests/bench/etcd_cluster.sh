#!/usr/bin/env bash
# Start / stop a 3-member etcd cluster on 127.0.0.1 for the peer benchmark
# (see tests/bench/etcd_kv.py and BENCHMARKS.md).
#
#   tests/bench/etcd_cluster.sh start    # start 3 members, wait until all healthy
#   tests/bench/etcd_cluster.sh status   # print endpoint status / health
#   tests/bench/etcd_cluster.sh stop     # stop the members and delete the data dirs
#
# Requires the Debian packages etcd-server (etcd) and, for the health check,
# etcd-client (etcdctl); falls back to curl on /health without etcdctl:
#   DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server etcd-client
#
# Environment:
#   WEIR_ETCD_DIR   base dir for data dirs, logs and pid files
#                   (default /tmp/weir-etcd-bench). Deliberately not ETCD_*:
#                   etcd treats every ETCD_* variable as a flag and warns
#                   about / rejects unknown ones.
#   WEIR_ETCD_BIN   etcd binary (default: etcd on PATH)
#
# Ports are fixed (clients 23791-23793, peers 23801-23803) so the endpoints in
# the benchmark commands stay copy-pasteable; they are high and away from
# etcd's defaults (2379/2380) so a system etcd does not collide.
#
# All etcd tuning is left at the shipped defaults on purpose (fsync on every
# raft log append / backend commit, default heartbeat/election, snapshot
# count, quota): the point is to compare against etcd as people run it.
set -euo pipefail

DIR="${WEIR_ETCD_DIR:-/tmp/weir-etcd-bench}"
ETCD="${WEIR_ETCD_BIN:-etcd}"
HOST=127.0.0.1
NAMES=(m1 m2 m3)
CLIENT_PORTS=(23791 23792 23793)
PEER_PORTS=(23801 23802 23803)

endpoints() {
  local eps=() i
  for i in 0 1 2; do eps+=("http://$HOST:${CLIENT_PORTS[$i]}"); done
  (IFS=,; echo "${eps[*]}")
}

initial_cluster() {
  local parts=() i
  for i in 0 1 2; do parts+=("${NAMES[$i]}=http://$HOST:${PEER_PORTS[$i]}"); done
  (IFS=,; echo "${parts[*]}")
}

port_in_use() {
  # bash's /dev/tcp connect succeeds only if something is listening.
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

healthy() {
  local ep="$1"
  if command -v etcdctl >/dev/null 2>&1; then
    ETCDCTL_API=3 etcdctl --endpoints="$ep" --dial-timeout=1s --command-timeout=2s \
      endpoint health >/dev/null 2>&1
  else
    curl -fsS --max-time 2 "$ep/health" 2>/dev/null | grep -q '"health":"true"'
  fi
}

start() {
  command -v "$ETCD" >/dev/null 2>&1 || { echo "etcd not found (apt-get install etcd-server)" >&2; exit 1; }
  local i p
  for i in 0 1 2; do
    if [[ -f "$DIR/${NAMES[$i]}.pid" ]] && kill -0 "$(cat "$DIR/${NAMES[$i]}.pid")" 2>/dev/null; then
      echo "member ${NAMES[$i]} already running (pid $(cat "$DIR/${NAMES[$i]}.pid")); run '$0 stop' first" >&2
      exit 1
    fi
  done
  for p in "${CLIENT_PORTS[@]}" "${PEER_PORTS[@]}"; do
    if port_in_use "$p"; then echo "port $p on $HOST is already in use" >&2; exit 1; fi
  done

  # Fresh data dirs every start so each run measures an empty cluster, not
  # whatever a previous run left behind.
  rm -rf "$DIR"
  mkdir -p "$DIR"
  local cluster token
  cluster="$(initial_cluster)"
  token="weir-etcd-bench-$$"
  for i in 0 1 2; do
    local n="${NAMES[$i]}" cp="${CLIENT_PORTS[$i]}" pp="${PEER_PORTS[$i]}"
    # setsid: detach from the caller's process group so the members survive
    # the invoking shell and Ctrl-C in the benchmark terminal.
    setsid "$ETCD" \
      --name "$n" \
      --data-dir "$DIR/$n.etcd" \
      --listen-client-urls "http://$HOST:$cp" \
      --advertise-client-urls "http://$HOST:$cp" \
      --listen-peer-urls "http://$HOST:$pp" \
      --initial-advertise-peer-urls "http://$HOST:$pp" \
      --initial-cluster "$cluster" \
      --initial-cluster-token "$token" \
      --initial-cluster-state new \
      --logger zap --log-outputs stderr \
      >"$DIR/$n.log" 2>&1 </dev/null &
    echo $! >"$DIR/$n.pid"
  done

  # Wait until every member answers a health check (which is a quorum read,
  # so it also implies a leader has been elected).
  local deadline=$((SECONDS + 30)) ok
  while :; do
    ok=0
    for i in 0 1 2; do
      if ! kill -0 "$(cat "$DIR/${NAMES[$i]}.pid")" 2>/dev/null; then
        echo "member ${NAMES[$i]} exited; log: $DIR/${NAMES[$i]}.log" >&2
        tail -n 20 "$DIR/${NAMES[$i]}.log" >&2
        stop
        exit 1
      fi
      healthy "http://$HOST:${CLIENT_PORTS[$i]}" && ok=$((ok + 1))
    done
    [[ $ok -eq 3 ]] && break
    if (( SECONDS >= deadline )); then
      echo "cluster not healthy after 30 s; logs in $DIR" >&2
      stop
      exit 1
    fi
    sleep 0.3
  done
  echo "etcd cluster up: $("$ETCD" --version | head -n1)"
  echo "endpoints: $(endpoints | sed 's#http://##g')"
  echo "data/logs: $DIR"
}

stop() {
  local i pid pids=()
  for i in 0 1 2; do
    local f="$DIR/${NAMES[$i]}.pid"
    [[ -f "$f" ]] || continue
    pid="$(cat "$f")"
    # Only signal the pid if it still is an etcd process (pid reuse guard).
    if kill -0 "$pid" 2>/dev/null && grep -q etcd "/proc/$pid/comm" 2>/dev/null; then
      kill "$pid" && pids+=("$pid")
    fi
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  done
  # Only remove the directory if it looks like ours, so a mistaken
  # WEIR_ETCD_DIR cannot wipe something unrelated.
  if [[ -d "$DIR" ]] && compgen -G "$DIR/m[123].*" >/dev/null; then
    rm -rf "$DIR"
  fi
  echo "etcd cluster stopped"
}

status() {
  ETCDCTL_API=3 etcdctl --endpoints="$(endpoints)" endpoint status -w table
  ETCDCTL_API=3 etcdctl --endpoints="$(endpoints)" endpoint health
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
