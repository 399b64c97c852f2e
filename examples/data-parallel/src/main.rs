//! W workers (threads, or MPI processes with `--mpi`; each with its own model replica) train an MLP on the bundled UCI digits,
//! agreeing on each step's gradient through a chosen exchange protocol. Prints per epoch the
//! held-out accuracy, the bytes each worker put on the wire, the compression ratio and the
//! modelled communication time at a chosen bandwidth and the measured training time;
//! `--compare` runs every protocol and writes SVG plots of accuracy against wire bytes, against
//! modelled time at 1 Gb/s and 10 Gb/s and against measured time, and every epoch's figures as
//! `data-parallel-epochs.csv`
//! (`--compare --workers 16` for a 16-worker cluster). `--learner` trains under burn-train's `Learner` with the `CompressedDdp` strategy
//! instead of the plain loop. `--emulate` gives the worker threads an emulated link of
//! `--bandwidth` (`run_workers_emulating`), so the measured time is the run's on such a link.
//!
//! ```text
//! cargo run --release -p data-parallel                         # QSGD, 4 workers
//! cargo run --release -p data-parallel -- --protocol powersgd
//! cargo run --release -p data-parallel -- --compare --workers 16 --out-dir .
//! cargo run --release -p data-parallel -- --learner --protocol qsgd
//! cargo run --release -p data-parallel -- --emulate --bandwidth 0.1 --protocol dense
//! cargo build --release -p data-parallel --features mpi
//! mpirun -np 4 target/release/data-parallel --mpi --protocol qsgd
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::Device;
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{Learner, SupervisedTraining, TrainingStrategy};
use clap::{Parser, ValueEnum};
use kindling_compress::powersgd::PowerSgdConfig;
use kindling_compress::{Atomo, Budget, Qsgd, Spectral, TernGrad};
use kindling_dist::*;
use kindling_examples_common::cli;
use kindling_examples_common::digits::{Digits, DigitsSet, DigitsSplit};
use kindling_examples_common::learner::DigitsBatcher;
use kindling_examples_common::mlp::Mlp;
use kindling_examples_common::plot::{ChartSpec, Series, line_chart};
use kindling_optim::EpochRenderer;
use kindling_optim::SignumConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// All-reduce mean of f32 gradients.
    Dense,
    /// QSGD, 16 levels, buckets of 512, all-gathered.
    Qsgd,
    /// TernGrad with a shared scale.
    Terngrad,
    /// 1-bit signs of each worker's momentum (β = 0.9) with majority vote: Signum with
    /// majority vote (signSGD optimizer on the votes).
    Sign,
    /// Spectral ATOMO, 2 singular atoms per layer in expectation.
    Atomo,
    /// PowerSGD, rank 2.
    Powersgd,
}

const ALL: [Protocol; 6] = [
    Protocol::Dense,
    Protocol::Qsgd,
    Protocol::Terngrad,
    Protocol::Sign,
    Protocol::Atomo,
    Protocol::Powersgd,
];

/// Compressed data-parallel training on the digits.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Args {
    /// Workers (threads; under --mpi the number of MPI processes instead).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Run as one rank of `mpirun -np W` (build with `--features mpi`).
    #[arg(long)]
    mpi: bool,
    /// The exchange protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Qsgd)]
    protocol: Protocol,
    /// Run every protocol and write the comparison plots.
    #[arg(long, conflicts_with = "learner")]
    compare: bool,
    /// Train with burn-train's `Learner` and the `CompressedDdp` strategy (burn prints the
    /// metrics, wire megabytes and compression ratio among them).
    #[arg(long)]
    learner: bool,
    /// Epochs.
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    /// Per-worker batch size.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Link bandwidth for the modelled time, in Gb/s.
    #[arg(long, default_value_t = 1.0)]
    bandwidth: f64,
    /// Give the worker threads an emulated link of --bandwidth (and 50 µs latency): every
    /// collective also takes that link's time, overlapped with the computing as on a cluster, so
    /// the wall seconds are what the run would take there (as far as this machine has a core per
    /// worker).
    #[arg(long, conflicts_with_all = ["mpi", "learner"])]
    emulate: bool,
    /// Hidden units of the MLP.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for the SVG plots of --compare and the metric logs of --learner.
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
}

