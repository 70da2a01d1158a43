#!/usr/bin/env bash
# Cross-node fanout: the same workloads against a 3-node tenthbit mesh (a
# triangle, and a line, which a NATS cluster cannot do) and a 3-node
# nats-server cluster (routes in a full mesh), in one run. Every server
# process is pinned to core 0, the load generator to core 1. The publisher
# sits on the first node; the 100 subscribers are spread over all three, so
# two thirds of the deliveries cross a link. CPU is the sum over the three
# server processes. Only processes this script started are stopped.
#
#   bench/compare-mesh.sh
#   MESSAGES=20000 RATE=5000 bench/compare-mesh.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MESSAGES=${MESSAGES:-10000}     # per publisher
SUBSCRIBERS=${SUBSCRIBERS:-100}
RATE=${RATE:-5000}              # msg/s for the latency run
work=target/bench-mesh

if ! command -v nats-server >/dev/null 2>&1; then
    echo "installing nats-server from Debian" >&2
    if [ "$(id -u)" -eq 0 ]; then apt-get install -y nats-server >&2; else sudo apt-get install -y nats-server >&2; fi
fi
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
cargo build --release --quiet
tenthbitd=target/release/tenthbitd

started=()
cleanup() { for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Waits (up to 20 s) for a line matching $2 in log file $1.
wait_for() {
    for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

client_port() { echo $((20807 + 10 * $1)); }   # node 1: 20817, node 2: 20827, ...
mesh_port() { echo $((20808 + 10 * $1)); }

# Writes node $1's config for peers $2... (their numbers).
write_config() {
    local n=$1; shift
    local dir="$work/n$n"
    mkdir -p "$dir"
    cat >"$dir/tenthbitd.toml" <<EOF
[server]
name = "chat.bench"
node = "n$n"
listen = ["127.0.0.1:$(client_port "$n")"]
data_dir = "$dir/data"

[tls]
# One client certificate for the whole server, as an operator gives its nodes.
cert_file = "$work/certs/tenthbitd.crt"
key_file = "$work/certs/tenthbitd.key"

[auth]
registration = "open"
max_failures_per_ip = 1000000

[limits]
packets_per_second = 10000000
packet_burst = 10000000
max_connections = 100000
max_connections_per_ip = 100000
max_sendq_packets = 65536
max_sendq_bytes = 268435456
login_timeout_ms = 600000
keepalive_interval_ms = 600000
idle_timeout_ms = 1200000

[mesh]
enabled = true
listen = "127.0.0.1:$(mesh_port "$n")"
cert_file = "$dir/certs/mesh.crt"
key_file = "$dir/certs/mesh.key"
EOF
    for p in "$@"; do
        cat >>"$dir/tenthbitd.toml" <<EOF

[[mesh.peer]]
node = "n$p"
addr = "127.0.0.1:$(mesh_port "$p")"
fingerprint = "${fingerprints[$p]}"
EOF
    done
}

# Starts a tenthbit mesh of shape $1 (triangle or line); sets tpids.
start_mesh() {
    local shape=$1
    rm -rf "$work/n1" "$work/n2" "$work/n3"
    declare -gA fingerprints=()
    for n in 1 2 3; do
        write_config "$n"
        fingerprints[$n]=$("$tenthbitd" --config "$work/n$n/tenthbitd.toml" mesh fingerprint)
    done
    if [ "$shape" = triangle ]; then
        write_config 1 2 3; write_config 2 1 3; write_config 3 1 2
    else
        write_config 1 2; write_config 2 1 3; write_config 3 2
    fi
    tpids=()
    for n in 1 2 3; do
        taskset -c 0 "$tenthbitd" --config "$work/n$n/tenthbitd.toml" >"$work/n$n.log" 2>&1 &
        tpids+=("$!"); started+=("$!")
        wait_for "$work/n$n.log" "connect with"
    done
    local links=2; [ "$shape" = line ] && links=1
    for n in 1 2 3; do
        local want=$links; [ "$shape" = line ] && [ "$n" = 2 ] && want=2
        for _ in $(seq 200); do
            up=$("$tenthbitd" --config "$work/n$n/tenthbitd.toml" mesh status --json 2>/dev/null |
                python3 -c 'import json,sys; print(sum(l["state"]=="up" for l in json.load(sys.stdin)["links"]))' 2>/dev/null || echo 0)
            [ "$up" = "$want" ] && break
            sleep 0.1
        done
        [ "$up" = "$want" ] || { echo "n$n: $up links up, want $want" >&2; exit 1; }
    done
}

stop_all() { for p in "$@"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }

bench() { taskset -c 1 target/release/tenthbit bench "$@"; }

rm -rf "$work"; mkdir -p "$work"

for shape in triangle line; do
    echo "tenthbit $shape: fanout, fanout at ${RATE} msg/s" >&2
    start_mesh "$shape"
    fp=$(grep -o 'sha256=[0-9A-F:]*' "$work/n1.log" | head -1 | cut -d= -f2)
    spread="127.0.0.1:$(client_port 2),127.0.0.1:$(client_port 3)"
    common=(--fingerprint "$fp" --server-name localhost --json --server-pid "${tpids[0]}"
        --spread "$spread" --spread-pids "${tpids[1]},${tpids[2]}")
    bench "127.0.0.1:$(client_port 1)" "${common[@]}" fanout --subscribers "$SUBSCRIBERS" \
        --messages "$MESSAGES" >"$work/t-$shape-fanout.json"
    bench "127.0.0.1:$(client_port 1)" "${common[@]}" fanout --subscribers "$SUBSCRIBERS" \
        --messages "$MESSAGES" --rate "$RATE" >"$work/t-$shape-rate.json"
    stop_all "${tpids[@]}"
done

# nats-server: three servers, routes in a full mesh, the same client
# certificate (tenthbitd generated it above).
npids=()
for n in 1 2 3; do
    routes=""
    for p in 1 2 3; do [ "$p" = "$n" ] || routes="$routes,nats-route://127.0.0.1:$((24247 + p))"; done
    taskset -c 0 nats-server -a 127.0.0.1 -p $((24221 + n)) --tls \
        --tlscert "$work/certs/tenthbitd.crt" --tlskey "$work/certs/tenthbitd.key" \
        --cluster_name bench --cluster "nats://127.0.0.1:$((24247 + n))" --routes "${routes#,}" \
        >"$work/nats$n.log" 2>&1 &
    npids+=("$!"); started+=("$!")
    wait_for "$work/nats$n.log" "Server is ready"
done
for n in 1 2 3; do wait_for "$work/nats$n.log" "Route connection created"; done
# Each server routes to the two others.
for n in 1 2 3; do
    for _ in $(seq 100); do [ "$(grep -c 'Route connection created' "$work/nats$n.log")" -ge 2 ] && break; sleep 0.1; done
done
echo "nats cluster: fanout, fanout at ${RATE} msg/s" >&2
fp=$(grep -o 'sha256=[0-9A-F:]*' "$work/n1.log" | head -1 | cut -d= -f2)
common=(--fingerprint "$fp" --server-name localhost --json --nats --server-pid "${npids[0]}"
    --spread "127.0.0.1:24223,127.0.0.1:24224" --spread-pids "${npids[1]},${npids[2]}")
bench 127.0.0.1:24222 "${common[@]}" fanout --subscribers "$SUBSCRIBERS" --messages "$MESSAGES" >"$work/n-fanout.json"
bench 127.0.0.1:24222 "${common[@]}" fanout --subscribers "$SUBSCRIBERS" --messages "$MESSAGES" --rate "$RATE" >"$work/n-rate.json"
stop_all "${npids[@]}"

python3 - "$work" "$RATE" <<'PY'
import json, sys
work, rate = sys.argv[1], sys.argv[2]
def load(name):
    with open(f"{work}/{name}.json") as f:
        return json.load(f)
def dup(r):
    return dict(r.get("notes", [])).get("duplicated", "-")
rows = [(f"fanout 1 -> 100 over 3 nodes, unthrottled", "fanout"),
        (f"fanout 1 -> 100 over 3 nodes, {rate} msg/s", "rate")]
print(f"{'workload':44} {'metric':22} {'triangle':>12} {'line':>12} {'nats':>12} {'tri/nats':>8}")
for label, key in rows:
    tri, line, n = load(f"t-triangle-{key}"), load(f"t-line-{key}"), load(f"n-{key}")
    for metric, field, spec in [
        ("deliveries/s", "deliveries_per_second", ",.0f"),
        ("deliveries per CPU-s", "deliveries_per_cpu_second", ",.0f"),
        ("p50 ms", "p50_ms", ".2f"),
        ("p99 ms", "p99_ms", ".2f"),
        ("lost", "lost", "d"),
    ]:
        vals = [r.get(field) for r in (tri, line, n)]
        cells = ["-" if v is None else format(v, spec) for v in vals]
        ratio = f"{vals[0] / vals[2]:.2f}" if vals[0] is not None and vals[2] else "-"
        print(f"{label:44} {metric:22} {cells[0]:>12} {cells[1]:>12} {cells[2]:>12} {ratio:>8}")
    print(f"{label:44} {'duplicated':22} {dup(tri):>12} {dup(line):>12} {dup(n):>12}")
PY
