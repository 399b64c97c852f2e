//! The MPI transport on W processes (harness-free: every rank runs `main`). Run under
//! `mpirun -np 4` (as `.ci/run` does); a single process is a world of one.
//!
//! Checks: collectives and their byte counts; bit-identical replicas after every step for every
//! protocol, the same bits as a `LocalGroup` of the same size trains (gathered protocols decode
//! and average in rank order on every rank, and both transports' all-reduces sum every entry in
//! rank order); and that a burn-train `Learner` with `CompressedDdp` over MPI, one rank per
//! process, ends with the same parameters as the same strategy on worker threads. A failed check
//! panics this rank, and `mpirun` fails the job.
//!
//! **Faults.** Run without `mpirun` and with the argument `--faults`, the binary is a driver: it
//! launches `mpirun -np 4` on itself once per fault (`--fault NAME`, see [`FAULTS`]) and asserts
//! that the job ends non-zero within the fault's bound, with the root cause in its output.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::optim::{GradientsParams, SgdConfig};
use burn::train::Learner;
use burn::train::logger::InMemoryMetricLogger;
use kindling_compress::{Qsgd, TernGrad};
use kindling_dist::*;
use kindling_examples_common::mlp::Mlp;
use kindling_optim::EpochRenderer;

mod common;
use common::*;
mod learning;
use learning::*;

/// The collective timeout of the fault runs.
const FAULT_TIMEOUT: Duration = Duration::from_secs(8);

/// How a fault must end the job.
#[derive(Clone, Copy)]
enum Ends {
    /// At once, by the failing rank (well before any timeout).
    Immediately,
    /// By the watchdog: after the collective timeout, and within a few seconds of it.
    ByWatchdog,
}

/// Each fault: its name, what the job's output must contain, and how it ends.
const FAULTS: [(&str, &str, Ends); 10] = [
    (
        "error",
        "rank 2 of 4: cannot encode parameter 0 on rank 2",
        Ends::Immediately,
    ),
    ("panic", "injected panic on rank 1", Ends::Immediately),
    (
        "learner-shape",
        "rank 2 of 4: protocol error: broadcast module has",
        Ends::Immediately,
    ),
    (
        "stall",
        "did not complete within 8s: rank 3 ",
        Ends::ByWatchdog,
    ),
    // The same stall with an MPI one-sided component that cannot share memory (`--mca osc
    // pt2pt`): no progress board, the job still ends at the watchdog and says so.
    (
        "stall-unseen",
        "did not complete within 8s: the progress of rank(s)",
        Ends::ByWatchdog,
    ),
    (
        "fewer-batches",
        "did not complete within 8s: rank 1 has finished (dropped its handle)",
        Ends::ByWatchdog,
    ),
    (
        "shape",
        "mismatched collectives: rank 0 called an all-reduce of",
        Ends::Immediately,
    ),
    (
        "mismatched-collectives",
        "mismatched collectives: rank 0 called a barrier as its collective #0, rank 1 called an all-gather as its collective #0",
        Ends::Immediately,
    ),
    (
        "corrupt-payload",
        "payload from rank 2 for parameter 0 does not decode",
        Ends::Immediately,
    ),
    (
        "non-finite-scale",
        "cannot encode parameter 0 on rank 1",
        Ends::Immediately,
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--faults") {
        return drive_faults(&args[0]);
    }
    if let Some(at) = args.iter().position(|a| a == "--fault") {
        return fault(&args[at + 1]);
    }
    // ANCHOR: init
    let mut mpi = Mpi::init().expect("MPI initialises");
    // ANCHOR_END: init
    collectives_and_byte_counts(&mut mpi);
    every_protocol_keeps_replicas_bit_identical(&mut mpi);
    frozen_parameters_train_the_same_on_every_rank(&mut mpi);
    let mut comm = a_learner_over_mpi_matches_worker_threads(mpi);
    comm.barrier().unwrap();
    if comm.rank() == 0 {
        println!("mpi: {} ranks, all checks passed", comm.world_size());
    }
}

