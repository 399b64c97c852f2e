//! Data-parallel training in a plain loop: spawn workers over a [`LocalGroup`], make their
//! replicas identical, and let each step agree on one gradient through a [`Reducer`].

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{GradientsParams, LearningRate, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

use crate::{
    Communicator, DistError, LocalGroup, NetworkModel, Reducer, ReducerCheckpoint, StepStats,
};

/// Runs `work(group)` on `world` threads, one [`LocalGroup`] handle each, and returns every
/// rank's result in rank order.
///
/// A worker that panics or returns an error aborts the group, so the others fail at their next
/// collective instead of waiting; the root cause is returned (a panic as
/// [`DistError::Panicked`] with its message, a local encode or decode error before the peers'
/// follow-up failures).
///
/// **Bounded.** Once any worker has returned, the others have `timeout` to return too (one more
/// `timeout` if some are waiting inside a collective, which then ends on its own with an error
/// naming the rank that did not join). Then the group is aborted, so that a worker waiting in a
/// collective returns at once, and the rest get another `timeout`; a worker still running after
/// that (stuck outside every collective: a deadlock, an endless loop, a hung data source) is
/// abandoned — its thread is left to run detached, its next collective fails — and the call
/// returns [`DistError::Timeout`] naming it. A worker that waits in a collective for a hung one
/// fails after `timeout` itself, so the call returns within four times `timeout` of the hang. This is why `work` and its result are
/// `'static`: share data with the workers through an `Arc` (or move it in).
pub fn run_workers<T: Send + 'static>(
    world: usize,
    timeout: Duration,
    work: impl Fn(LocalGroup) -> Result<T, DistError> + Send + Sync + 'static,
) -> Result<Vec<T>, DistError> {
    run_group(LocalGroup::new(world, timeout)?, timeout, work)
}

/// [`run_workers`] on `link.workers` threads whose collectives take the time `link` gives them
/// ([`LocalGroup::emulating`]): a protocol's step on one machine as it would run over that link,
/// with encoding and decoding overlapping the emulated wire. The same bounds on failure hold.
///
/// ```
/// use std::time::Duration;
/// use kindling_dist::{Communicator, NetworkModel, Topology, run_workers_emulating};
///
/// // 4 workers on a 100 Mb/s link with 1 ms latency: all-gathering 125 kB each takes
/// // 3 · 125 kB · 8 / 100 Mb/s + 3 · 1 ms = 33 ms.
/// let link = NetworkModel::new(4, 100e6, 1e-3, Topology::AllGather).unwrap();
/// let took = run_workers_emulating(link, Duration::from_secs(30), |mut group| {
///     let start = std::time::Instant::now();
///     group.all_gather_borrowed(&vec![0u8; 125_000])?;
///     Ok(start.elapsed())
/// })
/// .unwrap();
/// assert!(took.iter().all(|t| t.as_secs_f64() >= 0.033));
/// ```
pub fn run_workers_emulating<T: Send + 'static>(
    link: NetworkModel,
    timeout: Duration,
    work: impl Fn(LocalGroup) -> Result<T, DistError> + Send + Sync + 'static,
) -> Result<Vec<T>, DistError> {
    run_group(LocalGroup::emulating(link, timeout)?, timeout, work)
}

fn run_group<T: Send + 'static>(
    groups: Vec<LocalGroup>,
    timeout: Duration,
    work: impl Fn(LocalGroup) -> Result<T, DistError> + Send + Sync + 'static,
) -> Result<Vec<T>, DistError> {
    let inputs = groups.into_iter().map(|g| (g, ())).collect();
    let group = spawn_group(inputs, timeout, move |g, ()| work(g))?;
    if !group.stuck.is_empty() {
        // A rank that never returned explains its peers' timeouts, not a failure of their own.
        return Err(match root_cause(group.outcomes.iter()) {
            Some(e) if !matches!(e, DistError::Timeout(_) | DistError::PeerFailed(_)) => e,
            _ => DistError::Timeout(abandoned(&group.stuck, timeout)),
        });
    }
    match root_cause(group.outcomes.iter()) {
        Some(e) => Err(e),
        None => group.outcomes.into_iter().collect(),
    }
}

/// Every rank's outcome of [`spawn_group`].
pub(crate) struct GroupOutcome<T> {
    /// In rank order; an abandoned rank's is a [`DistError::Timeout`] naming it.
    pub(crate) outcomes: Vec<Result<T, DistError>>,
    /// The abandoned ranks.
    pub(crate) stuck: Vec<usize>,
}

/// Why `stuck` ranks were abandoned.
fn abandoned(stuck: &[usize], timeout: Duration) -> String {
    format!(
        "rank(s) {stuck:?} did not return within {timeout:?} of the first worker to return, nor \
         within {timeout:?} after the group was aborted; abandoned"
    )
}

