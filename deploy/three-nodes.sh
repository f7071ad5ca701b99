# Three fresh weir-node processes on loopback, in a temporary directory, for the bench scripts.
#
# Source it with B (where weir-node and weir are) and P (a port prefix: gRPC ${P}01-${P}03, HTTP
# ${P}11-${P}13, Postgres ${P}21-${P}23, Kafka ${P}31-${P}33) set. It starts the nodes, waits until all three are up, exports WEIR_SERVER, and
# on exit stops the nodes and removes the directory. `start I [ARGS]` (re)starts node I; its
# process id is ${PIDS[I]} and its output goes to $R/nI.out. With WEIR_BENCH_ROOTS="D1 D2 D3" node I
# keeps its data under DI instead (one file system per node, say), removed on exit as well.
R=$(mktemp -d -t weir-bench-XXXXXX)
PIDS=()
read -r -a ROOTS <<<"${WEIR_BENCH_ROOTS:-}"
data_dir() { local root=${ROOTS[$(($1 - 1))]:-$R}; echo "$root/n$1"; }
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for i in 1 2 3; do rm -rf "$(data_dir "$i")"; done
  rm -rf "$R"
}
trap cleanup EXIT

start() { # id [args]
  local i=$1
  shift
  "$B/weir-node" --data-dir "$(data_dir "$i")" --listen "127.0.0.1:${P}0$i" --http "127.0.0.1:${P}1$i" --pg "127.0.0.1:${P}2$i" --kafka "127.0.0.1:${P}3$i" "$@" \
    >>"$R/n$i.out" 2>&1 &
  PIDS[$i]=$!
}

start 1
sleep 2
start 2 --join "127.0.0.1:${P}01"
start 3 --join "127.0.0.1:${P}01"
export WEIR_SERVER="127.0.0.1:${P}01"
for _ in $(seq 1 120); do
  up=$("$B/weir" --format csv cluster status 2>/dev/null | grep -c ',up' || true)
  [ "$up" = 3 ] && break
  sleep 1
done

# cpu_ticks: CPU time the three nodes have used so far, in clock ticks (100 per second).
cpu_ticks() { local t=0; for p in "${PIDS[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }

# run_queue: nanoseconds the nodes' threads have spent runnable but waiting for a CPU so far, and
# the number of times they were given one (/proc/PID/task/*/schedstat; threads that ended are not
# counted).
run_queue() { cat /proc/"${PIDS[1]}"/task/*/schedstat /proc/"${PIDS[2]}"/task/*/schedstat /proc/"${PIDS[3]}"/task/*/schedstat 2>/dev/null | awk '{w += $2; n += $3} END {printf "%.0f %.0f\n", w, n}'; }

# machine_busy: clock ticks the whole machine has spent busy so far, and all ticks (/proc/stat).
machine_busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat; }

# quiet [LIMIT_S]: waits until the nodes' background work after a load (flushes, compactions,
# region splits) has settled: their CPU use over 5 s below a fifth of a core, at most LIMIT_S
# seconds (default 300). Prints how long it waited.
quiet() {
  local limit=${1:-300} waited=0
  while [ "$waited" -lt "$limit" ]; do
    local before after
    before=$(cpu_ticks)
    sleep 5
    waited=$((waited + 5))
    after=$(cpu_ticks)
    # clock ticks (100 per second) over 5 s: under 100 is under a fifth of a core
    [ $((after - before)) -lt 100 ] && break
  done
  echo "quiet after ${waited} s"
}