/// One epoch's record: accuracy, cumulative wire bytes per worker, raw bytes per worker.
#[derive(Debug, Clone, Copy)]
struct Epoch {
    accuracy: f32,
    wire: u64,
    raw: u64,
    /// Bytes this rank's transport sent so far, headers included.
    sent: u64,
    /// Message rounds of the collectives run so far (each pays the network's latency).
    rounds: u64,
    /// Measured wall-clock seconds of training so far (this rank; evaluation excluded).
    wall: f64,
}

impl Epoch {
    /// Modelled communication seconds of all steps so far on `network`: what the transport
    /// sent and the rounds it ran.
    fn modelled_seconds(&self, network: &NetworkModel) -> f64 {
        network.seconds_sent(self.sent, self.rounds)
    }

    /// One row of the per-epoch table.
    fn row(&self, epoch: usize, network: &NetworkModel) -> String {
        format!(
            "{epoch:>5} {:>8.1}% {:>14.3} {:>7.1}× {:>16.3} {:>8.2}",
            100.0 * self.accuracy,
            self.wire as f64 / 1e6,
            self.raw as f64 / self.wire.max(1) as f64,
            self.modelled_seconds(network),
            self.wall
        )
    }
}

/// The per-epoch table's header.
const HEADER: &str = "epoch  test acc wire MB/worker    ratio  modelled comm s   wall s";

fn optimizer(protocol: Protocol) -> (ModuleOptimizer, f64) {
    match protocol {
        // The voted signs are already ±1: signSGD takes them as the step (the momentum lives in
        // each rank's vote); 3e-3 was the best of 1e-3, 3e-3, 5e-3 and 1e-2 on this task.
        Protocol::Sign => (SignumConfig::sign_sgd().init(), 3e-3),
        _ => (
            SgdConfig::new()
                .with_momentum(Some(MomentumConfig {
                    momentum: 0.9,
                    dampening: 0.0,
                    nesterov: false,
                }))
                .init(),
            0.05,
        ),
    }
}

/// Where the workers run: threads of this process, or (feature `mpi`) this process as one rank
/// of `mpirun -np W`.
enum Transport {
    Threads,
    #[cfg(feature = "mpi")]
    Mpi(Box<Mpi>),
}

impl Transport {
    fn from_args(args: &Args) -> Result<Self, DistError> {
        if args.mpi {
            Self::mpi()
        } else {
            Ok(Transport::Threads)
        }
    }

    #[cfg(feature = "mpi")]
    fn mpi() -> Result<Self, DistError> {
        Mpi::init().map(|mpi| Transport::Mpi(Box::new(mpi)))
    }

    #[cfg(not(feature = "mpi"))]
    fn mpi() -> Result<Self, DistError> {
        Err(DistError::InvalidConfig(
            "--mpi needs the example built with `--features mpi`".into(),
        ))
    }

    /// Number of workers.
    fn workers(&self, args: &Args) -> usize {
        match self {
            Transport::Threads => args.workers,
            #[cfg(feature = "mpi")]
            Transport::Mpi(mpi) => mpi.world_size(),
        }
    }

    /// Whether this process prints (rank 0 under MPI).
    fn reports(&self) -> bool {
        match self {
            Transport::Threads => true,
            #[cfg(feature = "mpi")]
            Transport::Mpi(mpi) => mpi.rank() == 0,
        }
    }
}