/// Runs `work(group, input)` on one thread per rank, each with its [`LocalGroup`] handle and
/// input, and returns every rank's outcome within the bound of [`run_workers`]: a worker that
/// panics or errs aborts the group, and one still running after the bound is abandoned (its
/// thread left to run detached) with a [`DistError::Timeout`].
pub(crate) fn spawn_group<I: Send + 'static, T: Send + 'static>(
    inputs: Vec<(LocalGroup, I)>,
    timeout: Duration,
    work: impl Fn(LocalGroup, I) -> Result<T, DistError> + Send + Sync + 'static,
) -> Result<GroupOutcome<T>, DistError> {
    let world = inputs.len();
    let aborter = inputs[0].0.aborter();
    let work = Arc::new(work);
    let (sender, receiver) = mpsc::channel();
    for (group, input) in inputs {
        let (work, sender) = (work.clone(), sender.clone());
        let rank = group.rank();
        std::thread::Builder::new()
            .name(format!("kindling-worker-{rank}"))
            .spawn(move || {
                let outcome = run_caught(group, |g| work(g, input));
                // The receiver is gone only if this worker was abandoned.
                let _ = sender.send((rank, outcome));
            })
            .map_err(|e| {
                aborter.abort("a worker thread could not be started");
                DistError::InvalidConfig(format!("cannot start worker thread {rank}: {e}"))
            })?;
    }
    drop(sender);
    let mut outcomes: Vec<Option<Result<T, DistError>>> = (0..world).map(|_| None).collect();
    let receive = |deadline: Instant, outcomes: &mut Vec<Option<_>>| {
        while outcomes.iter().any(Option::is_none) {
            let wait = deadline.saturating_duration_since(Instant::now());
            let Ok((rank, outcome)) = receiver.recv_timeout(wait) else {
                return;
            };
            outcomes[rank] = Some(outcome);
        }
    };
    // The first worker to return starts the clock: the others get `timeout` to follow.
    if let Ok((rank, outcome)) = receiver.recv() {
        outcomes[rank] = Some(outcome);
    }
    receive(Instant::now() + timeout, &mut outcomes);
    let missing = |outcomes: &[Option<_>]| -> Vec<usize> {
        (0..world).filter(|&r| outcomes[r].is_none()).collect()
    };
    // A missing rank waiting inside a collective ends on its own at the collective's timeout,
    // with an error naming who did not join: give it that long.
    let waiting = aborter.waiting();
    if missing(&outcomes).iter().any(|r| waiting.contains(r)) {
        receive(Instant::now() + timeout, &mut outcomes);
    }
    if !missing(&outcomes).is_empty() {
        // Fail their collectives, so that ranks merely waiting in one return at once; a rank
        // that is still missing after another `timeout` is stuck outside every collective.
        aborter.abort(&format!(
            "rank(s) {:?} had not returned {timeout:?} after a peer did",
            missing(&outcomes)
        ));
        receive(Instant::now() + timeout, &mut outcomes);
    }
    let stuck = missing(&outcomes);
    let outcomes = outcomes
        .into_iter()
        .enumerate()
        .map(|(rank, outcome)| {
            outcome.unwrap_or_else(|| Err(DistError::Timeout(abandoned(&[rank], timeout))))
        })
        .collect();
    Ok(GroupOutcome { outcomes, stuck })
}

/// The error that explains the others among `outcomes` (the first in rank order of the most
/// basic kind): a panic or a local encode/decode error, then any error of the rank's own
/// (protocol, configuration, checkpoint), then a timeout, and only then a peer's failure, which
/// merely follows from one of those.
fn root_cause<'a, T: 'a>(
    outcomes: impl Iterator<Item = &'a Result<T, DistError>>,
) -> Option<DistError> {
    let depth = |e: &DistError| match e {
        DistError::Panicked { .. } | DistError::Encode { .. } | DistError::Decode { .. } => 0,
        DistError::Timeout(_) => 2,
        DistError::PeerFailed(_) => 3,
        _ => 1,
    };
    outcomes
        .filter_map(|o| o.as_ref().err())
        .min_by_key(|e| depth(e))
        .cloned()
}

/// Runs one worker: a panic becomes [`DistError::Panicked`] with its message, and a panic or an
/// error aborts the group.
fn run_caught<T>(
    group: LocalGroup,
    work: impl FnOnce(LocalGroup) -> Result<T, DistError>,
) -> Result<T, DistError> {
    let rank = group.rank();
    let aborter = group.aborter();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(group))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            aborter.abort(&e.to_string());
            Err(e)
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a non-string panic".into());
            aborter.abort(&message);
            Err(DistError::Panicked { rank, message })
        }
    }
}

/// Makes every rank's module a copy of rank `root`'s (parameters in module order, via
/// broadcast), so replicas start identical whatever their initialisation.
pub fn broadcast_module<M: Module>(
    module: M,
    comm: &mut dyn Communicator,
    root: usize,
) -> Result<M, DistError> {
    struct Collect(Vec<f32>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.extend(
                param
                    .val()
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .expect("parameter values"),
            );
        }
    }
    let mut mine = Collect(Vec::new());
    module.visit(&mut mine);
    let bytes: Vec<u8> = mine.0.iter().flat_map(|v| v.to_le_bytes()).collect();
    let received = comm.broadcast(bytes, root)?;
    if received.len() != 4 * mine.0.len() {
        return Err(DistError::Protocol(format!(
            "broadcast module has {} bytes, this rank's has {}",
            received.len(),
            4 * mine.0.len()
        )));
    }
    struct Assign {
        values: Vec<f32>,
        at: usize,
    }
    impl ModuleMapper for Assign {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let dims = tensor.dims();
            let n: usize = dims.iter().product();
            let device = tensor.device();
            let require_grad = tensor.is_require_grad();
            let mut fresh = Tensor::<D>::from_data(
                TensorData::new(self.values[self.at..self.at + n].to_vec(), dims),
                &device,
            );
            if require_grad {
                fresh = fresh.require_grad();
            }
            self.at += n;
            Param::from_mapped_value(id, fresh, mapper)
        }
    }
    let values = received
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(module.map(&mut Assign { values, at: 0 }))
}

