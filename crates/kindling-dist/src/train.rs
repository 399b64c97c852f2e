//! burn-train integration: [`CompressedDdp`], a `TrainingStrategy::Custom` strategy that trains a
//! `Learner` data-parallel with a compressed exchange, and [`ExchangeMetric`], the exchange's
//! wire bytes and compression ratio as burn-train metrics.
//!
//! Why a custom strategy rather than `TrainStep::optimize_multi` under
//! `ExecutionStrategy::multi(.., OptimSharded)`: burn's multi-device strategy does hand
//! `optimize_multi` every worker's gradients, but from one thread that owns every replica, so the
//! exchange would be a function call on in-memory tensors: no transport, no byte counts that mean
//! anything, no MPI, and every worker's randomised encoding drawn from one place. A strategy that
//! runs the workers itself gives each rank its own thread (or process), transport, RNG and
//! reducer state, exactly as [`DataParallel`] does in a plain loop, and still drives burn's event
//! processor, checkpointer, early stopping and interrupter, so `Learner` users keep their metrics,
//! dashboard and checkpoints.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use burn::optim::GradientsAccumulator;
use burn::tensor::{Device, TensorReadError};
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::store::EventStoreClient;
use burn::train::metric::{
    Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};
use burn::train::train::WorkerFailure;
use burn::train::{
    CloneEarlyStoppingStrategy, EventProcessorTraining, InferenceStep, Interrupter, Learner,
    LearnerEvent, LearnerModel, LearningCheckpointer, SupervisedLearningStrategy,
    SupervisedTrainingEventProcessor, TrainLoader, TrainingComponents, TrainingError, TrainingItem,
    ValidLoader,
};

use crate::parallel::spawn_group;
use crate::{
    Communicator, DataParallel, DistError, LocalGroup, Reducer, ReducerCheckpoint, StepStats,
    broadcast_module, fingerprint,
};

/// Where the workers of a [`CompressedDdp`] run.
enum Workers {
    /// One thread per device in this process, over a [`LocalGroup`](crate::LocalGroup).
    Local {
        devices: Vec<Device>,
        timeout: Duration,
    },
    /// This process is one rank of a group whose other ranks are other processes (MPI).
    Rank {
        comm: Mutex<Option<Box<dyn Communicator>>>,
        device: Device,
    },
}