/// Launches `mpirun -np 4` on this binary for every fault and checks how each job ends.
fn drive_faults(exe: &str) {
    for (name, expected, ends) in FAULTS {
        let start = Instant::now();
        let mut child = Command::new("mpirun")
            .args(if name == "stall-unseen" {
                &["--mca", "osc", "pt2pt"][..]
            } else {
                &[]
            })
            .args(["--oversubscribe", "-np", "4", exe, "--fault", name])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mpirun starts (install openmpi-bin)");
        let pipes = (child.stdout.take(), child.stderr.take());
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let (mut out, mut err) = (pipes.0.expect("stdout"), pipes.1.expect("stderr"));
            let mut buf = String::new();
            err.read_to_string(&mut buf).ok();
            text.push_str(&buf);
            buf.clear();
            out.read_to_string(&mut buf).ok();
            text.push_str(&buf);
            text
        });
        let guard = FAULT_TIMEOUT * 4;
        let status = loop {
            if let Some(status) = child.try_wait().expect("mpirun runs") {
                break Some(status);
            }
            if start.elapsed() > guard {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = start.elapsed();
        let output = reader.join().expect("output reader");
        let status = status.unwrap_or_else(|| {
            panic!("fault {name}: the job still ran after {guard:?}; output:\n{output}")
        });
        assert!(
            !status.success(),
            "fault {name}: the job exited successfully; output:\n{output}"
        );
        assert!(
            output.contains(expected),
            "fault {name}: the output does not name the root cause `{expected}`:\n{output}"
        );
        let bound = match ends {
            Ends::Immediately => FAULT_TIMEOUT,
            Ends::ByWatchdog => FAULT_TIMEOUT + Duration::from_secs(10),
        };
        assert!(
            elapsed < bound,
            "fault {name}: the job took {elapsed:?}, the bound is {bound:?}; output:\n{output}"
        );
        if let Ends::ByWatchdog = ends {
            assert!(
                elapsed >= FAULT_TIMEOUT,
                "fault {name}: ended after {elapsed:?}, before the watchdog could fire"
            );
        }
        println!("fault {name}: ended ({status}) after {elapsed:.1?}, bound {bound:?}");
    }
    println!(
        "mpi faults: all {} end every rank within their bound",
        FAULTS.len()
    );
}

