#!/usr/bin/env bash
# Time-to-accuracy over a real rate-limited network: the digits MLP on 4 MPI ranks whose every
# byte crosses a token-bucket-limited link, measured beside NetworkModel's prediction.
#
# Two networks (--links), each inside a network namespace of its own (`unshare -n`), so the
# host's own network is untouched; Open MPI uses its TCP transport only (no shared memory):
#
# shared    (default) loopback with a 1500-byte MTU, limited by `tc qdisc … tbf rate RATE`
#           (netem is not needed): all traffic of the 4 ranks shares one RATE link, which the
#           model sees as 4 links of RATE/4 each (the same total bytes per second). Works as
#           root or, with a user namespace (`unshare -rn`), without.
# switched  one link per rank, as on a switched cluster: each rank runs in a network namespace
#           of its own with one end of a veth pair whose other end is on a bridge, and each
#           rank's outgoing traffic is limited to RATE (`tbf` on its end; every byte a rank
#           receives left another rank through its limit). The model sees 4 links of RATE.
#           Needs root (`ip netns`).
#
# It runs once without a limit (the compute time: TCP with no limit) and once per rate, and
# prints, per rate and protocol, the measured training seconds to the epoch where the protocol
# first reaches the dense run's final accuracy, and the prediction: that epoch's unlimited time
# plus NetworkModel's communication time.
#
#   scripts/real-links.sh [--links shared|switched] [--rates "100mbit 1gbit"] [--epochs 8]
#                         [--hidden 256] [--out DIR] [--exe PATH] [--smoke]
#
# --exe   the data-parallel binary built with `--features mpi`
#         (default: cargo build --release -p data-parallel --features mpi)
# --smoke one epoch at 100mbit, for CI: the set-up works and every protocol trains over it
#
# Output under DIR: per run (unlimited, each rate) a folder with the example's tables
# (run.txt), its per-epoch CSV and plots (data-parallel-wall.svg: accuracy against measured
# seconds); and summary.txt, the time-to-accuracy table.
set -euo pipefail

links=shared rates="100mbit 1gbit" epochs=8 hidden=256 out=target/real-links exe="" smoke=0
while [ $# -gt 0 ]; do
  case "$1" in
    --links) links=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --hidden) hidden=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --exe) exe=$2; shift 2 ;;
    --smoke) smoke=1; epochs=1; rates=100mbit; shift ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$links" in
  shared) per_rank=4 ;;
  switched)
    per_rank=1
    [ "$(id -u)" -eq 0 ] || { echo "real-links: --links switched needs root (ip netns)" >&2; exit 1; } ;;
  *) echo "real-links: --links is shared or switched, not $links" >&2; exit 2 ;;
esac

for tool in mpirun tc ip unshare awk; do
  command -v "$tool" >/dev/null || { echo "real-links: needs $tool" >&2; exit 1; }
done
if [ -z "$exe" ]; then
  cargo build --release -p data-parallel --features mpi
  exe="${CARGO_TARGET_DIR:-target}/release/data-parallel"
fi
[ -x "$exe" ] || { echo "real-links: no executable at $exe" >&2; exit 1; }
mkdir -p "$out"
exe=$(realpath "$exe") out=$(realpath "$out")

# A tc rate (100mbit, 1gbit, 500kbit) in Gb/s.
gbps() {
  awk -v r="$1" 'BEGIN {
    n = r + 0; u = tolower(substr(r, length(n "") + 1))
    if (u == "gbit") print n; else if (u == "mbit") print n / 1e3;
    else if (u == "kbit") print n / 1e6; else { print "bad rate " r > "/dev/stderr"; exit 1 }
  }'
}

# One run in a fresh namespace: $1 = rate ("none": no limit), $2 = the model's per-rank Gb/s.
run() {
  local rate=$1 model=$2 dir="$out/$1"
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then local ns=(unshare -n); else local ns=(unshare -rn); fi
  "${ns[@]}" bash -s "$links" "$rate" "$model" "$epochs" "$hidden" "$dir" "$exe" <<'INNER' > "$dir/run.txt"
set -euo pipefail
links=$1 rate=$2 model=$3 epochs=$4 hidden=$5 dir=$6 exe=$7
args=(--mpi --compare --epochs "$epochs" --hidden "$hidden" --bandwidth "$model" --out-dir "$dir")
# A bucket of 4 KiB (more than one full packet, as tbf needs) and a 100 ms queue. A real link
# cannot bank its idle time: with a larger bucket (32 KiB) the tokens saved while the ranks
# compute let each step's small payloads cross at loopback speed, and the codecs measured 30-60%
# faster than any link of that rate could carry them.
limit=(tbf rate "$rate" burst 4kb latency 100ms)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ "$links" = shared ]; then
  ip link set lo up mtu 1500
  [ "$rate" = none ] || tc qdisc add dev lo root "${limit[@]}"
  net=(--mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)
  launch=(-np 4 "$exe" "${args[@]}")
  echo "4 MPI ranks over TCP on loopback, limit: $rate shared; $epochs epochs, hidden $hidden"
