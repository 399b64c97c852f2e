//! The MPI transport on W processes (harness-free: every rank runs `main`). Run under
//! `mpirun -np 4` (as `.ci/run` does); a single process is a world of one.
//!
//! Checks: collectives and their byte counts; bit-identical replicas after every step for every
//! protocol; and that MPI and a `LocalGroup` of the same size train a gathered-codec model to the
//! same bits (gathered protocols decode and average in rank order on every rank, whatever the
//! transport); and that a burn-train `Learner` with `CompressedDdp` over MPI, one rank per
//! process, ends with the same parameters as the same strategy on worker threads. A failed check
//! panics this rank, and `mpirun` fails the job.

use std::sync::Arc;

use burn::optim::SgdConfig;
use burn::train::Learner;
use burn::train::logger::InMemoryMetricLogger;
use kindling_compress::Qsgd;
use kindling_dist::*;
use kindling_examples_common::mlp::Mlp;
use kindling_optim::EpochRenderer;

mod common;
use common::*;
mod learning;
use learning::*;

fn main() {
    // ANCHOR: init
    let mut mpi = Mpi::init().expect("MPI initialises");
    // ANCHOR_END: init
    collectives_and_byte_counts(&mut mpi);
    every_protocol_keeps_replicas_bit_identical(&mut mpi);
    mpi_matches_a_local_group(&mut mpi);
    let mut comm = a_learner_over_mpi_matches_worker_threads(mpi);
    comm.barrier().unwrap();
    if comm.rank() == 0 {
        println!("mpi: {} ranks, all checks passed", comm.world_size());
    }
}

fn collectives_and_byte_counts(mpi: &mut Mpi) {
    let (rank, w) = (mpi.rank(), mpi.world_size());
    let before = mpi.traffic();
    let mut v = vec![rank as f32, 1.0];
    mpi.all_reduce_sum(&mut v).unwrap();
    assert_eq!(v, vec![(w * (w - 1) / 2) as f32, w as f32]);
    let all = mpi.all_gather(vec![rank as u8; rank + 1]).unwrap();
    assert_eq!(
        all,
        (0..w).map(|r| vec![r as u8; r + 1]).collect::<Vec<_>>()
    );
    let root = w - 1;
    let b = mpi
        .broadcast(if rank == root { vec![9; 5] } else { vec![] }, root)
        .unwrap();
    assert_eq!(b, vec![9; 5]);
    assert_eq!(
        mpi.all_reduce_max(rank as f32 * 2.0).unwrap(),
        2.0 * root as f32
    );
    assert!(
        mpi.broadcast(vec![], w).is_err(),
        "a root outside the group"
    );
    // The same counts as LocalGroup: ring all-reduce of 8 bytes, all-gather, broadcast, max.
    let ring = (8 * 2 * (w - 1) / w) as u64;
    let gathered_others = ((1..=w).sum::<usize>() - (rank + 1)) as u64;
    let (bcast_sent, bcast_received) = if rank == root {
        (5 * (w as u64 - 1), 0)
    } else {
        (0, 5)
    };
    let after = mpi.traffic();
    assert_eq!(
        after.sent - before.sent,
        ring + (rank as u64 + 1) * (w as u64 - 1) + bcast_sent + 4 * (w as u64 - 1)
    );
    assert_eq!(
        after.received - before.received,
        ring + gathered_others + bcast_received + 4 * (w as u64 - 1)
    );
}

fn every_protocol_keeps_replicas_bit_identical(mpi: &mut Mpi) {
    struct Check<'a>(&'a mut Mpi);
    impl EachProtocol for Check<'_> {
        fn visit<R: Reducer>(&mut self, name: &str, make: impl Fn() -> R + Sync) {
            let w = self.0.world_size();
            let (data, test) = shards(w);
            let (prints, _) =
                train_rank(&mut *self.0, make(), &data, &test, 3, 0.1, sgd(), no_tamper).unwrap();
            let bytes: Vec<u8> = prints.iter().flat_map(|p| p.to_le_bytes()).collect();
            let all = self.0.all_gather(bytes).unwrap();
            assert!(
                all.iter().all(|b| *b == all[0]),
                "{name}: replicas differ on rank {}",
                self.0.rank()
            );
        }
    }
    each_protocol(&mut Check(mpi));
}

fn mpi_matches_a_local_group(mpi: &mut Mpi) {
    let w = mpi.world_size();
    let (data, test) = shards(w);
    let make = || Gathered::new(Qsgd::new(4).unwrap());
    let (over_mpi, _) =
        train_rank(&mut *mpi, make(), &data, &test, 3, 0.1, sgd(), no_tamper).unwrap();
    if mpi.rank() == 0 {
        let local = run_workers(w, TIMEOUT, |g| {
            train_rank(g, make(), &data, &test, 3, 0.1, sgd(), no_tamper)
        })
        .unwrap();
        assert_eq!(over_mpi, local[0].0, "MPI and LocalGroup disagree");
    }
}

/// Two epochs of QSGD under `Learner`, one rank per process; the strategy owns the communicator
/// while it trains and hands it back after.
fn a_learner_over_mpi_matches_worker_threads(mpi: Mpi) -> Box<dyn Communicator> {
    let (rank, w) = (mpi.rank(), mpi.world_size());
    let data = data();
    let device = kindling_testing::autodiff_device();
    let make = || Gathered::new(Qsgd::new(4).unwrap());
    let train = |ddp: Arc<CompressedDdp<Gathered<Qsgd>>>, name: &str| {
        let dir = scratch(&format!("{name}-rank{rank}"));
        // Each rank builds a different model: the strategy starts every replica from rank 0's.
        let model = Mlp::new(32, 1 + rank as u64, &device);
        let result = training(&dir, &data, ddp, 2)
            .with_metric_logger(InMemoryMetricLogger::new())
            .renderer(Box::new(EpochRenderer::new()))
            .launch(Learner::new(model, SgdConfig::new().init(), 0.3));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(result.error.is_none(), "{name}: {:?}", result.error);
        fingerprint(&result.model)
    };
    let ddp = Arc::new(CompressedDdp::with_communicator(
        mpi,
        device.clone(),
        make(),
    ));
    let over_mpi = train(ddp.clone(), "learner-mpi");
    let mut comm = ddp
        .take_communicator()
        .expect("the communicator comes back");
    let all = comm.all_gather(over_mpi.to_le_bytes().to_vec()).unwrap();
    assert!(
        all.iter().all(|b| *b == all[0]),
        "Learner replicas differ across ranks"
    );
    if rank == 0 {
        let threads = Arc::new(CompressedDdp::new(vec![device.clone(); w], make()).unwrap());
        assert_eq!(
            over_mpi,
            train(threads, "learner-threads"),
            "Learner over MPI and over worker threads disagree"
        );
    }
    comm
}
