//! Shared by the transport tests (threads and MPI): digits shards, one rank's training loop and
//! the list of protocols.

use std::time::Duration;

use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use kindling_compress::powersgd::PowerSgdConfig;
use kindling_compress::{Atomo, Budget, Count, ErrorFeedback, Qsgd, Spectral, TernGrad, TopK};
use kindling_dist::*;
use kindling_examples_common::digits::{Digits, DigitsSet};
use kindling_examples_common::mlp::Mlp;

/// How long a `LocalGroup` collective waits for the slowest rank.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The digits training set cut into `world` equal shards, and the test set.
pub fn shards(world: usize) -> (Vec<DigitsSet>, DigitsSet) {
    let device = kindling_testing::autodiff_device();
    let split = Digits::load().unwrap().split(0.25, 0, &device);
    let n = split.train.len() / world;
    (
        (0..world)
            .map(|r| split.train.slice(r * n..(r + 1) * n))
            .collect(),
        split.test,
    )
}

/// One rank of `steps` full-shard steps of the digits MLP over `comm` with `reducer`: the
/// replicas start from different initialisations made identical by a broadcast. Returns the
/// model's fingerprint after each step and the final test accuracy.
#[allow(clippy::too_many_arguments)]
pub fn train_rank<C: Communicator, R: Reducer>(
    comm: C,
    reducer: R,
    data: &[DigitsSet],
    test: &DigitsSet,
    steps: usize,
    lr: f64,
    mut optim: ModuleOptimizer,
    tamper: impl Fn(usize, GradientsParams, &Mlp) -> GradientsParams,
) -> Result<(Vec<u64>, f32), DistError> {
    let device = kindling_testing::autodiff_device();
    let rank = comm.rank();
    let mut trainer = DataParallel::new(comm, reducer, 3);
    let mut model = broadcast_module(Mlp::new(32, rank as u64, &device), &mut trainer.comm, 0)?;
    let mut prints = Vec::new();
    for _ in 0..steps {
        let grads = GradientsParams::from_grads(model.loss(&data[rank]).backward(), &model);
        let grads = tamper(rank, grads, &model);
        model = trainer.step(model, grads, &mut optim, lr)?.0;
        prints.push(fingerprint(&model));
    }
    Ok((prints, model.accuracy(test)))
}

/// A transport that corrupts rank `victim`'s bucket messages (all-gathers over 16 bytes: a
/// TernGrad scale passes intact) on the wire: the first byte of the first payload's header, just
/// after its 4-byte length, is flipped.
pub struct Corrupting<C> {
    /// The real transport.
    pub inner: C,
    /// The rank whose payloads arrive corrupt.
    pub victim: usize,
}

impl<C: Communicator> Communicator for Corrupting<C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_reduce_sum(&mut self, v: &mut [f32]) -> Result<(), DistError> {
        self.inner.all_reduce_sum(v)
    }
    fn all_gather_borrowed(&mut self, payload: &[u8]) -> Result<Received<'_>, DistError> {
        let mut message = payload.to_vec();
        if self.rank() == self.victim && message.len() > 16 {
            message[4] ^= 0xFF;
        }
        self.inner.all_gather_borrowed(&message)
    }
    fn fail(&mut self, reason: &str) {
        self.inner.fail(reason)
    }
    fn shares_memory(&self) -> bool {
        self.inner.shares_memory()
    }
    fn share(&mut self, value: Shared) -> Result<Vec<Shared>, DistError> {
        self.inner.share(value)
    }
    fn broadcast(&mut self, b: Vec<u8>, root: usize) -> Result<Vec<u8>, DistError> {
        self.inner.broadcast(b, root)
    }
    fn barrier(&mut self) -> Result<(), DistError> {
        self.inner.barrier()
    }
    fn traffic(&self) -> Traffic {
        self.inner.traffic()
    }
}

/// Every gradient of `m` multiplied by `c` (NaN or a huge `c` poisons them).
pub fn scale(g: GradientsParams, m: &Mlp, c: f64) -> GradientsParams {
    kindling_optim::grads::scale(m, &g, c)
}

/// Gradients as computed.
pub fn no_tamper(_: usize, g: GradientsParams, _: &Mlp) -> GradientsParams {
    g
}

/// Plain SGD.
pub fn sgd() -> ModuleOptimizer {
    SgdConfig::new().init()
}

/// Something to do with each protocol (a generic method, since reducers are generic).
pub trait EachProtocol {
    /// Called once per protocol with its name and a constructor.
    fn visit<R: Reducer + 'static>(
        &mut self,
        name: &str,
        make: impl Fn() -> R + Send + Sync + 'static,
    );
}

/// Every protocol: dense, gathered codecs (QSGD, error-feedback top-k, spectral ATOMO), majority
/// vote (on gradients, and on momenta), TernGrad with a shared scale, PowerSGD.
pub fn each_protocol(v: &mut impl EachProtocol) {
    v.visit("dense", Dense::new);
    v.visit("qsgd", || Gathered::new(Qsgd::new(4).unwrap()));
    v.visit("ef top-k", || {
        Gathered::new(ErrorFeedback::new(TopK::new(Count::Fraction(0.1)).unwrap()))
    });
    v.visit("spectral atomo", || {
        Gathered::new(Atomo::new(Spectral::full(), Budget::Atoms(2.0)).unwrap())
    });
    v.visit("majority vote", MajorityVote::new);
    v.visit("signum majority vote", || {
        MajorityVote::new().with_momentum(0.9).unwrap()
    });
    v.visit("terngrad shared", || TernGradShared::new(TernGrad::new()));
    v.visit("powersgd", || {
        PowerSgd::new(PowerSgdConfig::new(2).unwrap())
    });
}