/// Data-parallel training of a burn-train `Learner` with a compressed gradient exchange: a
/// `TrainingStrategy::Custom` strategy. For burn users who want [`DataParallel`]'s protocols
/// without leaving `Learner`: metrics, dashboard, checkpoints and early stopping keep working.
///
/// Each epoch the training set is cut into W equal contiguous shards (the last `n mod W` items
/// are left out), one per rank. Every step, each rank runs the model's `TrainStep` on its next
/// batch, the [`Reducer`] agrees on one gradient, and every rank applies the learner's optimizer
/// and learning-rate schedule to it, so replicas stay bit-identical. Gradient accumulation
/// (`grads_accumulation`) accumulates locally and exchanges once per accumulated step. Rank 0
/// reports items to the event processor (progress counts every rank's items), runs validation on
/// the whole validation set, saves the learner's checkpoints and decides early stopping; the
/// decision to go on is agreed by all ranks, so an interrupt, a data error or a shorter shard on
/// any rank stops every rank at the same step.
///
/// Checkpoints: the learner's checkpointer saves the model, optimizer and scheduler; with
/// [`state_dir`](Self::state_dir) set, every rank also saves its [`ReducerCheckpoint`] (error
/// feedback, PowerSGD's matrices, step, RNG) as `reducer-{epoch}-rank{rank}.bin` at the same
/// epochs, and a launch resuming from epoch `e` (`SupervisedTraining::checkpoint(e)`) restores it,
/// so the resumed run reproduces the uninterrupted one (given a data loader that does not
/// reshuffle differently after a restart). Without a state directory a resumed run restarts the
/// protocol's state from zero.
///
/// A worker that fails (an exchange error, a payload that does not decode, a timeout) stops every
/// rank; the failure is reported as `TrainingError::Workers` in the `LearningResult`, naming the
/// rank, and the model returned is the one the learner started with.
///
/// Two ways to run the workers:
/// * [`new`](Self::new): one thread per device in this process, over a [`LocalGroup`](crate::LocalGroup);
/// * [`with_communicator`](Self::with_communicator): this process is one rank of a group of
///   processes, e.g. `Mpi` (feature `mpi`) under `mpirun`. Every process launches its own
///   `Learner` with this strategy; rank 0's model is broadcast first. Only rank 0 reports,
///   validates and checkpoints the learner, so give the other ranks a quiet logger and renderer;
///   to resume, every rank must load the same learner checkpoint (a shared directory), because
///   the optimizer's state is not broadcast.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use burn::tensor::Device;
/// # use burn::train::{Learner, SupervisedTraining, TrainingStrategy, LearnerModel, TrainLoader, ValidLoader};
/// # use burn::train::metric::LossMetric;
/// # use burn::optim::ModuleOptimizer;
/// use kindling_compress::Qsgd;
/// use kindling_dist::{CompressedDdp, ExchangeMetric, Gathered};
///
/// # fn demo<M: LearnerModel>(model: M, optim: ModuleOptimizer, train: TrainLoader<M>, valid: ValidLoader<M>) {
/// let devices = vec![Device::flex().autodiff(); 4];
/// let ddp = Arc::new(CompressedDdp::new(devices, Gathered::new(Qsgd::new(16).unwrap())).unwrap());
/// let result = SupervisedTraining::new("/tmp/run", train, valid)
///     .num_epochs(5)
///     .metric_train_numeric(ExchangeMetric::wire_megabytes(&ddp))
///     .metric_train_numeric(ExchangeMetric::compression_ratio(&ddp))
///     .with_training_strategy(TrainingStrategy::Custom(ddp.clone()))
///     .launch(Learner::new(model, optim, 1e-2));
/// println!("{:.1}× less traffic", ddp.totals().ratio());
/// # }
/// ```
pub struct CompressedDdp<R> {
    workers: Workers,
    reducer: R,
    seed: u64,
    state_dir: Option<PathBuf>,
    log: Arc<ExchangeLog>,
    check_replicas: bool,
}

impl<R: Reducer + Clone> CompressedDdp<R> {
    /// One worker thread per device (W = `devices.len()`), exchanging through `reducer`. Devices
    /// without autodiff get it. Collectives time out after 5 minutes (see
    /// [`timeout`](Self::timeout)).
    pub fn new(devices: Vec<Device>, reducer: R) -> Result<Self, DistError> {
        if devices.is_empty() {
            return Err(DistError::InvalidConfig(
                "devices: a strategy needs at least one worker device".into(),
            ));
        }
        Ok(Self::with_workers(
            Workers::Local {
                devices: devices.into_iter().map(autodiff).collect(),
                timeout: Duration::from_secs(300),
            },
            reducer,
        ))
    }

    /// This process as rank `comm.rank()` of `comm.world_size()` (other processes run the other
    /// ranks, e.g. `Mpi` (feature `mpi`) under `mpirun`), training on `device`. Every
    /// launch uses the communicator; [`take_communicator`](Self::take_communicator) hands it
    /// back afterwards.
    pub fn with_communicator(
        comm: impl Communicator + 'static,
        device: Device,
        reducer: R,
    ) -> Self {
        Self::with_workers(
            Workers::Rank {
                comm: Mutex::new(Some(Box::new(comm))),
                device: autodiff(device),
            },
            reducer,
        )
    }

    fn with_workers(workers: Workers, reducer: R) -> Self {
        Self {
            workers,
            reducer,
            seed: 0,
            state_dir: None,
            log: Arc::default(),
            check_replicas: true,
        }
    }

    /// Whether every rank checks, before every step and after the last, that its replica is
    /// bit-identical to rank 0's (on by default). The parameters' fingerprints travel with the
    /// all-reduce that already agrees each step on going on (an all-gather of 9 bytes per rank
    /// instead of 4), so the check costs no extra collective, but it reads every parameter to
    /// the host each step: worth turning off for large models on GPUs once a protocol is
    /// trusted. A divergence is a [`DistError::Protocol`] on every rank naming the first rank
    /// that differs and the step.
    pub fn check_replicas(mut self, on: bool) -> Self {
        self.check_replicas = on;
        self
    }