// ANCHOR: worker
/// One rank's training over any transport: its shard of the training set, the protocol's
/// reducer, the optimizer step on identical replicas; the per-epoch records.
fn worker<C: Communicator, R: Reducer>(
    comm: C,
    reducer: R,
    args: &Args,
    protocol: Protocol,
    split: &DigitsSplit,
    report: Option<&NetworkModel>,
) -> Result<Vec<Epoch>, DistError> {
    let device = Device::flex().autodiff();
    let rank = comm.rank();
    let per_worker = split.train.len() / comm.world_size();
    let shard = split
        .train
        .slice(rank * per_worker..(rank + 1) * per_worker);
    let mut trainer = DataParallel::new(comm, reducer, args.seed);
    // Replicas start from rank 0's weights.
    let model = Mlp::new(args.hidden, args.seed + rank as u64, &device);
    let mut model = broadcast_module(model, &mut trainer.comm, 0)?;
    let (mut optim, lr) = optimizer(protocol);
    let mut epochs = Vec::new();
    let mut wall = Duration::ZERO;
    for epoch in 1..=args.epochs {
        let started = Instant::now();
        for start in (0..per_worker).step_by(args.batch) {
            let batch = shard.slice(start..(start + args.batch).min(per_worker));
            let grads = GradientsParams::from_grads(model.loss(&batch).backward(), &model);
            model = trainer.step(model, grads, &mut optim, lr)?.0;
        }
        wall += started.elapsed();
        let record = Epoch {
            accuracy: model.accuracy(&split.test),
            wire: trainer.total.wire_bytes,
            raw: trainer.total.raw_bytes,
            sent: trainer.total.sent_bytes,
            rounds: trainer.total.rounds,
            wall: wall.as_secs_f64(),
        };
        if let (Some(network), 0) = (report, rank) {
            println!("{}", record.row(epoch, network));
        }
        epochs.push(record);
    }
    Ok(epochs)
}
// ANCHOR_END: worker

/// Something to do with a protocol's reducer, whatever its type.
trait WithReducer {
    type Output;
    fn with<R: Reducer + Clone + 'static>(
        self,
        make: impl Fn() -> R + Send + Sync + 'static,
    ) -> Self::Output;
}

/// The protocol's display name.
fn name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Dense => "dense",
        Protocol::Qsgd => "QSGD (s = 16, b = 512)",
        Protocol::Terngrad => "TernGrad (shared scale)",
        Protocol::Sign => "Signum + majority vote",
        Protocol::Atomo => "spectral ATOMO (s = 2)",
        Protocol::Powersgd => "PowerSGD (rank 2)",
    }
}

/// Runs `job` with `protocol`'s reducer; returns the protocol's display name too.
fn with_protocol<J: WithReducer>(protocol: Protocol, job: J) -> (String, J::Output) {
    let output = match protocol {
        Protocol::Dense => job.with(Dense::new),
        Protocol::Qsgd => {
            job.with(|| Gathered::new(Qsgd::new(16).unwrap().with_bucket(512).unwrap()))
        }
        Protocol::Terngrad => job.with(|| TernGradShared::new(TernGrad::new())),
        Protocol::Sign => job.with(|| {
            MajorityVote::new()
                .with_momentum(0.9)
                .expect("0.9 is a valid momentum")
        }),
        Protocol::Atomo => {
            job.with(|| Gathered::new(Atomo::new(Spectral::full(), Budget::Atoms(2.0)).unwrap()))
        }
        Protocol::Powersgd => job.with(|| PowerSgd::new(PowerSgdConfig::new(2).unwrap())),
    };
    (name(protocol).to_string(), output)
}

/// The plain loop on every worker; rank 0's epochs (this rank's under MPI).
struct PlainLoop<'a> {
    args: &'a Args,
    transport: &'a mut Transport,
    protocol: Protocol,
    /// Where rank 0 prints its rows as the epochs finish (`None`: silent).
    report: Option<&'a NetworkModel>,
}

impl WithReducer for PlainLoop<'_> {
    type Output = Result<Vec<Epoch>, DistError>;

    fn with<R: Reducer + Clone + 'static>(
        self,
        make: impl Fn() -> R + Send + Sync + 'static,
    ) -> Self::Output {
        let Self {
            args,
            transport,
            protocol,
            report,
        } = self;
        let split = Digits::load()
            .map_err(|e| DistError::InvalidConfig(format!("the bundled digits: {e}")))?
            .split(0.25, args.seed, &Device::flex().autodiff());
        match transport {
            Transport::Threads => {
                // Workers own what they use (a worker that hangs is abandoned, not joined).
                let (shared, report) = (args.clone(), report.copied());
                let timeout = Duration::from_secs(600);
                let work =
                    move |group| worker(group, make(), &shared, protocol, &split, report.as_ref());
                let epochs = if args.emulate {
                    run_workers_emulating(network(args.workers, args.bandwidth), timeout, work)
                } else {
                    run_workers(args.workers, timeout, work)
                }?;
                Ok(epochs.into_iter().next().expect("rank 0"))
            }
            #[cfg(feature = "mpi")]
            Transport::Mpi(mpi) => worker(&mut **mpi, make(), args, protocol, &split, report),
        }
    }
}

