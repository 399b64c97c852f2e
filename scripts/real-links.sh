#!/usr/bin/env bash
# Time-to-accuracy over a real rate-limited network: the digits MLP on 4 MPI ranks whose every
# byte crosses a token-bucket-limited link.
#
# Inside a network namespace of its own (`unshare -n`, or `unshare -rn` with a user namespace
# when not root), the script brings up loopback with a 1500-byte MTU, limits it with
# `tc qdisc … tbf rate RATE` (netem is not needed), and runs `data-parallel --mpi --compare`
# under `mpirun` with Open MPI's TCP transport only (no shared memory), so all MPI traffic of
# the 4 ranks shares one RATE link. The host's own network is untouched.
#
#   scripts/real-links.sh [--rate 100mbit] [--epochs 8] [--hidden 256] [--out DIR]
#                         [--exe PATH] [--smoke]
#
# --exe   the data-parallel binary built with `--features mpi`
#         (default: cargo build --release -p data-parallel --features mpi)
# --smoke one epoch, for CI: checks the set-up works and every protocol trains over it
#
# Output: DIR/real-links-RATE.txt (the per-epoch tables, with measured wall seconds) and
# DIR/data-parallel-wall.svg (accuracy against measured training seconds), plus the other
# --compare plots.
set -euo pipefail

rate=100mbit epochs=8 hidden=256 out=target/real-links exe="" smoke=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) rate=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --hidden) hidden=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --exe) exe=$2; shift 2 ;;
    --smoke) smoke=1; epochs=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

for tool in mpirun tc ip unshare; do
  command -v "$tool" >/dev/null || { echo "real-links: needs $tool" >&2; exit 1; }
done
if [ -z "$exe" ]; then
  cargo build --release -p data-parallel --features mpi
  exe="${CARGO_TARGET_DIR:-target}/release/data-parallel"
fi
[ -x "$exe" ] || { echo "real-links: no executable at $exe" >&2; exit 1; }
mkdir -p "$out"
exe=$(realpath "$exe") out=$(realpath "$out")

if [ "$(id -u)" -eq 0 ]; then ns=(unshare -n); else ns=(unshare -rn); fi
"${ns[@]}" bash -s "$rate" "$epochs" "$hidden" "$out" "$exe" <<'INNER' | tee "$out/real-links-$rate.txt"
set -euo pipefail
rate=$1 epochs=$2 hidden=$3 out=$4 exe=$5
ip link set lo up mtu 1500
# A burst of 32 KiB (more than the MTU, as tbf needs) and a 100 ms queue.
tc qdisc add dev lo root tbf rate "$rate" burst 32kb latency 100ms
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "4 MPI ranks over TCP on loopback limited to $rate (tbf), $epochs epochs, hidden $hidden"
mpirun --oversubscribe -np 4 --mca btl tcp,self --mca btl_tcp_if_include lo \
  --mca oob_tcp_if_include lo \
  "$exe" --mpi --compare --epochs "$epochs" --hidden "$hidden" --out-dir "$out" </dev/null
echo "link counters:"
tc -s qdisc show dev lo
INNER
echo "real-links: tables in $out/real-links-$rate.txt, plots in $out"
