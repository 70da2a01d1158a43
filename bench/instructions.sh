#!/usr/bin/env bash
# bench/instructions.sh TENTHBITD [PAIRS SMALL LARGE]
#
# User-space instructions tenthbitd spends per delivery in chatbench's pairs, counted with
# valgrind's cachegrind: the server runs under valgrind twice (PAIRS x SMALL, then PAIRS x LARGE
# messages each way) and the difference of the two totals over the difference of deliveries is
# printed. Counts, unlike timings on a shared machine, repeat within about half a per cent, so small
# changes can be compared. Needs valgrind and a chatbench set up by
# ../shared/chatbench/run-peers.sh (its certificate, config and binary under /tmp/chatbench).
set -euo pipefail
BIN=$1
PAIRS=${2:-100}
SMALL=${3:-500}
LARGE=${4:-1500}
W=/tmp/chatbench
CB=$W/target/release/chatbench
[ -x "$CB" ] && [ -f "$W/tenthbitd.toml" ] || { echo "run ../shared/chatbench/run-peers.sh once first" >&2; exit 1; }

count() { # messages → total instructions of one server run
    local out=$W/cachegrind.$$.$1
    rm -rf "$W/tb-data"
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$out" \
        "$BIN" --config "$W/tenthbitd.toml" >>"$W/tenthbit.vg.out" 2>&1 &
    local pid=$!
    for _ in $(seq 600); do ss -Hltn "sport = :10817" | grep -q . && break; sleep 0.2; done
    local line
    line=$("$CB" --proto tenthbit --addr 127.0.0.1:10817 --name "cg$RANDOM" --register \
        --timeout 300 --workload pairs --pairs "$PAIRS" --msgs "$1" 2>>"$W/chatbench.err" | tail -1)
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    grep -q " lost=0 " <<<"$line" || { echo "deliveries were lost: $line" >&2; exit 1; }
    cg_annotate "$out" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
    rm -f "$out"
}
a=$(count "$SMALL")
b=$(count "$LARGE")
echo "$(( (b - a) / (2 * PAIRS * (LARGE - SMALL)) )) instructions per delivery ($BIN)"