fn run(
    args: &Args,
    transport: &mut Transport,
    protocol: Protocol,
) -> Result<(String, Vec<Epoch>), String> {
    let start = Instant::now();
    let workers = transport.workers(args);
    let network = network(workers, args.bandwidth);
    let report = transport.reports().then_some(&network);
    if report.is_some() {
        println!("\n{} — {workers} workers\n{HEADER}", name(protocol));
    }
    let job = PlainLoop {
        args,
        transport: &mut *transport,
        protocol,
        report,
    };
    let (name, epochs) = with_protocol(protocol, job);
    let epochs = epochs.map_err(|e| e.to_string())?;
    if report.is_some() {
        println!("{:.1}s", start.elapsed().as_secs_f64());
    }
    Ok((name, epochs))
}

/// `--learner`: the same training under burn-train's `Learner`.
struct WithLearner<'a> {
    args: &'a Args,
    transport: Transport,
    protocol: Protocol,
}

impl WithReducer for WithLearner<'_> {
    type Output = Result<(), String>;

    fn with<R: Reducer + Clone + 'static>(
        self,
        make: impl Fn() -> R + Send + Sync + 'static,
    ) -> Self::Output {
        let device = Device::flex().autodiff();
        let report = self.transport.reports();
        let (strategy, dir) = match self.transport {
            Transport::Threads => (
                CompressedDdp::new(vec![device.clone(); self.args.workers], make())
                    .map_err(|e| e.to_string())?,
                self.args.out_dir.join("data-parallel-learner"),
            ),
            #[cfg(feature = "mpi")]
            Transport::Mpi(mpi) => {
                let dir = format!("data-parallel-learner-rank{}", mpi.rank());
                (
                    CompressedDdp::with_communicator(*mpi, device.clone(), make()),
                    self.args.out_dir.join(dir),
                )
            }
        };
        learner_train(
            self.args,
            strategy.seed(self.args.seed),
            self.protocol,
            &dir,
            report,
        )
    }
}

// ANCHOR: learner
/// Trains the MLP with burn-train's `Learner`, the workers run by a `CompressedDdp` strategy:
/// burn shows the loss, the held-out accuracy and the exchange's metrics as it goes.
fn learner_train<R: Reducer + Clone + 'static>(
    args: &Args,
    strategy: CompressedDdp<R>,
    protocol: Protocol,
    dir: &Path,
    report: bool,
) -> Result<(), String> {
    let digits = Digits::load().map_err(|e| e.to_string())?;
    let (train, valid) = digits.split_indices(0.25, args.seed);
    // `batch` is per worker: the strategy gives each worker its own shard of the items.
    let loader = |indices: &[usize]| -> Arc<dyn DataLoader<DigitsSet>> {
        DataLoaderBuilder::new(DigitsBatcher)
            .batch_size(args.batch)
            .shuffle(args.seed)
            .build(InMemDataset::new(digits.items(indices)))
    };
    let ddp = Arc::new(strategy);
    let (optim, lr) = optimizer(protocol);
    let model = Mlp::new(args.hidden, args.seed, &Device::flex().autodiff());
    let result = SupervisedTraining::new(dir, loader(&train), loader(&valid))
        .num_epochs(args.epochs)
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(AccuracyMetric::new())
        .metric_train_numeric(ExchangeMetric::wire_megabytes(&ddp))
        .metric_train_numeric(ExchangeMetric::compression_ratio(&ddp))
        .with_training_strategy(TrainingStrategy::Custom(ddp.clone()))
        .renderer(Box::new(EpochRenderer::new()))
        .launch(Learner::new(model, optim, lr));
    if let Some(error) = result.error {
        return Err(error.to_string());
    }
    if !report {
        return Ok(());
    }
    let test = digits.subset(&valid, &Device::flex());
    let totals = ddp.totals();
    println!(
        "held-out accuracy {:.1}%, {:.3} MB sent per worker, {:.1}× less than dense",
        100.0 * result.model.fork(&Device::flex()).accuracy(&test),
        totals.wire_bytes as f64 / 1e6,
        totals.ratio()
    );
    Ok(())
}
// ANCHOR_END: learner