    /// The seed of the ranks' randomised encodings (combined with each rank); default 0.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// How long a collective waits for the slowest worker thread before every rank fails
    /// (default 5 minutes). Rank 0 validates while the others wait, so keep it above the longest
    /// validation epoch. A worker thread stuck outside every collective (a hung data loader) is
    /// abandoned as in [`run_workers`](crate::run_workers): `launch` returns within four times
    /// this of the hang, with a failure naming that rank. For
    /// [`with_communicator`](Self::with_communicator) the transport's own timeout applies
    /// instead.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        if let Workers::Local { timeout: t, .. } = &mut self.workers {
            *t = timeout;
        }
        self
    }

    /// The directory where each rank saves its exchange state when the learner checkpoints, and
    /// reads it back when a launch resumes.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// The communicator given to [`with_communicator`](Self::with_communicator), for collectives
    /// after training; `None` for worker threads, or once taken.
    pub fn take_communicator(&self) -> Option<Box<dyn Communicator>> {
        match &self.workers {
            Workers::Rank { comm, .. } => comm.lock().expect("communicator lock").take(),
            Workers::Local { .. } => None,
        }
    }

    /// One rank's exchange statistics summed over every step of every launch: rank 0's for
    /// worker threads, this process's rank's with [`with_communicator`](Self::with_communicator).
    pub fn totals(&self) -> StepStats {
        self.log.totals()
    }
}

fn autodiff(device: Device) -> Device {
    if device.is_autodiff() {
        device
    } else {
        device.autodiff()
    }
}

/// What every rank needs to know about the run.
struct Plan {
    num_epochs: usize,
    starting_epoch: usize,
    resume_from: Option<usize>,
    accumulation: Option<usize>,
    checkpointing: bool,
    train_items: usize,
    interrupter: Interrupter,
}

/// The strategy's settings a rank reads (each worker thread owns a copy, so that a hung one can
/// be abandoned; the reducer is cloned for each rank, so it need not be `Sync`).
#[derive(Clone)]
struct RankContext {
    seed: u64,
    state_dir: Option<PathBuf>,
    log: Arc<ExchangeLog>,
    /// The rank whose steps the log counts (`None`: this process's only rank).
    logged_rank: Option<usize>,
    plan: Arc<Plan>,
    /// Check the replicas' fingerprints every step.
    check_replicas: bool,
}

/// burn-train's event processor, shared with rank 0 and handed back by `fit`: `None` once taken
/// back, so that an abandoned rank 0 that wakes up later reports nothing.
type SharedEvents<M> = Arc<Mutex<Option<SupervisedTrainingEventProcessor<M>>>>;

/// What only rank 0 does: report, validate, checkpoint the learner, decide early stopping.
struct MainDuties<M: LearnerModel> {
    events: SharedEvents<M>,
    valid: ValidLoader<M>,
    checkpointer: Option<LearningCheckpointer<M>>,
    early_stopping: Option<Box<dyn CloneEarlyStoppingStrategy>>,
    event_store: Arc<EventStoreClient>,
}

