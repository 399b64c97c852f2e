//! Data-parallel training in a plain loop: spawn workers over a [`LocalGroup`], make their
//! replicas identical, and let each step agree on one gradient through a [`Reducer`].

use std::time::Duration;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{GradientsParams, LearningRate, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

use crate::{Communicator, DistError, LocalGroup, Reducer, ReducerCheckpoint, StepStats};

/// Runs `work(group)` on `world` threads, one [`LocalGroup`] handle each, and returns every
/// rank's result in rank order. A worker that panics or returns an error aborts the group, so the
/// others fail at their next collective instead of waiting; the first error (a panic is reported
/// with its message) is returned.
pub fn run_workers<T: Send>(
    world: usize,
    timeout: Duration,
    work: impl Fn(LocalGroup) -> Result<T, DistError> + Sync,
) -> Result<Vec<T>, DistError> {
    let outcomes = spawn_group((0..world).map(|_| ()).collect(), timeout, |group, ()| {
        work(group)
    })?;
    // Report the root cause first: a panic or a local error before peers' follow-up failures.
    let root = outcomes.iter().find_map(|o| match o {
        Err(
            e @ (DistError::Panicked { .. } | DistError::Encode { .. } | DistError::Decode { .. }),
        ) => Some(e.clone()),
        _ => None,
    });
    match root {
        Some(e) => Err(e),
        None => outcomes.into_iter().collect(),
    }
}

/// Runs `work(group, input)` on one thread per input, the input at index `r` going to rank `r`
/// of a new [`LocalGroup`], and returns every rank's outcome in rank order. A worker that panics
/// or returns an error aborts the group (a panic becomes [`DistError::Panicked`] with its
/// message), so the others fail at their next collective instead of waiting.
pub(crate) fn spawn_group<I: Send, T: Send>(
    inputs: Vec<I>,
    timeout: Duration,
    work: impl Fn(LocalGroup, I) -> Result<T, DistError> + Sync,
) -> Result<Vec<Result<T, DistError>>, DistError> {
    let groups = LocalGroup::new(inputs.len(), timeout)?;
    let work = &work;
    Ok(std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .into_iter()
            .zip(inputs)
            .map(|(group, input)| {
                scope.spawn(move || {
                    let rank = group.rank();
                    let aborter = group.aborter();
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        work(group, input)
                    }));
                    match result {
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
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker thread joins"))
            .collect()
    }))
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
    pub fn agree<M: Module>(
        &mut self,
        module: &M,
        grads: GradientsParams,
    ) -> Result<(GradientsParams, StepStats), DistError> {
        let (agreed, stats) = self
            .reducer
            .reduce(module, grads, &mut self.comm, &mut self.rng)?;
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
