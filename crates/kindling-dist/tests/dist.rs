//! Transports, protocols and faults: collectives and their byte counts, bit-identical replicas
//! for every protocol, failures that surface on every rank, Byzantine-robust majority vote, and
//! checkpoint resume.

use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use kindling_compress::powersgd::PowerSgdConfig;
use kindling_compress::{
    Atomo, Budget, Count, EntryWise, ErrorFeedback, Qsgd, ScaledSign, Sign, Spectral, TernGrad,
    TopK,
};
use kindling_dist::*;
use kindling_examples_common::mlp::Mlp;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

mod common;
use common::*;

#[test]
fn collectives_and_exact_byte_counts() {
    let results = run_workers(3, TIMEOUT, |mut g| {
        let rank = g.rank();
        let mut v = vec![rank as f32, 1.0];
        g.all_reduce_sum(&mut v)?;
        assert_eq!(v, vec![3.0, 3.0]);
        g.all_reduce_mean(&mut v)?;
        assert_eq!(v, vec![3.0, 3.0], "the mean of equal values");
        let all = g.all_gather(vec![rank as u8; rank + 1])?;
        assert_eq!(all, vec![vec![0u8], vec![1, 1], vec![2, 2, 2]]);
        let b = g.broadcast(if rank == 2 { vec![9, 9] } else { vec![] }, 2)?;
        assert_eq!(b, vec![9, 9]);
        assert_eq!(g.all_reduce_max(rank as f32 * 2.0)?, 4.0);
        g.barrier()?;
        Ok((rank, g.traffic()))
    })
    .unwrap();
    // Rank 1: two ring all-reduces of 8 bytes (2·2/3·8 = 10 each), an all-gather of 2 bytes to 2
    // peers (4 sent, 1 + 3 received), a broadcast (2 received), the max (4 bytes to 2 peers, 8
    // received).
    let (_, t1) = results[1];
    assert_eq!(t1.sent, 10 + 10 + 4 + 8);
    assert_eq!(t1.received, 10 + 10 + 4 + 2 + 8);
    // Six collectives; message rounds as the network model charges latency: 2·(W−1) = 4 for
    // each all-reduce, W − 1 = 2 for the all-gather, the broadcast, the max and the barrier.
    assert_eq!(t1.collectives, 6);
    assert_eq!(t1.rounds, 4 + 4 + 2 + 2 + 2 + 2);
}

/// On an emulated link every collective takes at least the link's time for its busiest rank's
/// traffic (10 MB/s, 2 ms per round, 3 ranks), the data arrive unchanged, and the counters are
/// the plain group's.
#[test]
fn an_emulated_link_takes_the_modelled_time() {
    let link = NetworkModel::new(3, 80e6, 2e-3, Topology::AllGather).unwrap();
    let took = run_workers_emulating(link, TIMEOUT, |mut g| {
        let rank = g.rank();
        let mut times = Vec::new();
        let mut timed =
            |g: &mut LocalGroup, f: &dyn Fn(&mut LocalGroup) -> Result<(), DistError>| {
                let start = Instant::now();
                f(g)?;
                times.push(start.elapsed().as_secs_f64());
                Ok::<_, DistError>(())
            };
        // Rank 2 sends 300 kB to 2 peers: 600 kB on its link = 60 ms, plus 2 rounds.
        timed(&mut g, &|g| {
            let all = g.all_gather(vec![7u8; if g.rank() == 2 { 300_000 } else { 0 }])?;
            assert_eq!(all[2].len(), 300_000);
            Ok(())
        })?;
        // A ring all-reduce of 10 000 floats: 2·2/3·40 kB = 53.3 kB = 5.3 ms, plus 4 rounds.
        timed(&mut g, &|g| {
            let mut v = vec![1.0f32; 10_000];
            g.all_reduce_sum(&mut v)?;
            assert!(v.iter().all(|&x| x == 3.0));
            Ok(())
        })?;
        timed(&mut g, &|g| g.barrier())?;
        Ok((rank, times, g.traffic()))
    })
    .unwrap();
    let modelled = [0.060 + 0.004, 0.005_333 + 0.008, 0.004];
    for (rank, times, traffic) in &took {
        for (t, m) in times.iter().zip(modelled) {
            assert!(
                *t >= m,
                "rank {rank}: a collective took {t} s, the link {m} s"
            );
            assert!(
                *t < m + 1.0,
                "rank {rank}: a collective took {t} s for {m} s"
            );
        }
        assert_eq!(traffic.collectives, 3);
    }
    assert_eq!(took[2].2.sent, 600_000 + 53_333);
    assert!(LocalGroup::emulating(NetworkModel { workers: 0, ..link }, TIMEOUT).is_err());
}

/// A worker stuck outside any collective (here asleep for a minute) is abandoned: its peers time
/// out naming it, and `run_workers` returns within three timeouts with an error naming it,
/// without joining its thread.
#[test]
fn a_hung_worker_is_abandoned_within_the_bound() {
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    let err = run_workers(3, timeout, |mut g| {
        if g.rank() == 2 {
            std::thread::sleep(Duration::from_secs(60));
            return Ok(());
        }
        g.barrier()
    })
    .unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(&err, DistError::Timeout(m) if m.contains("rank(s) [2] did not return")),
        "{err}"
    );
    assert!(
        elapsed < 3 * timeout + Duration::from_millis(500),
        "{elapsed:?}"
    );
}