impl<M: LearnerModel, R: Reducer + Clone + 'static> SupervisedLearningStrategy<M>
    for CompressedDdp<R>
{
    fn fit(
        &self,
        components: TrainingComponents<M>,
        learner: Learner<M>,
        dataloader_train: TrainLoader<M>,
        dataloader_valid: ValidLoader<M>,
        starting_epoch: usize,
    ) -> (M, SupervisedTrainingEventProcessor<M>) {
        let plan = Plan {
            num_epochs: components.num_epochs,
            starting_epoch,
            resume_from: components.checkpoint,
            accumulation: components.grad_accumulation,
            checkpointing: components.checkpointer.is_some(),
            train_items: dataloader_train.num_items(),
            interrupter: components.interrupter.clone(),
        };
        let events: SharedEvents<M> = Arc::new(Mutex::new(Some(components.event_processor)));
        let main = MainDuties {
            events: events.clone(),
            valid: dataloader_valid,
            checkpointer: components.checkpointer,
            early_stopping: components.early_stopping,
            event_store: components.event_store,
        };
        let initial = learner.model();
        let ctx = RankContext {
            seed: self.seed,
            state_dir: self.state_dir.clone(),
            log: self.log.clone(),
            logged_rank: match self.workers {
                Workers::Local { .. } => Some(0),
                Workers::Rank { .. } => None,
            },
            plan: Arc::new(plan),
            check_replicas: self.check_replicas,
        };
        let outcome = match &self.workers {
            Workers::Local { devices, timeout } => fit_local(
                ctx.clone(),
                devices,
                *timeout,
                &self.reducer,
                learner,
                dataloader_train,
                main,
            ),
            Workers::Rank { comm: slot, device } => {
                let taken = slot.lock().expect("communicator lock").take();
                match taken {
                    None => Err(vec![WorkerFailure {
                        device_id: 0,
                        message: "the strategy's communicator is in use by another launch or \
                                  was taken"
                            .into(),
                    }]),
                    Some(mut comm) => {
                        let rank = comm.rank();
                        let shard = shard(&dataloader_train, rank, comm.world_size(), device);
                        let main = (rank == 0).then_some(main);
                        let reducer = self.reducer.clone();
                        let result = shard.and_then(|shard| {
                            run_rank(&ctx, &mut *comm, device, reducer, learner, shard, main)
                        });
                        // No peer may wait for a rank that stopped (on `Mpi` this ends the job).
                        if let Err(e) = &result {
                            comm.fail(&e.to_string());
                        }
                        // Back in its place for the next launch or for `take_communicator`.
                        *slot.lock().expect("communicator lock") = Some(comm);
                        result.map_err(|e| {
                            vec![WorkerFailure {
                                device_id: rank,
                                message: e.to_string(),
                            }]
                        })
                    }
                }
            }
        };
        let model = match outcome {
            Ok(model) => model,
            Err(failures) => {
                ctx.plan.interrupter.fail(TrainingError::Workers(failures));
                initial
            }
        };
        // Rank 0 holds the lock only while it hands the processor one event.
        let events = events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .expect("the event processor is handed back once");
        (model, events)
    }
}

/// Runs one thread per device and returns rank 0's model, or the failing ranks' errors; a rank
/// still running at the bound of [`run_workers`](crate::run_workers) is abandoned and reported.
fn fit_local<M: LearnerModel, R: Reducer + Clone + 'static>(
    ctx: RankContext,
    devices: &[Device],
    timeout: Duration,
    reducer: &R,
    learner: Learner<M>,
    train: TrainLoader<M>,
    main: MainDuties<M>,
) -> Result<M, Vec<WorkerFailure>> {
    let fail = |rank: usize, e: DistError| WorkerFailure {
        device_id: rank,
        message: e.to_string(),
    };
    let world = devices.len();
    let mut main = Some(main);
    let inputs = devices
        .iter()
        .enumerate()
        .map(|(rank, device)| {
            let shard = shard(&train, rank, world, device)?;
            Ok((
                device.clone(),
                shard,
                learner.clone(),
                reducer.clone(),
                main.take(),
            ))
        })
        .collect::<Result<Vec<_>, DistError>>()
        .map_err(|e| vec![fail(0, e)])?;
    let groups = LocalGroup::new(inputs.len(), timeout).map_err(|e| vec![fail(0, e)])?;
    let group = spawn_group(
        groups.into_iter().zip(inputs).collect(),
        timeout,
        move |mut group, (device, shard, learner, reducer, duties)| {
            let is_main = duties.is_some();
            let model = run_rank(&ctx, &mut group, &device, reducer, learner, shard, duties)?;
            Ok(is_main.then_some(model))
        },
    )
    .map_err(|e| vec![fail(0, e)])?;
    let stuck = group.stuck;
    let mut errors = Vec::new();
    let mut model = None;
    for (rank, outcome) in group.outcomes.into_iter().enumerate() {
        match outcome {
            Ok(Some(m)) => model = Some(m),
            Ok(None) => {}
            Err(e) => errors.push((rank, e)),
        }
    }
    // Report the root causes: a rank's own failure, else the abandoned ranks (their peers'
    // timeouts follow from them), else the timeouts; a peer's "a peer failed" only follows.
    let own = |e: &DistError| !matches!(e, DistError::Timeout(_) | DistError::PeerFailed(_));
    if errors.iter().any(|(_, e)| own(e)) {
        errors.retain(|(_, e)| own(e));
    } else if !stuck.is_empty() {
        errors.retain(|(rank, _)| stuck.contains(rank));
    } else if errors
        .iter()
        .any(|(_, e)| !matches!(e, DistError::PeerFailed(_)))
    {
        errors.retain(|(_, e)| !matches!(e, DistError::PeerFailed(_)));
    }
    match model {
        Some(model) if errors.is_empty() => Ok(model),
        _ => Err(errors.into_iter().map(|(rank, e)| fail(rank, e)).collect()),
    }
}

