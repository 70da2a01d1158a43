#!/usr/bin/env bash
# Runs the same workloads against tenthbitd and nats-server, both with TLS on
# loopback, and prints a table with the ratios. Each server runs alone, pinned
# to core 0; the load generator is pinned to core 1. Only processes this script
# started are stopped.
#
#   bench/compare.sh              # the default workloads
#   MESSAGES=20000 bench/compare.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MESSAGES=${MESSAGES:-10000}     # per fanout publisher
PAIR_MESSAGES=${PAIR_MESSAGES:-1000}
RATE=${RATE:-5000}
NATS_PORT=${NATS_PORT:-14222}
work=target/bench

if ! command -v nats-server >/dev/null 2>&1; then
    echo "installing nats-server from Debian" >&2
    if [ "$(id -u)" -eq 0 ]; then apt-get install -y nats-server >&2; else sudo apt-get install -y nats-server >&2; fi
fi
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
cargo build --release --quiet

started=()
cleanup() { for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Waits (up to 10 s) for a line matching $2 in log file $1.
wait_for() {
    for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

rm -rf "$work"; mkdir -p "$work"

# tenthbitd, with its benchmarking config (guard rails raised, defaults otherwise).
taskset -c 0 target/release/tenthbitd --config bench/tenthbitd.toml >"$work/tenthbitd.log" 2>&1 &
tpid=$!; started+=("$tpid")
wait_for "$work/tenthbitd.log" "connect with"
fp=$(grep -o 'sha256=[0-9A-F:]*' "$work/tenthbitd.log" | head -1 | cut -d= -f2)
bench() { taskset -c 1 target/release/tenthbit bench "$@"; }
common=(--fingerprint "$fp" --server-name localhost --json)

echo "tenthbitd: fanout, fanout at ${RATE} msg/s, pairs" >&2
bench 127.0.0.1:10817 "${common[@]}" --server-pid "$tpid" fanout --messages "$MESSAGES" >"$work/t-fanout.json"
bench 127.0.0.1:10817 "${common[@]}" --server-pid "$tpid" fanout --messages "$MESSAGES" --rate "$RATE" >"$work/t-rate.json"
bench 127.0.0.1:10817 "${common[@]}" --server-pid "$tpid" pairs --messages "$PAIR_MESSAGES" >"$work/t-pairs.json"
kill "$tpid"; wait "$tpid" 2>/dev/null || true

# nats-server, with the same certificate.
taskset -c 0 nats-server -a 127.0.0.1 -p "$NATS_PORT" --tls \
    --tlscert "$work/certs/tenthbitd.crt" --tlskey "$work/certs/tenthbitd.key" >"$work/nats.log" 2>&1 &
npid=$!; started+=("$npid")
wait_for "$work/nats.log" "Server is ready"

echo "nats-server: fanout, fanout at ${RATE} msg/s, pairs" >&2
bench "127.0.0.1:$NATS_PORT" "${common[@]}" --nats --server-pid "$npid" fanout --messages "$MESSAGES" >"$work/n-fanout.json"
bench "127.0.0.1:$NATS_PORT" "${common[@]}" --nats --server-pid "$npid" fanout --messages "$MESSAGES" --rate "$RATE" >"$work/n-rate.json"
bench "127.0.0.1:$NATS_PORT" "${common[@]}" --nats --server-pid "$npid" pairs --messages "$PAIR_MESSAGES" >"$work/n-pairs.json"
kill "$npid"; wait "$npid" 2>/dev/null || true

python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
def load(name):
    with open(f"{work}/{name}.json") as f:
        return json.load(f)
rows = [("fanout, 100 subscribers, unthrottled", "fanout"),
        ("fanout, 100 subscribers, at a fixed rate", "rate"),
        ("pairs, 200 pairs", "pairs")]
def fmt(v, spec):
    return "-" if v is None else format(v, spec)
print(f"{'workload':42} {'metric':24} {'tenthbitd':>12} {'nats-server':>12} {'ratio':>7}")
for label, key in rows:
    t, n = load(f"t-{key}"), load(f"n-{key}")
    for metric, field, spec, better in [
        ("deliveries/s", "deliveries_per_second", ",.0f", "high"),
        ("deliveries per CPU-s", "deliveries_per_cpu_second", ",.0f", "high"),
        ("p99 latency ms", "p99_ms", ".2f", "low"),
        ("lost", "lost", "d", "low"),
    ]:
        tv, nv = t.get(field), n.get(field)
        ratio = "-"
        if tv is not None and nv:
            ratio = f"{tv / nv:.2f}"
        print(f"{label:42} {metric:24} {fmt(tv, spec):>12} {fmt(nv, spec):>12} {ratio:>7}")
PY
