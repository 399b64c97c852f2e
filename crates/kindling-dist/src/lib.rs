//! Compressed data-parallel training for [burn](https://burn.dev) 0.22. For burn users who train
//! one model on several workers and want the gradient exchange — the part that crosses the
//! network — compressed with `kindling-compress` codecs, without the replicas ever drifting.
//!
//! burn 0.22 synchronises gradients only on CUDA (NCCL) within one process, has no CPU
//! collectives and no hook for compression, so this crate owns the exchange:
//!
//! * transports implement [`Communicator`] (rank, world size, all-reduce, all-gather of
//!   variable-size byte payloads, broadcast, barrier, exact byte counters). [`LocalGroup`] runs W
//!   workers as threads of one process with a timeout, so a dead worker is an error on every rank,
//!   never a hang; `Mpi` (feature `mpi`) runs one process per rank under `mpirun`, on one
//!   machine or many. (A CUDA user with burn's `cuda` feature can add a transport whose
//!   `all_reduce_sum` calls `burn::tensor::distributed::all_reduce` on NCCL.)
//! * exchange protocols implement [`Reducer`]: [`Dense`] (all-reduce mean), [`Gathered`] (any
//!   codec: all-gather, decode, mean), [`MajorityVote`] (1-bit signs), [`TernGradShared`] (shared
//!   scale), [`PowerSgd`] (two all-reduce rounds, error feedback, warm start). After every step
//!   every rank holds bit-identical parameters.
//! * [`DataParallel`] is one rank's trainer for a plain loop, [`run_workers`] spawns a group
//!   ([`run_workers_emulating`] one whose collectives take a modelled link's time), and
//!   [`NetworkModel`] turns byte counts into modelled cluster time; [`ReducerCheckpoint`] saves
//!   a rank's exchange state.
//! * `CompressedDdp` (feature `train`, on by default) is a burn-train `TrainingStrategy::Custom`
//!   strategy running the same protocols under a `Learner`, and `ExchangeMetric` reports wire
//!   bytes and compression ratio as burn-train metrics.
//!
//! ```
//! use std::time::Duration;
//! use burn::module::Param;
//! use burn::nn::Linear;
//! use burn::optim::{GradientsParams, SgdConfig};
//! use burn::tensor::{Device, Tensor, TensorData};
//! use kindling_compress::Qsgd;
//! use kindling_dist::{Communicator, DataParallel, Gathered, fingerprint, run_workers};
//!
//! let fingerprints = run_workers(4, Duration::from_secs(30), |group| {
//!     let device = Device::flex().autodiff();
//!     let mut model = Linear { weight: Param::from_data(TensorData::new(vec![0.0f32; 4], [4, 1]), &device), bias: None };
//!     let mut trainer = DataParallel::new(group, Gathered::new(Qsgd::new(4).unwrap()), 7);
//!     let mut optim = SgdConfig::new().init();
//!     for step in 0..3 {
//!         // each rank sees its own shard of the data
//!         let x = Tensor::<2>::ones([8, 4], &device).mul_scalar((trainer.comm.rank() + step) as f32);
//!         let grads = GradientsParams::from_grads(model.forward(x).sum().backward(), &model);
//!         model = trainer.step(model, grads, &mut optim, 0.01)?.0;
//!     }
//!     Ok(fingerprint(&model))
//! })
//! .unwrap();
//! assert!(fingerprints.windows(2).all(|w| w[0] == w[1]), "replicas are bit-identical");
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod checkpoint;
mod comm;
mod error;
#[cfg(feature = "mpi")]
mod mpi_transport;
mod network;
mod parallel;
mod reduce;
#[cfg(feature = "train")]
mod train;
mod walk;

pub use checkpoint::ReducerCheckpoint;
pub use comm::{Aborter, Communicator, LocalGroup, Received, Shared, Traffic};
pub use error::DistError;
#[cfg(feature = "mpi")]
#[cfg_attr(docsrs, doc(cfg(feature = "mpi")))]
pub use mpi_transport::Mpi;
pub use network::{NetworkModel, Topology};
pub use parallel::{
    DataParallel, broadcast_module, fingerprint, run_workers, run_workers_emulating,
};
pub use reduce::{
    DEFAULT_BUCKET_BYTES, Dense, Gathered, MajorityVote, PowerSgd, Reducer, StepStats,
    TernGradShared,
};
#[cfg(feature = "train")]
#[cfg_attr(docsrs, doc(cfg(feature = "train")))]
pub use train::{CompressedDdp, ExchangeMetric};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