/// One rank's whole run; `main` is `Some` on rank 0.
fn run_rank<M: LearnerModel, R: Reducer>(
    ctx: &RankContext,
    comm: &mut dyn Communicator,
    device: &Device,
    reducer: R,
    mut learner: Learner<M>,
    train: TrainLoader<M>,
    mut main: Option<MainDuties<M>>,
) -> Result<M, DistError> {
    let plan = &*ctx.plan;
    learner.fork(device);
    let world = comm.world_size();
    let rank = comm.rank();
    let counts = ctx.logged_rank.is_none_or(|r| r == rank);
    // Replicas start from rank 0's parameters, however each process built its model.
    let start = broadcast_module(learner.model(), comm, 0)?;
    learner.load_model(start.into_record());
    let mut trainer = DataParallel::new(comm, reducer, ctx.seed);
    if let (Some(epoch), Some(dir)) = (plan.resume_from, &ctx.state_dir) {
        let path = rank_state_file(dir, epoch, rank);
        let bytes = std::fs::read(&path)
            .map_err(|e| DistError::Checkpoint(format!("cannot read {}: {e}", path.display())))?;
        trainer.restore(
            ReducerCheckpoint::from_bytes(&bytes)?,
            &device.clone().inner(),
        )?;
    }
    let report = |main: &Option<MainDuties<M>>, event| {
        if let Some(result) = main
            .as_ref()
            .and_then(|m| m.events(|p| p.process_train(event)))
        {
            plan.interrupter.fail_on_error(result);
        }
    };

    for epoch in plan.starting_epoch..=plan.num_epochs {
        report(
            &main,
            LearnerEvent::StartSplit {
                epoch_number: epoch,
                total_items: plan.train_items,
            },
        );
        let mut batches = train.iter();
        let mut accumulator = GradientsAccumulator::new();
        let mut accumulated = 0;
        let mut iteration = 0;
        loop {
            let batch = batches.next();
            let ready = matches!(batch, Some(Ok(_))) && !plan.interrupter.should_stop();
            let print = ctx.check_replicas.then(|| fingerprint(&learner.model()));
            if !agree_on_step(&mut *trainer.comm, ready, print, (epoch, iteration / world))? {
                if let Some(Err(e)) = batch {
                    plan.interrupter.fail(e);
                }
                break;
            }
            let Some(Ok(batch)) = batch else {
                unreachable!("every rank agreed it holds a batch")
            };
            iteration += world;
            let mut progress = batches.progress();
            progress.items_processed *= world;
            progress.items_total *= world;
            let output = learner.train_step(batch);
            let grads = match plan.accumulation {
                None => Some(output.grads),
                Some(every) => {
                    accumulator.accumulate(&learner.model(), output.grads);
                    accumulated += 1;
                    (accumulated >= every).then(|| {
                        accumulated = 0;
                        accumulator.grads()
                    })
                }
            };
            if let Some(grads) = grads {
                let stats = exchange_and_step(&mut trainer, &mut learner, grads)?;
                if counts {
                    ctx.log.push(stats, main.is_some());
                }
            }
            let item = TrainingItem::new(
                output.item,
                progress,
                Some(iteration),
                Some(learner.lr_current()),
            );
            report(&main, LearnerEvent::ProcessedItem(item));
        }
        if accumulated > 0 {
            // The epoch's last, partial accumulation: its items were reported already, so
            // it counts in the totals only.
            let stats = exchange_and_step(&mut trainer, &mut learner, accumulator.grads())?;
            if counts {
                ctx.log.push(stats, false);
            }
        }
        report(&main, LearnerEvent::EndSplit(epoch));

        if let Some(main) = &mut main {
            main.validate(&learner, epoch, plan);
        }
        // Everyone waits for rank 0's validation here, then saves its exchange state.
        let go_on = main
            .as_mut()
            .is_none_or(|main| main.end_epoch(&learner, epoch, plan));
        let go_on = all_agree(&mut *trainer.comm, go_on && !plan.interrupter.should_stop())?;
        if plan.checkpointing
            && let Some(dir) = &ctx.state_dir
        {
            let path = rank_state_file(dir, epoch, rank);
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&path, trainer.checkpoint().to_bytes()))
                .map_err(|e| {
                    DistError::Checkpoint(format!("cannot write {}: {e}", path.display()))
                })?;
        }
        if !go_on {
            break;
        }
    }
    Ok(learner.model())
}