/// One rank of the job for fault `name`.
fn fault(name: &str) {
    let mut mpi = Mpi::init()
        .and_then(|m| m.with_timeout(FAULT_TIMEOUT))
        .expect("MPI initialises");
    let (rank, w) = (mpi.rank(), mpi.world_size());
    let (data, test) = shards(w);
    let qsgd = || Gathered::new(Qsgd::new(4).unwrap());
    if name == "learner-shape" {
        // Rank 2 builds a narrower model under a `Learner`: its copy of rank 0's parameters does
        // not fit, and the strategy ends the job (the launch's result is not even read; the
        // strategy, and `Mpi` with it, are dropped as a program would).
        let device = kindling_testing::autodiff_device();
        let model = Mlp::new(if rank == 2 { 16 } else { 32 }, 0, &device);
        let ddp = Arc::new(CompressedDdp::with_communicator(mpi, device, qsgd()));
        let dir = scratch(&format!("learner-shape-rank{rank}"));
        let _ = training(&dir, &learning::data(), ddp, 1)
            .with_metric_logger(InMemoryMetricLogger::new())
            .launch(Learner::new(model, SgdConfig::new().init(), 0.1));
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let outcome = match name {
        // Rank 2's gradient holds NaN: its encoder refuses it.
        "error" => train_rank(&mut mpi, qsgd(), &data, &test, 3, 0.1, sgd(), |r, g, m| {
            if r == 2 { scale(g, m, f64::NAN) } else { g }
        })
        .map(|_| ()),
        "panic" => train_rank(&mut mpi, qsgd(), &data, &test, 3, 0.1, sgd(), |r, g, _| {
            assert!(r != 1, "injected panic on rank 1");
            g
        })
        .map(|_| ()),
        // Rank 3 stops itself (SIGSTOP) after its first step.
        "stall" | "stall-unseen" => {
            train_rank(&mut mpi, qsgd(), &data, &test, 3, 0.1, sgd(), |r, g, _| {
                if r == 3 && STEPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 1 {
                    let pid = std::process::id().to_string();
                    let _ = Command::new("kill").args(["-STOP", &pid]).status();
                }
                g
            })
            .map(|_| ())
        }
        // Rank 1 runs out of data after 1 step and finishes; the others take 3.
        "fewer-batches" => {
            let steps = if rank == 1 { 1 } else { 3 };
            train_rank(&mut mpi, qsgd(), &data, &test, steps, 0.1, sgd(), no_tamper).map(|_| ())
        }
        // Rank 2 builds a narrower model (and nobody broadcasts): dense all-reduces of
        // different lengths.
        "shape" => {
            let device = kindling_testing::autodiff_device();
            let model = Mlp::new(if rank == 2 { 16 } else { 32 }, 0, &device);
            let mut trainer = DataParallel::new(&mut mpi, Dense::new(), 0);
            let grads = GradientsParams::from_grads(model.loss(&data[rank]).backward(), &model);
            trainer.step(model, grads, &mut sgd(), 0.1).map(|_| ())
        }
        // Direct collectives: the program reports its own error with `fail`.
        "mismatched-collectives" => {
            let called = if rank == 0 {
                mpi.barrier()
            } else {
                mpi.all_gather(vec![1, 2, 3]).map(|_| ())
            };
            if let Err(e) = &called {
                mpi.fail(&e.to_string());
            }
            called
        }
        "corrupt-payload" => {
            let corrupting = Corrupting {
                inner: &mut mpi,
                victim: 2,
            };
            let terngrad = TernGradShared::new(TernGrad::new());
            train_rank(corrupting, terngrad, &data, &test, 3, 0.1, sgd(), no_tamper).map(|_| ())
        }
        // Rank 1's gradient overflows to ±∞: TernGrad's shared scale must name it.
        "non-finite-scale" => {
            let terngrad = TernGradShared::new(TernGrad::new());
            train_rank(
                &mut mpi,
                terngrad,
                &data,
                &test,
                3,
                0.1,
                sgd(),
                |r, g, m| {
                    if r == 1 { scale(g, m, 1e39) } else { g }
                },
            )
            .map(|_| ())
        }
        other => panic!("no fault named {other}"),
    };
    // A program that reports an error and returns normally: only the transport's own handling
    // (`fail` from the trainers, the watchdog, the finishing handshake) ends the job, and a job
    // in which every rank returned would exit 0.
    if let Err(e) = outcome {
        eprintln!("rank {rank}: {e}");
    }
    drop(mpi);
}

/// Steps taken by this process (the stall fault's trigger).
static STEPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

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
    // LocalGroup's counts (ring all-reduce of 8 bytes, all-gather, broadcast) plus MPI's headers
    // to and from each peer. A slot is sized by the collective two back: the all-reduce and
    // the all-gather carry bare 32-byte headers and their data separately; from then on the slot
    // is the all-reduce's 8 bytes, for the broadcast and for the max's all-gather, whose 4-byte
    // payloads travel inside it (the out-of-range root fails before its header).
    let hops = w as u64 - 1;
    let ring = (8 * 2 * (w - 1) / w) as u64;
    let headers = (2 * 32 + 2 * (32 + 8)) * hops;
    let gathered_sent = (rank as u64 + 1) * hops;
    let gathered_received = ((1..=w).sum::<usize>() - (rank + 1)) as u64;
    let (bcast_sent, bcast_received) = if rank == root { (5 * hops, 0) } else { (0, 5) };
    let after = mpi.traffic();
    assert_eq!(
        after.sent - before.sent,
        ring + gathered_sent + bcast_sent + headers
    );
    assert_eq!(
        after.received - before.received,
        ring + gathered_received + bcast_received + headers
    );
    // Message rounds (W − 1 per header exchange or all-gather, 2·(W − 1) per ring all-reduce):
    // the all-reduce is a header exchange and a ring, the all-gather and the broadcast each a
    // header exchange and their data, the max one header exchange.
    assert_eq!(
        after.rounds - before.rounds,
        3 * hops + 2 * hops + 2 * hops + hops
    );
    // A small all-reduce now rides in the header exchange (the slot fits 8 bytes): one
    // collective, its sum exact in rank order on every rank.
    let before = mpi.traffic();
    let mut v = vec![rank as f32 + 0.5, -(rank as f32)];
    mpi.all_reduce_sum(&mut v).unwrap();
    let half = w as f32 / 2.0;
    assert_eq!(
        v,
        vec![(w * (w - 1) / 2) as f32 + half, -((w * (w - 1) / 2) as f32)]
    );
    let after = mpi.traffic();
    assert_eq!(after.collectives - before.collectives, 1);
    // One round of headers, W − 1 messages: an all-gather's, not a ring's 2·(W − 1).
    assert_eq!(after.rounds - before.rounds, hops);
    // Buffers too large to ride inline sum to the same bits on every rank, each entry its sum:
    // one that splits into W equal shares and one that does not (1001 floats).
    let term = |i: usize, r: usize| ((i * 7 + r * 13) % 17) as f32 / 3.0 + r as f32 * 1e-3;
    for len in [250 * w, 1001] {
        let mut v: Vec<f32> = (0..len).map(|i| term(i, rank)).collect();
        mpi.all_reduce_sum(&mut v).unwrap();
        for (i, &x) in v.iter().enumerate() {
            let exact: f64 = (0..w).map(|r| term(i, r) as f64).sum();
            assert!(
                (x as f64 - exact).abs() < 1e-4,
                "{len}: entry {i}: {x} ≠ {exact}"
            );
        }
        let bits: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let all = mpi.all_gather(bits.clone()).unwrap();
        assert!(
            all.iter().all(|b| *b == bits),
            "{len}: the sums differ between ranks"
        );
    }
}