/// A fingerprint of a module's parameters (FNV-1a over their f32 bits, module order): equal
/// fingerprints on every rank mean bit-identical replicas.
pub fn fingerprint<M: Module>(module: &M) -> u64 {
    struct Hash(u64);
    impl ModuleVisitor for Hash {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            for v in param
                .val()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("parameter values")
            {
                for b in v.to_bits().to_le_bytes() {
                    self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
                }
            }
        }
    }
    let mut h = Hash(0xcbf2_9ce4_8422_2325);
    module.visit(&mut h);
    h.0
}

/// One rank of data-parallel training with its own loop: the transport, the protocol, the
/// rank's RNG (for randomised codecs) and the accumulated statistics.
///
/// ```text
/// each step: local gradients → reducer (agree) → optimizer step (identical on every rank)
/// ```
pub struct DataParallel<C: Communicator, R: Reducer> {
    /// The transport.
    pub comm: C,
    /// The exchange protocol.
    pub reducer: R,
    rng: ChaCha8Rng,
    /// Statistics summed over all steps.
    pub total: StepStats,
    /// Steps taken.
    pub steps: u64,
}

impl<C: Communicator, R: Reducer> DataParallel<C, R> {
    /// A rank's trainer; `seed` is combined with the rank so ranks draw independent randomness.
    pub fn new(comm: C, reducer: R, seed: u64) -> Self {
        let rank = comm.rank() as u64;
        Self {
            comm,
            reducer,
            rng: ChaCha8Rng::seed_from_u64(seed ^ rank.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            total: StepStats::default(),
            steps: 0,
        }
    }

    /// Agrees on the gradients of `module` with the other ranks (the protocol's exchange) and
    /// counts the step; for loops that apply the optimizer themselves.
    ///
    /// An error (this rank's encode, a peer's payload that does not decode, mismatched calls, a
    /// failed peer) is reported to the transport with [`Communicator::fail`] before it is
    /// returned, so no peer waits for this rank: on `Mpi` that ends the job.
    pub fn agree<M: Module>(
        &mut self,
        module: &M,
        grads: GradientsParams,
    ) -> Result<(GradientsParams, StepStats), DistError> {
        let before = self.comm.traffic();
        let (agreed, mut stats) = self
            .reducer
            .reduce(module, grads, &mut self.comm, &mut self.rng)
            .inspect_err(|e| self.comm.fail(&e.to_string()))?;
        let after = self.comm.traffic();
        stats.collectives = after.collectives - before.collectives;
        stats.sent_bytes = after.sent - before.sent;
        stats.rounds = after.rounds - before.rounds;
        self.total.add(&stats);
        self.steps += 1;
        Ok((agreed, stats))
    }

    /// Agrees on the gradients and applies `optim`'s step: every rank ends with the same module.
    pub fn step<M: Module>(
        &mut self,
        module: M,
        grads: GradientsParams,
        optim: &mut ModuleOptimizer,
        lr: LearningRate,
    ) -> Result<(M, StepStats), DistError> {
        let (agreed, stats) = self.agree(&module, grads)?;
        Ok((optim.step(lr, module, agreed), stats))
    }

    /// This rank's exchange state (step count, RNG position, protocol state), to save with the
    /// model and optimizer.
    pub fn checkpoint(&self) -> ReducerCheckpoint {
        ReducerCheckpoint {
            protocol: self.reducer.identity(),
            steps: self.steps,
            rng_position: self.rng.get_word_pos(),
            state: self.reducer.state(),
        }
    }

    /// Restores a state saved by [`checkpoint`](Self::checkpoint) on the same rank of a trainer
    /// built with the same protocol and seed; buffers go to `device`. A checkpoint of another
    /// protocol or configuration ([`Reducer::identity`]) is an error naming both, and nothing
    /// is changed.
    pub fn restore(
        &mut self,
        checkpoint: ReducerCheckpoint,
        device: &Device,
    ) -> Result<(), DistError> {
        let ours = self.reducer.identity();
        if checkpoint.protocol != ours {
            return Err(DistError::Checkpoint(format!(
                "the checkpoint belongs to protocol `{}`, this trainer runs `{ours}`",
                checkpoint.protocol
            )));
        }
        self.reducer.load_state(checkpoint.state, device)?;
        self.rng.set_word_pos(checkpoint.rng_position);
        self.steps = checkpoint.steps;
        Ok(())
    }
}