/// Agrees on `grads` and steps the learner's schedule and optimizer.
fn exchange_and_step<M: LearnerModel, R: Reducer>(
    trainer: &mut DataParallel<&mut dyn Communicator, R>,
    learner: &mut Learner<M>,
    grads: burn::optim::GradientsParams,
) -> Result<StepStats, DistError> {
    let (agreed, stats) = trainer.agree(&learner.model(), grads)?;
    learner.lr_step();
    learner.optimizer_step(agreed);
    Ok(stats)
}

fn rank_state_file(dir: &Path, epoch: usize, rank: usize) -> PathBuf {
    dir.join(format!("reducer-{epoch}-rank{rank}.bin"))
}

impl<M: LearnerModel> MainDuties<M> {
    /// `f` on the event processor, locked for that call only (so that `fit` can take it back
    /// from a rank 0 it abandons); `None` once it has been taken back.
    fn events<T>(
        &self,
        f: impl FnOnce(&mut SupervisedTrainingEventProcessor<M>) -> T,
    ) -> Option<T> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .map(f)
    }

    fn validate(&self, learner: &Learner<M>, epoch: usize, plan: &Plan) {
        let interrupter = &plan.interrupter;
        let valid = |event| {
            if let Some(result) = self.events(|p| p.process_valid(event)) {
                interrupter.fail_on_error(result);
            }
        };
        valid(LearnerEvent::StartSplit {
            epoch_number: epoch,
            total_items: self.valid.num_items(),
        });
        let model = learner.model().valid();
        let mut batches = self.valid.iter();
        let mut iteration = 0;
        while let Some(batch) = batches.next() {
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    interrupter.fail(e);
                    break;
                }
            };
            iteration += 1;
            let progress = batches.progress();
            let item = TrainingItem::new(
                InferenceStep::step(&model, batch),
                progress,
                Some(iteration),
                None,
            );
            valid(LearnerEvent::ProcessedItem(item));
            if interrupter.should_stop() {
                break;
            }
        }
        valid(LearnerEvent::EndSplit(epoch));
        if let Some(result) = self.events(|p| p.process_train(LearnerEvent::EndEpoch(epoch))) {
            interrupter.fail_on_error(result);
        }
    }

    /// Checkpoints the learner and asks early stopping; false when training should stop.
    fn end_epoch(&mut self, learner: &Learner<M>, epoch: usize, plan: &Plan) -> bool {
        if (self.checkpointer.is_some() || self.early_stopping.is_some())
            && let Some(flushed) = self.events(|p| p.flush())
        {
            plan.interrupter.fail_on_error(flushed);
        }
        if plan.interrupter.should_stop() {
            return false;
        }
        if let Some(checkpointer) = &mut self.checkpointer {
            checkpointer.checkpoint(learner, epoch, &self.event_store);
        }
        !self
            .early_stopping
            .as_mut()
            .is_some_and(|stop| stop.should_stop(epoch, &self.event_store))
    }
}