/// A worker that waits in a collective for a missing rank names the missing rank.
#[test]
fn a_timeout_names_the_missing_rank() {
    let err = run_workers(3, Duration::from_millis(200), |mut g| {
        if g.rank() == 1 {
            return Ok(());
        }
        g.barrier()
    })
    .unwrap_err();
    assert!(
        matches!(&err, DistError::Timeout(m) if m.contains("waiting for rank(s) [1] to join")),
        "{err}"
    );
}

/// A worker's own error is the one returned, not a peer's "a peer failed" that follows from it.
#[test]
fn a_workers_own_error_is_the_root_cause() {
    let err = run_workers(4, TIMEOUT, |mut g| {
        if g.rank() == 2 {
            return Err(DistError::Protocol("rank 2 disagrees".into()));
        }
        g.barrier()
    })
    .unwrap_err();
    assert_eq!(err, DistError::Protocol("rank 2 disagrees".into()));
}

#[test]
fn a_panicking_worker_fails_every_rank_within_the_timeout() {
    let start = Instant::now();
    let err = run_workers(4, TIMEOUT, |mut g| {
        if g.rank() == 1 {
            panic!("out of memory on rank 1");
        }
        for _ in 0..3 {
            g.barrier()?;
        }
        Ok(())
    })
    .unwrap_err();
    assert!(
        matches!(&err, DistError::Panicked { rank: 1, message } if message.contains("out of memory")),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "others did not wait for the full timeout"
    );
}

/// Trains the digits MLP for `steps` full-shard steps with `reducer` on a `LocalGroup` and
/// returns every rank's fingerprint after each step and the final test accuracy.
fn train_with<R: Reducer + 'static>(
    world: usize,
    steps: usize,
    lr: f64,
    make: impl Fn() -> R + Send + Sync + 'static,
    optim: impl Fn() -> ModuleOptimizer + Send + Sync + 'static,
    tamper: impl Fn(usize, GradientsParams, &Mlp) -> GradientsParams + Send + Sync + 'static,
) -> Result<Vec<(Vec<u64>, f32)>, DistError> {
    let (data, test) = shards(world);
    run_workers(world, TIMEOUT, move |g| {
        train_rank(g, make(), &data, &test, steps, lr, optim(), &tamper)
    })
}

/// After every step every replica holds bit-identical parameters, for every protocol.
#[test]
fn every_protocol_keeps_replicas_bit_identical() {
    struct Check;
    impl EachProtocol for Check {
        fn visit<R: Reducer + 'static>(
            &mut self,
            name: &str,
            make: impl Fn() -> R + Send + Sync + 'static,
        ) {
            let results = train_with(4, 4, 0.1, make, sgd, no_tamper).unwrap();
            for step in 0..4 {
                let first = results[0].0[step];
                assert!(
                    results.iter().all(|r| r.0[step] == first),
                    "{name}: replicas differ after step {step}"
                );
            }
        }
    }
    each_protocol(&mut Check);
}