/// Every argument, checked before any work.
fn check(args: &Args) -> cli::Outcome {
    if args.mpi && cfg!(not(feature = "mpi")) {
        return Err("--mpi needs the example built with `--features mpi`".into());
    }
    cli::between("--workers", args.workers, 1, 256)?;
    cli::at_least("--epochs", args.epochs, 1)?;
    cli::at_least("--batch", args.batch, 1)?;
    cli::positive("--bandwidth", args.bandwidth)?;
    cli::at_least("--hidden", args.hidden, 1)?;
    if args.compare || args.learner {
        cli::output_dir("--out-dir", &args.out_dir)?;
    }
    Ok(())
}

/// The cluster model the tables and plots use: `gbps` links, 50 µs latency, charged on the bytes
/// and rounds each transport counted (so the topology, which only `NetworkModel::seconds` uses,
/// is not read).
fn network(workers: usize, gbps: f64) -> NetworkModel {
    NetworkModel::new(workers, gbps * 1e9, 50e-6, Topology::AllGather)
        .expect("workers ≥ 1 and a finite positive bandwidth were checked")
}

fn main() {
    cli::run(check, train);
}

fn train(args: Args) -> cli::Outcome {
    let mut transport = Transport::from_args(&args).map_err(|e| e.to_string())?;
    if args.learner {
        let job = WithLearner {
            args: &args,
            transport,
            protocol: args.protocol,
        };
        if let (name, Err(e)) = with_protocol(args.protocol, job) {
            return Err(format!("training with {name} failed: {e}"));
        }
        return Ok(());
    }
    if !args.compare {
        run(&args, &mut transport, args.protocol).map_err(|e| format!("training failed: {e}"))?;
        return Ok(());
    }
    let mut results = Vec::new();
    for protocol in ALL {
        let (name, epochs) = run(&args, &mut transport, protocol)
            .map_err(|e| format!("{protocol:?} failed: {e}"))?;
        results.push((protocol, name, epochs));
    }
    if !transport.reports() {
        return Ok(());
    }
    let workers = transport.workers(&args);
    // Every epoch of every protocol, for scripts (scripts/real-links.sh reads it).
    let mut csv = String::from("protocol,epoch,accuracy,wire_mb,modelled_s,wall_s\n");
    for (protocol, _, epochs) in &results {
        let network = network(workers, args.bandwidth);
        for (e, x) in epochs.iter().enumerate() {
            csv.push_str(&format!(
                "{protocol:?},{},{},{},{},{}\n",
                e + 1,
                x.accuracy,
                x.wire as f64 / 1e6,
                x.modelled_seconds(&network),
                x.wall
            ));
        }
    }
    let path = args.out_dir.join("data-parallel-epochs.csv");
    std::fs::write(&path, csv).map_err(|e| format!("{}: {e}", path.display()))?;
    let plot = |file: &str, title: String, x_label: &str, x: &dyn Fn(Protocol, &Epoch) -> f64| {
        let series: Vec<Series> = results
            .iter()
            .map(|(protocol, name, epochs)| {
                let points = epochs
                    .iter()
                    .map(|e| (x(*protocol, e), e.accuracy as f64))
                    .collect();
                Series::new(name.clone(), points)
            })
            .collect();
        let spec = ChartSpec {
            title,
            x_label: x_label.into(),
            y_label: "held-out accuracy".into(),
            log_x: true,
            ..Default::default()
        };
        let path = args.out_dir.join(file);
        line_chart(&path, &spec, &series).map_err(|e| format!("{}: {e}", path.display()))
    };
    plot(
        "data-parallel-bytes.svg",
        format!("Digits MLP, {workers} workers: accuracy against bytes sent per worker"),
        "MB sent per worker",
        &|_, e| e.wire as f64 / 1e6,
    )?;
    for gbps in [1.0, 10.0] {
        plot(
            &format!("data-parallel-time-{gbps}gbps.svg"),
            format!(
                "Accuracy against modelled communication time, {workers} workers at {gbps} Gb/s"
            ),
            "modelled communication seconds",
            &|_, e| e.modelled_seconds(&network(workers, gbps)),
        )?;
    }
    plot(
        "data-parallel-wall.svg",
        format!("Accuracy against measured training time, {workers} workers"),
        "wall-clock seconds of training (rank 0)",
        &|_, e| e.wall,
    )?;
    println!("\nplots written to {}", args.out_dir.display());
    Ok(())
}