/// True on every rank when `mine` is true on every rank.
/// [`all_agree`] on going on with a step, and, given this rank's parameter fingerprint, a check
/// that every replica is bit-identical to rank 0's (one all-gather of 9 bytes per rank).
fn agree_on_step(
    comm: &mut dyn Communicator,
    ready: bool,
    print: Option<u64>,
    (epoch, batch): (usize, usize),
) -> Result<bool, DistError> {
    let Some(print) = print else {
        return all_agree(comm, ready);
    };
    let mut mine = [0u8; 9];
    mine[0] = ready.into();
    mine[1..].copy_from_slice(&print.to_le_bytes());
    let all = comm.all_gather_borrowed(&mine)?;
    let parse = |rank: usize, b: &[u8]| -> Result<(bool, u64), DistError> {
        let b: &[u8; 9] = b.try_into().map_err(|_| {
            DistError::Protocol(format!(
                "rank {rank} sent {} bytes for a step vote",
                b.len()
            ))
        })?;
        let print = u64::from_le_bytes(b[1..].try_into().expect("8 bytes"));
        Ok((b[0] == 1, print))
    };
    let votes = all
        .iter()
        .enumerate()
        .map(|(rank, b)| parse(rank, b))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(rank) = votes.iter().position(|v| v.1 != votes[0].1) {
        return Err(DistError::Protocol(format!(
            "replicas diverged in epoch {epoch} before batch {batch}: rank {rank}'s parameters \
             (fingerprint {:016x}) differ from rank 0's ({:016x})",
            votes[rank].1, votes[0].1
        )));
    }
    Ok(votes.iter().all(|v| v.0))
}

fn all_agree(comm: &mut dyn Communicator, mine: bool) -> Result<bool, DistError> {
    let mut votes = [if mine { 1.0 } else { 0.0 }];
    comm.all_reduce_sum(&mut votes)?;
    Ok(votes[0] == comm.world_size() as f32)
}

/// Rank `rank`'s equal contiguous share of the training items, on its device.
fn shard<O: 'static>(
    loader: &Arc<dyn burn::data::dataloader::DataLoader<O>>,
    rank: usize,
    world: usize,
    device: &Device,
) -> Result<Arc<dyn burn::data::dataloader::DataLoader<O>>, DistError> {
    let per = loader.num_items() / world;
    if per == 0 {
        return Err(DistError::InvalidConfig(format!(
            "the training set has {} items, fewer than the {world} workers",
            loader.num_items()
        )));
    }
    Ok(loader.slice(rank * per, (rank + 1) * per).to_device(device))
}

/// One rank's per-step exchange statistics, fanned out to every [`ExchangeMetric`] made from the
/// strategy (each reads its own queue, in step order) and summed.
#[derive(Default)]
struct ExchangeLog {
    inner: Mutex<LogInner>,
}

#[derive(Default)]
struct LogInner {
    total: StepStats,
    taps: Vec<Weak<Mutex<VecDeque<StepStats>>>>,
}

impl ExchangeLog {
    /// Adds a step to the totals, and to the metrics' queues when `to_metrics`.
    fn push(&self, stats: StepStats, to_metrics: bool) {
        let mut inner = self.inner.lock().expect("exchange log lock");
        inner.total.add(&stats);
        if !to_metrics {
            return;
        }
        inner.taps.retain(|tap| match tap.upgrade() {
            Some(queue) => {
                queue.lock().expect("metric queue lock").push_back(stats);
                true
            }
            None => false,
        });
    }

    fn tap(&self) -> Arc<Mutex<VecDeque<StepStats>>> {
        let queue = Arc::new(Mutex::new(VecDeque::new()));
        let mut inner = self.inner.lock().expect("exchange log lock");
        inner.taps.push(Arc::downgrade(&queue));
        queue
    }