/// Three steps of every protocol: the replicas are the same bits on every rank, and the same
/// bits as on a `LocalGroup` of as many worker threads (run by rank 0).
fn every_protocol_keeps_replicas_bit_identical(mpi: &mut Mpi) {
    struct Check<'a>(&'a mut Mpi);
    impl EachProtocol for Check<'_> {
        fn visit<R: Reducer + 'static>(
            &mut self,
            name: &str,
            make: impl Fn() -> R + Send + Sync + 'static,
        ) {
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
            // Dense's buckets (2 410 floats) are too large to ride inline: the all-to-all path.
            if self.0.rank() == 0 {
                let local = run_workers(w, TIMEOUT, move |g| {
                    train_rank(g, make(), &data, &test, 3, 0.1, sgd(), no_tamper)
                })
                .unwrap();
                assert_eq!(prints, local[0].0, "{name}: MPI and LocalGroup disagree");
            }
        }
    }
    each_protocol(&mut Check(mpi));
}

/// With the hidden layer frozen (no gradient), every protocol leaves it untouched and keeps the
/// replicas bit-identical across processes.
fn frozen_parameters_train_the_same_on_every_rank(mpi: &mut Mpi) {
    struct Check<'a>(&'a mut Mpi);
    impl EachProtocol for Check<'_> {
        fn visit<R: Reducer + 'static>(
            &mut self,
            name: &str,
            make: impl Fn() -> R + Send + Sync + 'static,
        ) {
            let device = kindling_testing::autodiff_device();
            let (rank, w) = (self.0.rank(), self.0.world_size());
            let (data, _) = shards(w);
            let model = Mlp::new(16, rank as u64, &device).freeze_hidden();
            let mut model = broadcast_module(model, &mut *self.0, 0).unwrap();
            let hidden = fingerprint(model.hidden());
            let mut trainer = DataParallel::new(&mut *self.0, make(), 3);
            let mut optim = sgd();
            for _ in 0..2 {
                let grads = GradientsParams::from_grads(model.loss(&data[rank]).backward(), &model);
                model = trainer.step(model, grads, &mut optim, 0.1).unwrap().0;
            }
            assert_eq!(
                fingerprint(model.hidden()),
                hidden,
                "{name}: frozen layer moved"
            );
            let all = self
                .0
                .all_gather(fingerprint(&model).to_le_bytes().to_vec())
                .unwrap();
            assert!(all.iter().all(|b| *b == all[0]), "{name}: replicas differ");
        }
    }
    each_protocol(&mut Check(mpi));
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