/// Frozen parameters (no gradient) train the same on every rank: with the hidden layer frozen,
/// every protocol keeps the replicas bit-identical, the frozen layer never moves, and the output
/// layer does.
#[test]
fn frozen_parameters_are_left_out_on_every_rank() {
    struct Check;
    impl EachProtocol for Check {
        fn visit<R: Reducer + 'static>(
            &mut self,
            name: &str,
            make: impl Fn() -> R + Send + Sync + 'static,
        ) {
            let (data, _) = shards(3);
            let label = name.to_string();
            let results = run_workers(3, TIMEOUT, move |g| {
                let name = &label;
                let device = kindling_testing::autodiff_device();
                let rank = g.rank();
                let mut trainer = DataParallel::new(g, make(), 3);
                let mut model = Mlp::new(16, 0, &device).freeze_hidden();
                let hidden = fingerprint(model.hidden());
                let output = fingerprint(model.output());
                let mut optim = sgd();
                for _ in 0..3 {
                    let grads =
                        GradientsParams::from_grads(model.loss(&data[rank]).backward(), &model);
                    model = trainer.step(model, grads, &mut optim, 0.1)?.0;
                }
                assert_eq!(
                    fingerprint(model.hidden()),
                    hidden,
                    "{name}: frozen layer moved"
                );
                assert_ne!(
                    fingerprint(model.output()),
                    output,
                    "{name}: output layer stuck"
                );
                Ok(fingerprint(&model))
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(results.iter().all(|&r| r == results[0]), "{name}");
        }
    }
    each_protocol(&mut Check);
}

/// A collective that fails inside a step's exchange is that step's error from `reduce`, on every
/// rank, with its own message: here the ranks' models differ (hidden 16 against 17), so their
/// first all-reduces disagree on the length. Both ways a step's collectives run are covered: one
/// bucket on the calling thread, and buckets of one tensor each on the communication thread.
#[test]
fn a_failed_collective_is_the_steps_own_error() {
    // The whole gradient (64·h + h + 10·h + 10 floats), or the first layer's weights (64·h).
    for (bucket_bytes, lengths) in [(DEFAULT_BUCKET_BYTES, (1210, 1285)), (1, (1024, 1088))] {
        let outcomes = each_rank(2, move |mut g| {
            let device = kindling_testing::autodiff_device();
            let rank = g.rank();
            let model = Mlp::new(16 + rank, 0, &device);
            let (data, _) = shards(2);
            let grads = GradientsParams::from_grads(model.loss(&data[rank]).backward(), &model);
            let mut reducer = Dense::new().with_bucket_bytes(bucket_bytes).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            match reducer.reduce(&model, grads, &mut g, &mut rng) {
                Ok(_) => panic!("rank {rank}: the step went through"),
                Err(e) => e,
            }
        });
        for (rank, e) in outcomes.iter().enumerate() {
            match e {
                DistError::Protocol(m) => assert!(
                    m.contains(&format!("of {} floats", lengths.0))
                        && m.contains(&format!("of {} floats", lengths.1)),
                    "buckets of {bucket_bytes} bytes, rank {rank}: {m}"
                ),
                other => panic!("buckets of {bucket_bytes} bytes, rank {rank}: {other:?}"),
            }
        }
    }
}

/// `work` on a thread of its own for each rank of a new group of `world`; the ranks' outcomes in
/// rank order.
fn each_rank<T: Send + 'static>(
    world: usize,
    work: impl Fn(LocalGroup) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let work = Arc::new(work);
    LocalGroup::new(world, TIMEOUT)
        .unwrap()
        .into_iter()
        .map(|g| {
            let work = Arc::clone(&work);
            std::thread::spawn(move || work(g))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect()
}

/// Ranks that call different collectives — an all-gather against an all-reduce, broadcasts from
/// different roots, all-reduces of different lengths, or one rank a collective ahead — get an
/// error naming both calls on every rank, within the timeout, and never mixed data.
#[test]
fn mismatched_collectives_are_errors_on_every_rank() {
    type Call = fn(&mut LocalGroup) -> Result<(), DistError>;
    let all_reduce: Call = |g| g.all_reduce_sum(&mut [1.0, 2.0]);
    let all_reduce_3: Call = |g| g.all_reduce_sum(&mut [1.0, 2.0, 3.0]);
    let all_gather: Call = |g| g.all_gather(vec![1, 2]).map(|_| ());
    let from_0: Call = |g| g.broadcast(vec![7], 0).map(|_| ());
    let from_1: Call = |g| g.broadcast(vec![7], 1).map(|_| ());
    let barrier_first: Call = |g| {
        g.barrier()?;
        g.all_gather(vec![1]).map(|_| ())
    };
    let gather_first: Call = |g| {
        g.all_gather(vec![1])?;
        g.barrier()
    };
    let cases: [(&str, Call, Call, &str, &str); 4] = [
        (
            "gather vs reduce",
            all_gather,
            all_reduce,
            "all-gather",
            "all-reduce of 2",
        ),
        ("roots", from_0, from_1, "from rank 0", "from rank 1"),
        (
            "lengths",
            all_reduce,
            all_reduce_3,
            "of 2 floats",
            "of 3 floats",
        ),
        (
            "order",
            gather_first,
            barrier_first,
            "an all-gather",
            "a barrier",
        ),
    ];
    for (name, rank0, others, says0, says_other) in cases {
        let start = Instant::now();
        let outcomes = each_rank(3, move |mut g| {
            if g.rank() == 0 {
                rank0(&mut g)
            } else {
                others(&mut g)
            }
        });
        for (rank, outcome) in outcomes.iter().enumerate() {
            match outcome {
                Err(DistError::Protocol(m)) => assert!(
                    m.contains("rank 0")
                        && m.contains("rank 1")
                        && m.contains(says0)
                        && m.contains(says_other),
                    "{name}, rank {rank}: {m}"
                ),
                other => panic!("{name}, rank {rank}: {other:?}"),
            }
        }
        assert!(start.elapsed() < TIMEOUT, "{name}: {:?}", start.elapsed());
    }
}

/// A payload that fails to decode is an error naming the sender and the parameter, on every rank.
#[test]
fn a_corrupt_payload_names_rank_and_parameter() {
    let (data, _) = shards(3);
    let errors: Vec<DistError> = {
        let groups = LocalGroup::new(3, TIMEOUT).unwrap();
        std::thread::scope(|s| {
            let handles: Vec<_> = groups
                .into_iter()
                .map(|g| {
                    let data = &data;
                    s.spawn(move || {
                        let device = kindling_testing::autodiff_device();
                        let rank = g.rank();
                        let mut trainer = DataParallel::new(
                            Corrupting {
                                inner: g,
                                victim: 2,
                            },
                            TernGradShared::new(TernGrad::new()),
                            1,
                        );
                        let model = Mlp::new(8, 0, &device);
                        let grads =
                            GradientsParams::from_grads(model.loss(&data[rank]).backward(), &model);
                        trainer
                            .step(model, grads, &mut sgd(), 0.1)
                            .map(|_| ())
                            .unwrap_err()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    for e in errors {
        assert!(
            matches!(
                e,
                DistError::Decode {
                    rank: 2,
                    param: 0,
                    ..
                }
            ),
            "{e}"
        );
    }
}

/// Majority vote with 3 of 7 workers sending flipped signs still trains the digits MLP; dense
/// SGD, or the mean of scaled signs, with one worker sending 10⁶× gradients does not.
#[test]
fn majority_vote_is_robust_where_averaging_is_not() {
    let flip = |rank: usize, g: GradientsParams, m: &Mlp| {
        if rank < 3 { scale(g, m, -1.0) } else { g }
    };
    let huge = |rank: usize, g: GradientsParams, m: &Mlp| {
        if rank == 0 { scale(g, m, 1e6) } else { g }
    };
    let signum = || kindling_optim::SignumConfig::sign_sgd().init();
    let vote = train_with(7, 60, 0.01, MajorityVote::new, signum, flip).unwrap();
    let dense = train_with(7, 60, 0.1, Dense::new, sgd, huge).unwrap();
    let scaled = train_with(
        7,
        60,
        0.1,
        || Gathered::new(ScaledSign).with_name("mean of scaled signs"),
        sgd,
        huge,
    )
    .unwrap();
    let (acc_vote, acc_dense, acc_scaled) = (vote[0].1, dense[0].1, scaled[0].1);
    eprintln!(
        "majority vote, 3/7 flipped: {acc_vote:.3}; dense, one 1e6× worker: {acc_dense:.3}; mean of scaled signs, one 1e6× worker: {acc_scaled:.3}"
    );
    assert!(acc_vote > 0.8, "{acc_vote}");
    assert!(acc_dense.is_nan() || acc_dense < 0.3, "{acc_dense}");
    assert!(acc_scaled.is_nan() || acc_scaled < 0.3, "{acc_scaled}");
}

/// TernGrad's shared scale with one rank's gradient holding NaN or ±∞: the max over ranks must
/// not drop a NaN or take an ∞, and the error must name the rank that holds it, not rank 0 or
/// the rank that happened to notice. The same for PowerSGD, whose `P` would carry the NaN into
/// every rank's sum (its Gram–Schmidt then zeroed the update and kept a NaN residual). Every rank
/// ends (the group aborts) within the timeout.
#[test]
fn a_non_finite_gradient_names_its_rank() {
    fn check<R: Reducer + 'static>(make: impl Fn() -> R + Send + Sync + Clone + 'static) {
        let data = Arc::new(shards(3).0);
        for poison in [f64::NAN, 1e39, -1e39] {
            let start = Instant::now();
            let (data, make) = (data.clone(), make.clone());
            let err = run_workers(3, TIMEOUT, move |g| {
                let device = kindling_testing::autodiff_device();
                let rank = g.rank();
                let mut trainer = DataParallel::new(g, make(), 5);
                let model = Mlp::new(16, 0, &device);
                let mut optim = burn::optim::AdamConfig::new().init();
                let grads = GradientsParams::from_grads(model.loss(&data[rank]).backward(), &model);
                let grads = if rank == 2 {
                    scale(grads, &model, poison)
                } else {
                    grads
                };
                trainer.step(model, grads, &mut optim, 1e-3).map(|_| ())
            })
            .unwrap_err();
            assert!(
                matches!(
                    err,
                    DistError::Encode {
                        rank: 2,
                        param: 0,
                        ..
                    }
                ),
                "{poison}: {err}"
            );
            assert!(start.elapsed() < TIMEOUT, "{:?}", start.elapsed());
        }
    }
    check(|| TernGradShared::new(TernGrad::new()));
    check(|| PowerSgd::new(PowerSgdConfig::new(2).unwrap()));
}

/// Saving the reducer state (PowerSGD's Q and residuals; error-feedback residuals of a gathered
/// codec), the optimizer state and the RNG position after 3 steps and restoring them into fresh
/// trainers reproduces the uninterrupted run bit for bit. QSGD and entry-wise ATOMO keep no
/// state, but draw from the rank's RNG every step: their resume holds only because the RNG
/// position is restored (a fresh trainer starts its stream from the beginning).
#[test]
fn resume_reproduces_the_uninterrupted_run() {
    fn check<R: Reducer + 'static>(
        name: &str,
        stateful: bool,
        make: impl Fn() -> R + Send + Sync + 'static,
    ) {
        let data = Arc::new(shards(2).0);
        let make = Arc::new(make);
        let run = |resume_at: Option<usize>| {
            let (data, make, name) = (data.clone(), make.clone(), name.to_string());
            run_workers(2, TIMEOUT, move |g| {
                let device = kindling_testing::autodiff_device();
                let rank = g.rank();
                let mut trainer = DataParallel::new(g, make(), 5);
                let mut model = Mlp::new(16, 0, &device);
                let mut optim = burn::optim::AdamConfig::new().init();
                for step in 0..5 {
                    if resume_at == Some(step) {
                        let saved = trainer.checkpoint();
                        assert_eq!(
                            !saved.state.is_empty(),
                            stateful,
                            "{name}: state after {step} steps"
                        );
                        let saved = ReducerCheckpoint::from_bytes(&saved.to_bytes())?;
                        let bytes = optim.into_bytes().unwrap();
                        trainer = DataParallel::new(trainer.comm, make(), 5);
                        trainer.restore(saved, &device.clone().inner())?;
                        optim = burn::optim::AdamConfig::new()
                            .init()
                            .from_bytes(bytes)
                            .unwrap();
                    }
                    let grads =
                        GradientsParams::from_grads(model.loss(&data[rank]).backward(), &model);
                    model = trainer.step(model, grads, &mut optim, 1e-3)?.0;
                }
                Ok(fingerprint(&model))
            })
            .unwrap()
        };
        assert_eq!(run(None), run(Some(3)), "{name}");
    }
    check("powersgd", true, || {
        PowerSgd::new(
            PowerSgdConfig::new(2)
                .unwrap()
                .with_min_compression_rate(1.0)
                .unwrap(),
        )
    });
    check("ef top-k", true, || {
        Gathered::new(ErrorFeedback::new(
            TopK::new(Count::Fraction(0.05)).unwrap(),
        ))
    });
    check("signum majority vote", true, || {
        MajorityVote::new().with_momentum(0.9).unwrap()
    });
    check("qsgd", false, || Gathered::new(Qsgd::new(4).unwrap()));
    check("atomo entry-wise", false, || {
        Gathered::new(Atomo::new(EntryWise, Budget::Fraction(0.3)).unwrap())
    });
}

/// With momentum each rank votes with the sign of its own `v ← β·v + (1 − β)·g`: after a
/// gradient `g`, a gradient `−0.5·g` still votes `sign(g)` at β = 0.9 (`v = 0.04·g`), where
/// plain majority vote follows the gradient to `−sign(g)`. A β outside [0, 1) is rejected, and a
/// saved momentum of the wrong length is a protocol error, not a panic.
#[test]
fn majority_vote_with_momentum_votes_on_each_ranks_momentum() {
    assert!(MajorityVote::new().with_momentum(1.0).is_err());
    assert!(MajorityVote::new().with_momentum(-0.1).is_err());
    let data = Arc::new(shards(1).0);
    let votes = |beta: f32| {
        let data = data.clone();
        run_workers(2, TIMEOUT, move |mut g| {
            let device = kindling_testing::autodiff_device();
            let model = Mlp::new(4, 0, &device);
            let grads = GradientsParams::from_grads(model.loss(&data[0]).backward(), &model);
            let mut reducer = MajorityVote::new().with_momentum(beta)?;
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let same = kindling_optim::grads::scale(&model, &grads, 1.0);
            reducer.reduce(&model, same, &mut g, &mut rng)?;
            let flipped = kindling_optim::grads::scale(&model, &grads, -0.5);
            let (agreed, _) = reducer.reduce(&model, flipped, &mut g, &mut rng)?;
            Ok((flat_grads(&model, &grads), flat_grads(&model, &agreed)))
        })
        .unwrap()
    };
    for (beta, follows) in [(0.9, 1.0f32), (0.0, -1.0)] {
        for (grad, agreed) in votes(beta) {
            let voted = grad.iter().zip(&agreed).filter(|(g, _)| **g != 0.0);
            let mut count = 0;
            for (g, a) in voted {
                assert_eq!(*a, follows * g.signum(), "β = {beta}");
                count += 1;
            }
            assert!(count > 100, "β = {beta}: {count} nonzero gradients");
        }
    }
    // A non-finite gradient fails the step and leaves every momentum as it was.
    let kept = {
        let data = data.clone();
        run_workers(1, TIMEOUT, move |mut g| {
            let device = kindling_testing::autodiff_device();
            let model = Mlp::new(4, 0, &device);
            let grads = GradientsParams::from_grads(model.loss(&data[0]).backward(), &model);
            let mut reducer = MajorityVote::new().with_momentum(0.9)?;
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let same = kindling_optim::grads::scale(&model, &grads, 1.0);
            reducer.reduce(&model, same, &mut g, &mut rng)?;
            let before = reducer.state();
            let poisoned = kindling_optim::grads::scale(&model, &grads, f64::NAN);
            let failed = reducer.reduce(&model, poisoned, &mut g, &mut rng).is_err();
            Ok((failed, before == reducer.state(), before.len()))
        })
        .unwrap()
    };
    assert_eq!(kept, vec![(true, true, 4)]);
    let mut wrong = MajorityVote::new().with_momentum(0.9).unwrap();
    wrong
        .load_state(
            vec![("0.momentum".to_string(), vec![0.0; 3])],
            &kindling_testing::device(),
        )
        .unwrap();
    let err = run_workers(1, TIMEOUT, move |mut g| {
        let device = kindling_testing::autodiff_device();
        let model = Mlp::new(4, 0, &device);
        let grads = GradientsParams::from_grads(model.loss(&data[0]).backward(), &model);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        wrong
            .clone()
            .reduce(&model, grads, &mut g, &mut rng)
            .map(|_| ())
    })
    .unwrap_err();
    assert!(err.to_string().contains("momentum of parameter 0"), "{err}");
}

/// Every gradient in `grads` of `model`'s parameters, flat, in module order.
fn flat_grads(model: &Mlp, grads: &GradientsParams) -> Vec<f32> {
    struct Flat<'a>(&'a GradientsParams, Vec<f32>);
    impl ModuleVisitor for Flat<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                let values = g.into_data().convert::<f32>().try_into_vec::<f32>();
                self.1.extend(values.expect("f32 gradient"));
            }
        }
    }
    let mut flat = Flat(grads, Vec::new());
    model.visit(&mut flat);
    flat.1
}

/// A checkpoint names its protocol and configuration: restoring it into another protocol, or
/// into the same codec with other settings, is an error that names both, and leaves the trainer
/// as it was.
#[test]
fn a_checkpoint_restores_only_into_its_own_protocol() {
    let device = kindling_testing::device();
    let results = run_workers(1, TIMEOUT, move |g| {
        let power = DataParallel::new(g, PowerSgd::new(PowerSgdConfig::new(2).unwrap()), 5);
        let saved = ReducerCheckpoint::from_bytes(&power.checkpoint().to_bytes())?;
        assert!(saved.protocol.contains("PowerSGD"), "{}", saved.protocol);
        let mut qsgd = DataParallel::new(power.comm, Gathered::new(Qsgd::new(4).unwrap()), 5);
        let err = qsgd.restore(saved, &device).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("PowerSGD") && text.contains("qsgd"), "{text}");
        let four = qsgd.checkpoint();
        let mut sixteen = DataParallel::new(qsgd.comm, Gathered::new(Qsgd::new(16).unwrap()), 5);
        let err = sixteen.restore(four.clone(), &device).unwrap_err();
        assert!(matches!(err, DistError::Checkpoint(_)), "{err}");
        let mut same = DataParallel::new(sixteen.comm, Gathered::new(Qsgd::new(4).unwrap()), 5);
        same.restore(four, &device)?;
        Ok(())
    })
    .unwrap();
    assert_eq!(results.len(), 1);
}

/// A gathered protocol's state does not load into the wrong codec or with a missing shape.
#[test]
fn a_mismatched_reducer_state_is_rejected() {
    let device = kindling_testing::device();
    let state = vec![("0.state".to_string(), vec![1.0f32; 6])];
    let mut ef = Gathered::new(ErrorFeedback::new(TopK::new(Count::Entries(1)).unwrap()));
    assert!(matches!(
        ef.load_state(state.clone(), &device),
        Err(DistError::Protocol(m)) if m.contains("no shape")
    ));
    let mut with_shape = state.clone();
    with_shape.push(("0.shape".to_string(), vec![2.0, 3.0]));
    ef.load_state(with_shape.clone(), &device).unwrap();
    assert_eq!(ef.state(), with_shape);
    let mut stateless = Gathered::new(Qsgd::new(4).unwrap());
    assert!(stateless.load_state(with_shape, &device).is_err());
}

/// A gathered protocol is named after its codec unless given a name.
#[test]
fn gathered_protocols_are_named_after_their_codec() {
    assert_eq!(Gathered::new(Qsgd::new(4).unwrap()).name(), "qsgd");
    let ef = Gathered::new(ErrorFeedback::new(TopK::new(Count::Entries(1)).unwrap()));
    assert_eq!(ef.name(), "error feedback + top-k");
    let spectral = Gathered::new(Atomo::new(Spectral::full(), Budget::Atoms(2.0)).unwrap());
    assert_eq!(spectral.name(), "atomo spectral");
    assert_eq!(Gathered::new(Sign).with_name("votes").name(), "votes");
}

/// A step counts the collectives it ran, which the network model charges latency for: one
/// all-reduce for dense's single bucket; for TernGrad one all-gather of every tensor's scale and
/// one of the single bucket of payloads. It also counts what its transport sent and the message
/// rounds: dense's ring all-reduce sends `2·(W−1)/W` of its floats (all of them for W = 2) in
/// `2·(W−1)` rounds, TernGrad its scales and its bucket (payloads and their lengths) to the one
/// peer in two all-gathers.
#[test]
fn a_step_counts_its_collectives() {
    let data = Arc::new(shards(2).0);
    let counts = run_workers(2, TIMEOUT, move |g| {
        let device = kindling_testing::autodiff_device();
        let rank = g.rank();
        let model = Mlp::new(8, 0, &device);
        let grads = || GradientsParams::from_grads(model.loss(&data[rank]).backward(), &model);
        let mut dense = DataParallel::new(g, Dense::new(), 0);
        let (_, dense_stats) = dense.agree(&model, grads())?;
        let mut tern = DataParallel::new(dense.comm, TernGradShared::new(TernGrad::new()), 0);
        let (_, tern_stats) = tern.agree(&model, grads())?;
        assert_eq!(dense_stats.sent_bytes, dense_stats.raw_bytes);
        assert_eq!(dense_stats.rounds, 2);
        // The wire bytes (payloads and scales), and the 4-byte length before each of the 4
        // tensors' payloads in the bucket.
        assert_eq!(tern_stats.sent_bytes, tern_stats.wire_bytes + 4 * 4);
        assert_eq!(tern_stats.rounds, 2);
        Ok((dense_stats.collectives, tern_stats.collectives))
    })
    .unwrap();
    // The MLP has 4 tensors (two weights, two biases), all in one bucket.
    assert!(counts.iter().all(|&c| c == (1, 2)), "{counts:?}");
}

/// Buckets change how many collectives run, never the result: every protocol gives the same
/// replicas whatever the bucket size, with one collective per bucket (per round).
#[test]
fn buckets_change_the_collectives_not_the_result() {
    fn run<R: Reducer + 'static>(make: impl Fn() -> R + Send + Sync + 'static) -> (u64, u64) {
        let data = Arc::new(shards(3).0);
        let out = run_workers(3, TIMEOUT, move |g| {
            let device = kindling_testing::autodiff_device();
            let rank = g.rank();
            let mut trainer = DataParallel::new(g, make(), 9);
            let mut model = Mlp::new(32, 0, &device);
            let mut optim = sgd();
            for _ in 0..2 {
                let grads = GradientsParams::from_grads(model.loss(&data[rank]).backward(), &model);
                model = trainer.step(model, grads, &mut optim, 0.1)?.0;
            }
            Ok((fingerprint(&model), trainer.total.collectives))
        })
        .unwrap();
        assert!(out.iter().all(|o| *o == out[0]), "{out:?}");
        out[0]
    }
    // The MLP's tensors: 64×32 + 32 + 32×10 + 10 floats.
    let per_tensor = |bytes| run(move || Dense::new().with_bucket_bytes(bytes).unwrap());
    let (one, c_one) = per_tensor(1);
    let (two, c_two) = per_tensor(4 * 64 * 32);
    let (all, c_all) = run(Dense::new);
    assert_eq!(
        (one, one),
        (two, all),
        "dense results depend on the bucket size"
    );
    assert_eq!((c_one, c_two, c_all), (8, 4, 2), "collectives over 2 steps");

    let qsgd = |bytes| {
        run(move || {
            Gathered::new(Qsgd::new(4).unwrap())
                .with_bucket_bytes(bytes)
                .unwrap()
        })
    };
    let ((q_one, c_one), (q_all, c_all)) = (qsgd(1), qsgd(DEFAULT_BUCKET_BYTES));
    assert_eq!(q_one, q_all, "QSGD results depend on the bucket size");
    assert_eq!((c_one, c_all), (8, 2));

    let vote = |bytes| run(move || MajorityVote::new().with_bucket_bytes(bytes).unwrap());
    let ((v_one, c_one), (v_all, c_all)) = (vote(1), vote(DEFAULT_BUCKET_BYTES));
    assert_eq!(v_one, v_all, "majority vote depends on the bucket size");
    assert_eq!((c_one, c_all), (8, 2));

    let tern = |bytes| {
        run(move || {
            TernGradShared::new(TernGrad::new())
                .with_bucket_bytes(bytes)
                .unwrap()
        })
    };
    let ((t_one, c_one), (t_all, c_all)) = (tern(1), tern(DEFAULT_BUCKET_BYTES));
    assert_eq!(t_one, t_all, "TernGrad depends on the bucket size");
    // One scale all-gather per step, then one payload all-gather per tensor or per bucket.
    assert_eq!((c_one, c_all), (10, 4));

    let power = |bytes| {
        run(move || {
            PowerSgd::new(PowerSgdConfig::new(2).unwrap())
                .with_bucket_bytes(bytes)
                .unwrap()
        })
    };
    let ((p_small, c_small), (p_all, c_all)) = (power(64), power(DEFAULT_BUCKET_BYTES));
    assert_eq!(p_small, p_all, "PowerSGD depends on the bucket size");
    assert!(
        c_small > 2 * c_all,
        "{c_small} collectives in 64-byte buckets"
    );
    assert_eq!(c_all, 4, "two rounds a step");

    let zero = Dense::new().with_bucket_bytes(0).unwrap_err();
    assert!(zero.to_string().contains("bucket_bytes"), "{zero}");
}

/// A group handle whose rank 1 rewrites every all-gather message it sends.
struct Reframe(LocalGroup, fn(&mut Vec<u8>));
impl Communicator for Reframe {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn world_size(&self) -> usize {
        self.0.world_size()
    }
    fn all_reduce_sum(&mut self, v: &mut [f32]) -> Result<(), DistError> {
        self.0.all_reduce_sum(v)
    }
    fn all_gather_borrowed(&mut self, payload: &[u8]) -> Result<Received<'_>, DistError> {
        let mut message = payload.to_vec();
        if self.rank() == 1 {
            (self.1)(&mut message);
        }
        self.0.all_gather_borrowed(&message)
    }
    fn broadcast(&mut self, b: Vec<u8>, root: usize) -> Result<Vec<u8>, DistError> {
        self.0.broadcast(b, root)
    }
    fn barrier(&mut self) -> Result<(), DistError> {
        self.0.barrier()
    }
    fn traffic(&self) -> Traffic {
        self.0.traffic()
    }
}

