//! MPI all-gather throughput: `Mpi::all_gather_borrowed` (what the gathered protocols call: a
//! header exchange that checks the call and carries the lengths, one variable-count all-gather
//! under the watchdog, payloads borrowed from the receive buffer) against the raw rsmpi call
//! `all_gather_varcount_into` with the counts known in advance and the buffer preallocated; and
//! the float all-reduce, `Mpi::all_reduce_sum` (the header exchange, an all-to-all of the shares,
//! each rank's sum of its share in rank order and an all-gather of the sums, so that every rank
//! gets the same bits) against the raw `all_reduce_into` (`MPI_Allreduce`, which promises no such
//! thing).
//!
//! Harness-free, to run under `mpirun -np W` (every rank runs the same fixed schedule); run it
//! with as many ranks as cores too (`-np 2` on 2 cores), where the figures are not blurred by
//! ranks taking turns on a core. For each payload size: 9 rounds, each a fixed number of calls
//! of kindling's and of the raw call (which goes first alternates); rank 0 prints the median
//! time per call of each, the median of the rounds' ratios and, for the all-gather, the
//! throughput, bytes received per rank per second.

use std::time::Instant;

use kindling_dist::{Communicator, Mpi};
use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::datatype::PartitionMut;

const SIZES: [usize; 6] = [1 << 10, 16 << 10, 128 << 10, 1 << 20, 4 << 20, 16 << 20];
const ROUNDS: usize = 9;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it without, as a smoke test.
    let quick = !std::env::args().any(|a| a == "--bench");
    let mut comm = Mpi::init().expect("MPI initialises");
    let world = comm.world();
    let (rank, w) = (comm.rank(), comm.world_size());
    if rank == 0 {
        println!(
            "MPI all-gather, {w} ranks: median per call over {ROUNDS} rounds, \
             and the median of the rounds' ratios"
        );
        println!(
            "{:>10} {:>8} {:>14} {:>14} {:>7} {:>12} {:>12}",
            "payload", "calls", "kindling µs", "raw rsmpi µs", "ratio", "kindling GB/s", "raw GB/s"
        );
    }
    let sizes: &[usize] = if quick { &SIZES[..2] } else { &SIZES };
    let calls = |size: usize| {
        if quick {
            2
        } else {
            ((256 << 20) / (size * w).max(1)).clamp(2, 500)
        }
    };
    for &size in sizes {
        let payload = vec![rank as u8; size];
        let calls = calls(size);

        let counts = vec![size as i32; w];
        let displs: Vec<i32> = (0..w as i32).map(|r| r * size as i32).collect();
        let mut flat = vec![0u8; size * w];
        let (ours, raw, ratio) = time_pair(
            &world,
            calls,
            &mut || {
                let all = comm.all_gather_borrowed(&payload).expect("all-gather");
                assert_eq!(all.get(w - 1)[0], (w - 1) as u8);
            },
            &mut || {
                let mut partition = PartitionMut::new(&mut flat[..], &counts[..], &displs[..]);
                world.all_gather_varcount_into(&payload[..], &mut partition);
            },
        );
        assert_eq!(flat[(w - 1) * size], (w - 1) as u8);

        if rank == 0 {
            let received = ((w - 1) * size) as f64;
            println!(
                "{:>10} {:>8} {:>14.1} {:>14.1} {:>6.2}× {:>12.2} {:>12.2}",
                format!("{} KiB", size >> 10),
                calls,
                ours * 1e6,
                raw * 1e6,
                ratio,
                received / ours / 1e9,
                received / raw / 1e9
            );
        }
    }
    if rank == 0 {
        println!(
            "MPI all-reduce of f32, {w} ranks: median per call over {ROUNDS} rounds, \
             and the median of the rounds' ratios"
        );
        println!(
            "{:>10} {:>8} {:>14} {:>14} {:>7}",
            "buffer", "calls", "kindling µs", "raw rsmpi µs", "ratio"
        );
    }
    for &size in sizes {
        let calls = calls(size);
        let mut values = vec![rank as f32; size / 4];
        let input = values.clone();
        let mut sum = vec![0.0f32; size / 4];
        let (ours, raw, ratio) = time_pair(
            &world,
            calls,
            &mut || comm.all_reduce_sum(&mut values).expect("all-reduce"),
            &mut || world.all_reduce_into(&input[..], &mut sum[..], SystemOperation::sum()),
        );
        if rank == 0 {
            println!(
                "{:>10} {:>8} {:>14.1} {:>14.1} {:>6.2}×",
                format!("{} KiB", size >> 10),
                calls,
                ours * 1e6,
                raw * 1e6,
                ratio
            );
        }
    }
}

/// Times `ours` against `raw` over [`ROUNDS`] rounds, each round `calls` calls of one and then
/// of the other (which goes first alternates), between barriers, so that a slow spell of the
/// machine (4 ranks share 2 cores here) falls on both: the median time per call of each, and the
/// median of the rounds' ratios.
fn time_pair(
    world: &impl CommunicatorCollectives,
    calls: usize,
    ours: &mut dyn FnMut(),
    raw: &mut dyn FnMut(),
) -> (f64, f64, f64) {
    let per_call = |call: &mut dyn FnMut()| {
        call();
        world.barrier();
        let start = Instant::now();
        for _ in 0..calls {
            call();
        }
        world.barrier();
        start.elapsed().as_secs_f64() / calls as f64
    };
    let rounds: Vec<(f64, f64)> = (0..ROUNDS)
        .map(|round| {
            if round % 2 == 0 {
                let a = per_call(&mut *ours);
                (a, per_call(&mut *raw))
            } else {
                let b = per_call(&mut *raw);
                (per_call(&mut *ours), b)
            }
        })
        .collect();
    let median = |of: &dyn Fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(of).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(&|r| r.0), median(&|r| r.1), median(&|(a, b)| a / b))
}