    fn totals(&self) -> StepStats {
        self.inner.lock().expect("exchange log lock").total
    }
}

#[derive(Debug, Clone, Copy)]
enum Quantity {
    WireMegabytes,
    CompressionRatio,
}

/// A burn-train training metric of a [`CompressedDdp`]'s exchange, read from the strategy at
/// every step (register it with `metric_train_numeric`; its input is `()`, so it fits any
/// model output):
///
/// * [`wire_megabytes`](Self::wire_megabytes): megabytes (10⁶ bytes) rank 0 put on the wire for
///   the step; the epoch value is the mean per step;
/// * [`compression_ratio`](Self::compression_ratio): dense f32 bytes over wire bytes; the epoch
///   value is the ratio of the epoch's sums.
///
/// Each metric has its own queue of steps, filled by the strategy as rank 0 steps and drained as
/// burn's event processor updates the metric, so the numbers line up with the step they belong to
/// even though burn processes events on another thread.
#[derive(Clone)]
pub struct ExchangeMetric {
    quantity: Quantity,
    name: MetricName,
    queue: Arc<Mutex<VecDeque<StepStats>>>,
    state: NumericMetricState,
}

impl ExchangeMetric {
    /// Wire megabytes per step, from `strategy`.
    pub fn wire_megabytes<R: Reducer + Clone>(strategy: &CompressedDdp<R>) -> Self {
        Self::new(strategy, Quantity::WireMegabytes, "Wire MB")
    }

    /// Compression ratio (raw / wire), from `strategy`.
    pub fn compression_ratio<R: Reducer + Clone>(strategy: &CompressedDdp<R>) -> Self {
        Self::new(strategy, Quantity::CompressionRatio, "Compression Ratio")
    }

    fn new<R: Reducer + Clone>(
        strategy: &CompressedDdp<R>,
        quantity: Quantity,
        name: &str,
    ) -> Self {
        Self {
            quantity,
            name: Arc::new(name.to_string()),
            queue: strategy.log.tap(),
            state: NumericMetricState::new(),
        }
    }

    fn format(&self) -> FormatOptions {
        match self.quantity {
            Quantity::WireMegabytes => FormatOptions::new(self.name()).unit("MB").precision(4),
            Quantity::CompressionRatio => FormatOptions::new(self.name()).unit("×").precision(2),
        }
    }
}

impl Metric for ExchangeMetric {
    type Input = ();

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn description(&self) -> Option<String> {
        Some(
            match self.quantity {
                Quantity::WireMegabytes => "bytes a worker sends per step, in MB",
                Quantity::CompressionRatio => "dense f32 gradient bytes over bytes sent",
            }
            .into(),
        )
    }

    fn attributes(&self) -> MetricAttributes {
        match self.quantity {
            Quantity::WireMegabytes => NumericAttributes {
                unit: Some("MB".into()),
                higher_is_better: false,
            },
            Quantity::CompressionRatio => NumericAttributes {
                unit: Some("×".into()),
                higher_is_better: true,
            },
        }
        .into()
    }

    fn update(&mut self, _: &(), _: &MetricMetadata) -> Result<SerializedEntry, TensorReadError> {
        let step = self.queue.lock().expect("metric queue lock").pop_front();
        // Under gradient accumulation some items end no exchange: nothing new to add.
        if let Some(step) = step {
            match self.quantity {
                Quantity::WireMegabytes => self.state.update(step.wire_bytes as f64 / 1e6, 1),
                Quantity::CompressionRatio => self
                    .state
                    .update(step.ratio(), step.wire_bytes.max(1) as usize),
            }
        }
        Ok(self.state.compute_update(self.format()))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(self.state.compute_final(self.format()))
    }

    fn clear(&mut self) {
        self.state.reset();
    }
}

impl Numeric for ExchangeMetric {
    fn value(&self) -> Option<NumericEntry> {
        Some(self.state.current_value())
    }

    fn running_value(&self) -> Option<NumericEntry> {
        Some(self.state.running_value())
    }

    fn final_value(&self) -> NumericEntry {
        self.state.final_value()
    }
}