/// A bucket message that does not frame exactly the bucket's payloads is a decode error naming
/// the sender, on every rank: a length that runs past the message, and bytes left over.
#[test]
fn a_malformed_bucket_names_its_sender() {
    let overlong: fn(&mut Vec<u8>) = |m| m[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let trailing: fn(&mut Vec<u8>) = |m| m.push(0);
    for (tamper, expected) in [(overlong, "claims"), (trailing, "past the bucket")] {
        let data = Arc::new(shards(2).0);
        let err = run_workers(2, TIMEOUT, move |g| {
            let device = kindling_testing::autodiff_device();
            let rank = g.rank();
            let mut trainer = DataParallel::new(Reframe(g, tamper), MajorityVote::new(), 1);
            let model = Mlp::new(8, 0, &device);
            let grads = GradientsParams::from_grads(model.loss(&data[rank]).backward(), &model);
            trainer.step(model, grads, &mut sgd(), 0.1).map(|_| ())
        })
        .unwrap_err();
        assert!(
            matches!(&err, DistError::Decode { rank: 1, reason, .. } if reason.contains(expected)),
            "{err}"
        );
    }
}

/// TernGrad's shared scales from a peer that are not finite, or not one per tensor, are errors
/// naming the sender on every rank, never a poisoned maximum.
#[test]
fn a_corrupt_shared_scale_names_its_sender() {
    let nan: fn(&mut Vec<u8>) = |m| m[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let extra: fn(&mut Vec<u8>) = |m| m.extend_from_slice(&1.0f32.to_le_bytes());
    // The NaN is a payload that does not decode; the extra scale a protocol disagreement.
    for (tamper, expected, decode) in [
        (nan, "non-finite TernGrad scale", true),
        (extra, "rank 1 sent 5 scales", false),
    ] {
        let data = Arc::new(shards(2).0);
        let err = run_workers(2, TIMEOUT, move |g| {
            let device = kindling_testing::autodiff_device();
            let rank = g.rank();
            let reducer = TernGradShared::new(TernGrad::new());
            let mut trainer = DataParallel::new(Reframe(g, tamper), reducer, 1);
            let model = Mlp::new(8, 0, &device);
            let grads = GradientsParams::from_grads(model.loss(&data[rank]).backward(), &model);
            trainer.step(model, grads, &mut sgd(), 0.1).map(|_| ())
        })
        .unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
        assert_eq!(
            matches!(err, DistError::Decode { rank: 1, .. }),
            decode,
            "{err}"
        );
    }
}

/// QSGD that counts the payloads it decodes (shared by its clones).
#[derive(Debug, Clone)]
struct Counted {
    inner: Qsgd,
    decodes: Arc<std::sync::atomic::AtomicUsize>,
}

impl Counted {
    fn count(&self) {
        self.decodes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl kindling_compress::Compressor for Counted {
    fn codec(&self) -> kindling_compress::CodecId {
        self.inner.codec()
    }
    fn is_unbiased(&self) -> bool {
        self.inner.is_unbiased()
    }
    fn compress<const D: usize>(
        &mut self,
        grad: Tensor<D>,
        rng: &mut dyn kindling_compress::rand::Rng,
    ) -> Result<kindling_compress::Payload, kindling_compress::CompressError> {
        self.inner.compress(grad, rng)
    }
    fn decompress<const D: usize>(
        &self,
        payload: &kindling_compress::Payload,
        device: &burn::tensor::Device,
    ) -> Result<Tensor<D>, kindling_compress::DecodeError> {
        self.count();
        self.inner.decompress(payload, device)
    }
    fn decode_into(
        &self,
        payload: &kindling_compress::PayloadRef<'_>,
        out: &mut [f32],
    ) -> Result<(), kindling_compress::DecodeError> {
        self.count();
        self.inner.decode_into(payload, out)
    }
    fn decode_add(
        &self,
        payload: &kindling_compress::PayloadRef<'_>,
        weight: f32,
        out: &mut [f32],
    ) -> Result<(), kindling_compress::DecodeError> {
        self.count();
        self.inner.decode_add(payload, weight, out)
    }
}

/// In a group that shares memory (a plain `LocalGroup`) each payload of a host tensor is
/// decoded by one rank and handed to the others, so a step decodes W payloads per parameter
/// instead of W²; the replicas are the same bits as a cluster's, where every rank decodes every
/// payload (an emulated link), for a gathered codec and for TernGrad.
#[test]
fn a_shared_memory_group_decodes_each_payload_once() {
    const WORLD: usize = 4;
    const STEPS: usize = 3;
    fn train<R: Reducer + 'static>(
        emulated: bool,
        make: impl Fn() -> R + Send + Sync + 'static,
    ) -> Vec<Vec<u64>> {
        let (data, test) = shards(WORLD);
        let work = move |g: LocalGroup| {
            assert_eq!(g.shares_memory(), !emulated);
            train_rank(g, make(), &data, &test, STEPS, 0.1, sgd(), no_tamper).map(|r| r.0)
        };
        let link = NetworkModel::new(WORLD, 1e12, 0.0, Topology::AllGather).unwrap();
        match emulated {
            false => run_workers(WORLD, TIMEOUT, work),
            true => run_workers_emulating(link, TIMEOUT, work),
        }
        .unwrap()
    }
    // The MLP's two weights and two biases.
    let params = 4;
    let mut prints = Vec::new();
    // Only host tensors are shared (on a GPU the payloads decode on each rank's device).
    let host = kindling_compress::is_host_device(&kindling_testing::device());
    let shared = if host { WORLD } else { WORLD * WORLD };
    for (emulated, decodes_per_param) in [(false, shared), (true, WORLD * WORLD)] {
        let decodes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = decodes.clone();
        let qsgd = train(emulated, move || {
            Gathered::new(Counted {
                inner: Qsgd::new(4).unwrap(),
                decodes: counted.clone(),
            })
        });
        assert!(qsgd.windows(2).all(|w| w[0] == w[1]), "replicas differ");
        assert_eq!(
            decodes.load(std::sync::atomic::Ordering::Relaxed),
            STEPS * params * decodes_per_param,
            "emulated: {emulated}"
        );
        let terngrad = train(emulated, || TernGradShared::new(TernGrad::new()));
        assert!(terngrad.windows(2).all(|w| w[0] == w[1]), "replicas differ");
        prints.push((qsgd[0].clone(), terngrad[0].clone()));
    }
    assert_eq!(prints[0], prints[1], "shared decoding changed the result");
}