else
  # The bridge and the host ends live in this namespace (gone with it); the ranks' namespaces
  # are named, so removed on the way out.
  tag=kl$$
  ranks=()
  trap 'for n in "${ranks[@]}"; do ip netns del "$n" 2>/dev/null || true; done' EXIT
  ip link set lo up
  ip link add "$tag"br type bridge
  ip addr add 10.77.0.254/24 dev "$tag"br
  ip link set "$tag"br up
  launch=()
  for k in 0 1 2 3; do
    n="$tag"r$k
    ip netns add "$n"
    ranks+=("$n")
    ip link add "$tag"h$k type veth peer name "$tag"p$k
    ip link set "$tag"p$k netns "$n"
    ip link set "$tag"h$k master "$tag"br up
    ip netns exec "$n" ip link set lo up
    ip netns exec "$n" ip link set "$tag"p$k name eth0
    ip netns exec "$n" ip addr add 10.77.0.$((k + 1))/24 dev eth0
    ip netns exec "$n" ip link set eth0 up mtu 1500
    [ "$rate" = none ] || ip netns exec "$n" tc qdisc add dev eth0 root "${limit[@]}"
    [ $k -eq 0 ] || launch+=(:)
    launch+=(-np 1 ip netns exec "$n" "$exe" "${args[@]}")
  done
  # The ranks reach mpirun's PMIx server across the bridge, not on its loopback.
  export PMIX_MCA_ptl_tcp_remote_connections=1 PMIX_MCA_ptl_tcp_if_include=10.77.0.0/24
  net=(--mca btl_tcp_if_include 10.77.0.0/24)
  echo "4 MPI ranks over TCP, one link per rank, each rank's sending limited to: $rate; $epochs epochs, hidden $hidden"
fi
mpirun --oversubscribe --mca btl tcp,self "${net[@]}" "${launch[@]}" </dev/null
echo "link counters:"
if [ "$links" = shared ]; then
  tc -s qdisc show dev lo
else
  for n in "${ranks[@]}"; do ip netns exec "$n" tc -s qdisc show dev eth0; done
fi
INNER
  echo "real-links: $rate done ($dir/run.txt)"
}

run none 1000
for rate in $rates; do
  run "$rate" "$(awk -v g="$(gbps "$rate")" -v k="$per_rank" 'BEGIN { print g / k }')"
done

# Time to the dense run's final accuracy, measured and predicted.
{
  for rate in $rates; do
    if [ "$links" = shared ]; then
      echo "== $rate shared by 4 ranks (modelled as 4 links of $rate/4, 50 µs latency)"
    else
      echo "== $rate per rank, switched (modelled as 4 links of $rate, 50 µs latency)"
    fi
    awk -F, -v rate="$rate" '
      FNR == 1 { file++; next }
      file == 1 { base[$1 "," $2] = $6; next }
      {
        acc[$1 "," $2] = $3; model[$1 "," $2] = $5; wall[$1 "," $2] = $6
        if (!($1 in last) || $2 > last[$1]) last[$1] = $2
        if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 }
      }
      END {
        target = acc["Dense," last["Dense"]]
        printf "%-9s %6s %6s %10s %10s %7s %9s\n", "protocol", "acc", "epoch", "measured", "predicted", "error", "÷ dense"
        for (i = 1; i <= n; i++) {
          p = order[i]; hit = 0
          for (e = 1; e <= last[p]; e++) if (acc[p "," e] >= target) { hit = e; break }
          if (!hit) { printf "%-9s %5.1f%% %6s %10s %10s %7s %9s\n", p, 100 * acc[p "," last[p]], "-", "-", "-", "-", "-"; continue }
          k = p "," hit; m = wall[k]; pred = base[k] + model[k]
          if (p == "Dense") dense = m
          printf "%-9s %5.1f%% %6d %9.2fs %9.2fs %6.0f%% %8.2f×\n", p, 100 * acc[k], hit, m, pred, 100 * (pred - m) / m, m / dense
        }
        printf "dense final accuracy: %.1f%%\n", 100 * target
      }' "$out/none/data-parallel-epochs.csv" "$out/$rate/data-parallel-epochs.csv"
  done
} | tee "$out/summary.txt"
