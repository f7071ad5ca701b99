#!/usr/bin/env bash
# Runs the cluster simulation (tests/tests/sim_cluster.rs) over many seeds in a release build.
#
#   deploy/sim-seeds.sh [FIRST] [COUNT] [JOBS]
#
# Seeds FIRST..FIRST+COUNT are split over JOBS processes (default: the number of cores). Every
# seed's verdict is printed; a failing seed replays exactly with
#   WEIR_SIM_SEED=<seed> cargo test --release -p weir-tests --test sim_cluster seeds_survive_the_nemesis -- --exact --nocapture
# WEIR_SIM_CHAOS_SECS=N sets how long the nemesis acts per seed (default 60; CI's short runs use
# 20); pass the same value when replaying.
set -euo pipefail
cd "$(dirname "$0")/.."
FIRST="${1:-0}"
COUNT="${2:-1000}"
JOBS="${3:-$(nproc)}"
# WEIR_SIM_PROFILE=dev runs the debug build instead (slower per seed, no release build needed).
PROFILE="${WEIR_SIM_PROFILE:-release}"
if [[ "$PROFILE" == release ]]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/weir/target-release}"
else
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/weir/target}"
fi
cargo test --profile "$PROFILE" -p weir-tests --test sim_cluster --no-run
LOGS="$(mktemp -d)"
per=$(( (COUNT + JOBS - 1) / JOBS ))
pids=()
for ((j = 0; j < JOBS; j++)); do
    a=$(( FIRST + j * per ))
    b=$(( a + per ))
    (( b > FIRST + COUNT )) && b=$(( FIRST + COUNT ))
    (( a >= b )) && continue
    WEIR_SIM_SEEDS="$a..$b" cargo test --profile "$PROFILE" -p weir-tests --test sim_cluster \
        seeds_survive_the_nemesis -- --exact --nocapture >"$LOGS/$j.log" 2>&1 &
    pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
grep -h "^seed " "$LOGS"/*.log | sort -t' ' -k2 -n
echo "passed: $(grep -h '^seed .*: ok' "$LOGS"/*.log | wc -l) of $COUNT; failed: $(grep -h 'FAILED' "$LOGS"/*.log | grep -c '^seed' || true)"
rm -rf "$LOGS"
exit $status
