//! Exchange protocols: what a group of workers does with one step's gradients so that every rank
//! ends with the same aggregated gradient.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use kindling_compress::powersgd::{PowerSgd as PowerSgdState, PowerSgdConfig, Started};
use kindling_compress::{
    CompressError, Compressor, Payload, PayloadRef, Sign, TernGrad, is_host_device, majority_vote,
    majority_vote_into, matrix_view,
};
use rand::rngs::ChaCha8Rng;

use crate::walk::{
    Decode, Encode, Entry, Exchanged, Part, assemble, encode_all, pipeline, walk_bucketed,
};
use crate::{Communicator, DistError};

/// The default bucket size of the bucketed protocols: 25 MiB of gradient, as PyTorch DDP's
/// `bucket_cap_mb`. Buckets are measured in gradient bytes (4 per entry) whatever the codec puts
/// on the wire, and a step's first bucket closes at 1 MiB, as DDP's, so that the wire starts
/// early.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// `bytes` as a bucket size, or an error naming the field.
fn bucket_size(bytes: usize) -> Result<usize, DistError> {
    if bytes == 0 {
        return Err(DistError::InvalidConfig(
            "bucket_bytes: a bucket must hold at least one byte".into(),
        ));
    }
    Ok(bytes)
}

/// Sizes and times of one exchange (or, accumulated, of many).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    /// What dense f32 gradients would take: 4 bytes per entry.
    pub raw_bytes: u64,
    /// What this rank put on the wire: its payloads (or dense floats) for the step.
    pub wire_bytes: u64,
    /// Time spent encoding (for [`Dense`], reading the gradients into host memory).
    pub encode: Duration,
    /// Time spent decoding and averaging (for [`Dense`], making the averaged tensors).
    pub decode: Duration,
    /// Time spent in collectives (waiting for the others included).
    pub exchange: Duration,
    /// Collectives run (one per bucket and round; each pays the network's latency).
    pub collectives: u64,
    /// Bytes this rank's transport sent for the step, headers and protocol overhead included
    /// ([`Traffic::sent`](crate::Traffic)).
    pub sent_bytes: u64,
    /// Message rounds of the step's collectives as the transport ran them
    /// ([`Traffic::rounds`](crate::Traffic)).
    pub rounds: u64,
}

impl StepStats {
    /// `raw / wire`.
    pub fn ratio(&self) -> f64 {
        self.raw_bytes as f64 / self.wire_bytes.max(1) as f64
    }

    /// Adds another step.
    pub fn add(&mut self, other: &StepStats) {
        self.raw_bytes += other.raw_bytes;
        self.wire_bytes += other.wire_bytes;
        self.encode += other.encode;
        self.decode += other.decode;
        self.exchange += other.exchange;
        self.collectives += other.collectives;
        self.sent_bytes += other.sent_bytes;
        self.rounds += other.rounds;
    }
}

/// An exchange protocol. `reduce` is called by every rank with its local gradients and returns
/// the aggregated gradients, bit-identical on every rank.
pub trait Reducer: Send {
    /// A short name for reports.
    fn name(&self) -> String;

    /// The protocol and its configuration, as recorded in a
    /// [`ReducerCheckpoint`](crate::ReducerCheckpoint): restoring a checkpoint into a reducer
    /// with another identity is an error. The default is [`name`](Self::name); protocols with settings add them.
    fn identity(&self) -> String {
        self.name()
    }

    /// Agrees on the gradients of every float parameter of `module` (in module order).
    fn reduce<M: Module>(
        &mut self,
        module: &M,
        grads: GradientsParams,
        comm: &mut dyn Communicator,
        rng: &mut ChaCha8Rng,
    ) -> Result<(GradientsParams, StepStats), DistError>;

    /// The protocol's state (error-feedback residuals, warm-start matrices) as named f32
    /// buffers, for checkpoints.
    fn state(&self) -> Vec<(String, Vec<f32>)> {
        Vec::new()
    }

    /// Restores a state saved with [`state`](Self::state).
    fn load_state(
        &mut self,
        _state: Vec<(String, Vec<f32>)>,
        _device: &Device,
    ) -> Result<(), DistError> {
        Ok(())
    }
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec()
        .expect("gradient values")
}

fn tensor<const D: usize>(values: Vec<f32>, dims: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, dims), device)
}

fn timed<T>(clock: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    *clock += start.elapsed();
    out
}

/// An encoder's error, as the error of rank `rank`'s parameter `param`.
fn encode_failed(rank: usize, param: usize) -> impl Fn(CompressError) -> DistError {
    move |e| DistError::Encode {
        rank,
        param,
        reason: e.to_string(),
    }
}

/// One tensor's payload as its bucket part: `encode` timed, the tensor's `entries` and the
/// payload (plus `extra_wire` bytes sent beside it) counted.
fn payload_part(
    stats: &mut StepStats,
    (rank, param): (usize, usize),
    entries: usize,
    extra_wire: u64,
    encode: impl FnOnce() -> Result<Payload, CompressError>,
) -> Result<Part, DistError> {
    let payload = timed(&mut stats.encode, encode).map_err(encode_failed(rank, param))?;
    stats.raw_bytes += 4 * entries as u64;
    stats.wire_bytes += payload.wire_bytes() as u64 + extra_wire;
    Ok(Part::Bytes(payload.into_bytes()))
}

/// The baseline: all-reduce mean of the dense f32 gradients, packed into buckets of
/// [`DEFAULT_BUCKET_BYTES`] (one all-reduce per bucket, not per tensor; the sums are the same
/// whatever the bucket size).
#[derive(Debug, Clone)]
pub struct Dense {
    bucket_bytes: usize,
}

impl Default for Dense {
    fn default() -> Self {
        Self {
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        }
    }
}

impl Dense {
    /// With the default bucket size.
    pub fn new() -> Self {
        Self::default()
    }

    /// Buckets of `bytes` of gradient (a bucket closes once its tensors hold that many bytes; a
    /// larger tensor is a bucket of its own, so 1 means one all-reduce per tensor; the first
    /// closes at 1 MiB if that is smaller). Zero is rejected.
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Result<Self, DistError> {
        self.bucket_bytes = bucket_size(bytes)?;
        Ok(self)
    }
}

struct DenseOp {
    stats: StepStats,
}

impl Encode for DenseOp {
    fn encode<const D: usize>(&mut self, _: usize, grad: Tensor<D>) -> Result<Part, DistError> {
        let values = timed(&mut self.stats.encode, || host(grad));
        let bytes = 4 * values.len() as u64;
        self.stats.raw_bytes += bytes;
        self.stats.wire_bytes += bytes;
        Ok(Part::Floats(values))
    }
}

impl Decode for DenseOp {
    fn decode_clock(&mut self) -> &mut Duration {
        &mut self.stats.decode
    }

    fn decode(
        &self,
        _: usize,
        _: &[usize],
        device: &Device,
        exchanged: Exchanged<'_>,
    ) -> Result<Tensor<1>, DistError> {
        let Exchanged::Mean(mean) = exchanged else {
            unreachable!("dense parts are floats")
        };
        let n = mean.len();
        Ok(tensor(mean, [n], device))
    }
}

impl Reducer for Dense {
    fn name(&self) -> String {
        "dense".into()
    }

    fn reduce<M: Module>(
        &mut self,
        module: &M,
        grads: GradientsParams,
        comm: &mut dyn Communicator,
        _rng: &mut ChaCha8Rng,
    ) -> Result<(GradientsParams, StepStats), DistError> {
        let mut op = DenseOp {
            stats: StepStats::default(),
        };
        let (out, exchange) = walk_bucketed(module, grads, &mut op, comm, self.bucket_bytes)?;
        op.stats.exchange += exchange;
        Ok((out, op.stats))
    }
}

/// Decodes every rank's payload for one parameter (of shape `dims`) and averages them, flat
/// (rank order, so every rank gets the same bits). On a host device each payload is decoded
/// straight from its receive buffer into one accumulator (`decode_add` with weight `1/W`),
/// which becomes the tensor; on other devices the payloads are decoded on the device and summed
/// there.
fn decode_mean<C: Compressor>(
    codec: &C,
    payloads: &[&[u8]],
    index: usize,
    dims: &[usize],
    device: &Device,
) -> Result<Tensor<1>, DistError> {
    let world = payloads.len();
    let n: usize = dims.iter().product();
    let fail = |rank: usize, reason: String| DistError::Decode {
        rank,
        param: index,
        reason,
    };
    if is_host_device(device) {
        let mut mean = vec![0.0f32; n];
        let weight = 1.0 / world as f32;
        for (rank, bytes) in payloads.iter().enumerate() {
            let payload =
                PayloadRef::parse_expecting(bytes, dims).map_err(|e| fail(rank, e.to_string()))?;
            codec
                .decode_add(&payload, weight, &mut mean)
                .map_err(|e| fail(rank, e.to_string()))?;
        }
        return Ok(tensor(mean, [n], device));
    }
    let mut sum: Option<Tensor<1>> = None;
    for (rank, bytes) in payloads.iter().enumerate() {
        let payload = Payload::from_bytes_expecting(bytes.to_vec(), dims)
            .map_err(|e| fail(rank, e.to_string()))?;
        let t = decompress_flat(codec, &payload, device).map_err(|e| fail(rank, e))?;
        sum = Some(match sum {
            Some(s) => s + t,
            None => t,
        });
    }
    Ok(sum
        .expect("a group has at least one rank")
        .div_scalar(world as f64))
}

/// Decodes `payload` on `device` in its own rank, flattened.
fn decompress_flat<C: Compressor>(
    codec: &C,
    payload: &Payload,
    device: &Device,
) -> Result<Tensor<1>, String> {
    let n = payload.header().numel();
    let flat = match payload.header().shape.len() {
        1 => codec.decompress::<1>(payload, device),
        2 => codec
            .decompress::<2>(payload, device)
            .map(|t| t.reshape([n])),
        3 => codec
            .decompress::<3>(payload, device)
            .map(|t| t.reshape([n])),
        4 => codec
            .decompress::<4>(payload, device)
            .map(|t| t.reshape([n])),
        5 => codec
            .decompress::<5>(payload, device)
            .map(|t| t.reshape([n])),
        6 => codec
            .decompress::<6>(payload, device)
            .map(|t| t.reshape([n])),
        rank => {
            return Err(format!(
                "tensors of rank {rank} are not supported (1 to 6 are)"
            ));
        }
    };
    flat.map_err(|e| e.to_string())
}

/// Any codec: each rank encodes its gradient, the payloads are all-gathered, and every rank
/// decodes all of them and averages (unbiased codecs give an unbiased mean). The codec is cloned
/// per parameter, so stateful codecs ([`ErrorFeedback`](kindling_compress::ErrorFeedback)) keep
/// one residual per parameter. The payloads of a step travel in buckets of
/// [`DEFAULT_BUCKET_BYTES`] (one all-gather per bucket, each payload framed by its length); the
/// result is the same whatever the bucket size. In a group whose ranks
/// [share memory](Communicator::shares_memory) each tensor's payloads are decoded by one rank
/// and the mean handed to the others, with the same bits.
#[derive(Debug, Clone)]
pub struct Gathered<C> {
    prototype: C,
    codecs: HashMap<usize, C>,
    name: String,
    bucket_bytes: usize,
}

impl<C: Compressor + Clone + Send> Gathered<C> {
    /// The protocol for `codec`, named after it in reports (`codec.name()`: "qsgd", "error
    /// feedback + top-k", …).
    pub fn new(codec: C) -> Self {
        Self {
            name: codec.name(),
            prototype: codec,
            codecs: HashMap::new(),
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        }
    }

    /// Buckets of `bytes` of gradient (a bucket closes once its tensors hold that many bytes of
    /// f32 gradient, whatever their payloads weigh; a larger tensor is a bucket of its own, so 1
    /// means one all-gather per tensor; the first closes at 1 MiB if that is smaller). Zero is
    /// rejected.
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Result<Self, DistError> {
        self.bucket_bytes = bucket_size(bytes)?;
        Ok(self)
    }

    /// The same protocol under another name in reports.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

struct GatherOp<'a, C> {
    codecs: &'a mut HashMap<usize, C>,
    prototype: &'a C,
    rank: usize,
    rng: &'a mut ChaCha8Rng,
    stats: StepStats,
}

impl<C: Compressor + Clone> Encode for GatherOp<'_, C> {
    fn encode<const D: usize>(&mut self, index: usize, grad: Tensor<D>) -> Result<Part, DistError> {
        let entries = grad.dims().iter().product::<usize>();
        let codec = self
            .codecs
            .entry(index)
            .or_insert_with(|| self.prototype.clone());
        let rng = &mut *self.rng;
        payload_part(&mut self.stats, (self.rank, index), entries, 0, || {
            codec.compress(grad, rng)
        })
    }
}

impl<C: Compressor + Clone + Send + Sync> Decode for GatherOp<'_, C> {
    const PARALLEL: bool = true;

    fn decode_clock(&mut self) -> &mut Duration {
        &mut self.stats.decode
    }

    fn decode(
        &self,
        index: usize,
        dims: &[usize],
        device: &Device,
        exchanged: Exchanged<'_>,
    ) -> Result<Tensor<1>, DistError> {
        let Exchanged::Gathered(payloads) = exchanged else {
            unreachable!("gathered parts are payloads")
        };
        decode_mean(&self.codecs[&index], &payloads, index, dims, device)
    }
}

impl<C: Compressor + Clone + Send + Sync + core::fmt::Debug> Reducer for Gathered<C> {
    fn name(&self) -> String {
        self.name.clone()
    }

    /// The name and the codec's configuration (its `Debug` form, before any state).
    fn identity(&self) -> String {
        format!("{}: {:?}", self.prototype.name(), self.prototype)
    }

    fn reduce<M: Module>(
        &mut self,
        module: &M,
        grads: GradientsParams,
        comm: &mut dyn Communicator,
        rng: &mut ChaCha8Rng,
    ) -> Result<(GradientsParams, StepStats), DistError> {
        let mut op = GatherOp {
            codecs: &mut self.codecs,
            prototype: &self.prototype,
            rank: comm.rank(),
            rng,
            stats: StepStats::default(),
        };
        let (out, exchange) = walk_bucketed(module, grads, &mut op, comm, self.bucket_bytes)?;
        op.stats.exchange += exchange;
        Ok((out, op.stats))
    }

    /// Each parameter's codec state (error-feedback residuals) as `"{index}.state"` and its
    /// shape as `"{index}.shape"` (exact in f32 below 2²⁴ per dimension).
    fn state(&self) -> Vec<(String, Vec<f32>)> {
        let mut keys: Vec<&usize> = self.codecs.keys().collect();
        keys.sort();
        keys.into_iter()
            .filter_map(|k| self.codecs[k].state().map(|s| (k, s)))
            .flat_map(|(k, (values, shape))| {
                [
                    (format!("{k}.state"), values),
                    (
                        format!("{k}.shape"),
                        shape.iter().map(|&d| d as f32).collect(),
                    ),
                ]
            })
            .collect()
    }

    fn load_state(
        &mut self,
        state: Vec<(String, Vec<f32>)>,
        device: &Device,
    ) -> Result<(), DistError> {
        let map: HashMap<String, Vec<f32>> = state.into_iter().collect();
        let bad = |what: String| DistError::Protocol(format!("{} state: {what}", self.name));
        let mut codecs = HashMap::new();
        for key in map.keys().filter_map(|k| k.strip_suffix(".state")) {
            let index: usize = key.parse().map_err(|_| bad(format!("key {key:?}")))?;
            let shape = map
                .get(&format!("{key}.shape"))
                .ok_or_else(|| bad(format!("no shape for parameter {key}")))?
                .iter()
                .map(|&d| d as usize)
                .collect();
            let mut codec = self.prototype.clone();
            codec
                .load_state(map[&format!("{key}.state")].clone(), shape, device)
                .map_err(|e| bad(format!("parameter {key}: {e}")))?;
            codecs.insert(index, codec);
        }
        self.codecs = codecs;
        Ok(())
    }
}

/// signSGD with majority vote: 1-bit sign payloads are all-gathered and every rank takes
/// `sign(Σ_m sign(v_m))`, ties → +1, where `v_m` is rank `m`'s gradient, or with
/// [`with_momentum`](Self::with_momentum) its momentum `v ← β·v + (1 − β)·g` (Signum with
/// majority vote, Algorithm 1 of Bernstein, Zhao, Azizzadenesheli & Anandkumar, *signSGD with
/// Majority Vote is Communication Efficient and Fault Tolerant*, ICLR 2019,
/// <https://arxiv.org/abs/1810.05291>: each worker keeps its own momentum and sends its sign).
/// The optimizer's learning rate is the step length (use signSGD, `SignumConfig::sign_sgd()`,
/// on the voted signs). Each tensor is signed flat (its payload's shape is its entry count),
/// and the payloads travel in buckets of [`DEFAULT_BUCKET_BYTES`].
#[derive(Debug, Clone)]
pub struct MajorityVote {
    bucket_bytes: usize,
    /// β; 0 votes on the gradients themselves.
    momentum: f32,
    /// Each parameter's momentum `v`, flat, by parameter index.
    buffers: HashMap<usize, Tensor<1>>,
}

impl Default for MajorityVote {
    fn default() -> Self {
        Self {
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            momentum: 0.0,
            buffers: HashMap::new(),
        }
    }
}

impl MajorityVote {
    /// With the default bucket size, voting on the gradients (no momentum).
    pub fn new() -> Self {
        Self::default()
    }

    /// Buckets of `bytes` of gradient, as [`Gathered::with_bucket_bytes`] (1 means one
    /// all-gather per tensor). Zero is rejected.
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Result<Self, DistError> {
        self.bucket_bytes = bucket_size(bytes)?;
        Ok(self)
    }

    /// Each rank votes with the sign of its momentum `v ← β·v + (1 − β)·g` (`v` starts at 0),
    /// as in the paper's Signum with majority vote (which uses β = 0.9). `beta` must be in
    /// `[0, 1)`; 0 is plain signSGD with majority vote.
    pub fn with_momentum(mut self, beta: f32) -> Result<Self, DistError> {
        if !(0.0..1.0).contains(&beta) {
            return Err(DistError::InvalidConfig(format!(
                "MajorityVote: momentum = {beta} is invalid: it must be in [0, 1)"
            )));
        }
        self.momentum = beta;
        Ok(self)
    }
}

struct VoteOp<'a> {
    rank: usize,
    rng: &'a mut ChaCha8Rng,
    stats: StepStats,
    momentum: f32,
    buffers: &'a mut HashMap<usize, Tensor<1>>,
}

impl Encode for VoteOp<'_> {
    fn encode<const D: usize>(&mut self, index: usize, grad: Tensor<D>) -> Result<Part, DistError> {
        let n = grad.dims().iter().product::<usize>();
        let flat: Tensor<1> = grad.reshape([n]);
        let beta = self.momentum;
        let vote = if beta > 0.0 {
            let scaled = flat.mul_scalar(1.0 - beta);
            match self.buffers.get(&index) {
                Some(v) if v.dims()[0] != n => {
                    return Err(DistError::Protocol(format!(
                        "the momentum of parameter {index} has {} entries, its gradient {n} \
                         (a checkpoint of another model?)",
                        v.dims()[0]
                    )));
                }
                Some(v) => v.clone().mul_scalar(beta) + scaled,
                None => scaled,
            }
        } else {
            flat
        };
        let rng = &mut *self.rng;
        let part = payload_part(&mut self.stats, (self.rank, index), n, 0, || {
            Sign.compress(vote.clone(), rng)
        })?;
        // Kept only once its signs encoded: a non-finite gradient fails the step and leaves the
        // momentum as it was.
        if beta > 0.0 {
            self.buffers.insert(index, vote);
        }
        Ok(part)
    }
}

impl Decode for VoteOp<'_> {
    fn decode_clock(&mut self) -> &mut Duration {
        &mut self.stats.decode
    }

    fn decode(
        &self,
        index: usize,
        dims: &[usize],
        device: &Device,
        exchanged: Exchanged<'_>,
    ) -> Result<Tensor<1>, DistError> {
        let Exchanged::Gathered(all) = exchanged else {
            unreachable!("sign parts are payloads")
        };
        let n = dims.iter().product::<usize>();
        let failed = |rank: usize| {
            move |e: kindling_compress::DecodeError| DistError::Decode {
                rank,
                param: index,
                reason: e.to_string(),
            }
        };
        if is_host_device(device) {
            // Counted on the packed bits straight from the receive buffer.
            let payloads = all
                .iter()
                .enumerate()
                .map(|(rank, bytes)| PayloadRef::parse_expecting(bytes, &[n]).map_err(failed(rank)))
                .collect::<Result<Vec<_>, DistError>>()?;
            let mut out = vec![0.0f32; n];
            majority_vote_into(&payloads, &mut out).map_err(failed(usize::MAX))?;
            return Ok(tensor(out, [n], device));
        }
        let payloads = all
            .iter()
            .enumerate()
            .map(|(rank, bytes)| {
                Payload::from_bytes_expecting(bytes.to_vec(), &[n]).map_err(failed(rank))
            })
            .collect::<Result<Vec<_>, DistError>>()?;
        majority_vote::<1>(&payloads, device).map_err(failed(usize::MAX))
    }
}

impl Reducer for MajorityVote {
    fn name(&self) -> String {
        if self.momentum > 0.0 {
            format!("Signum (β = {}) + majority vote", self.momentum)
        } else {
            "sign + majority vote".into()
        }
    }

    fn reduce<M: Module>(
        &mut self,
        module: &M,
        grads: GradientsParams,
        comm: &mut dyn Communicator,
        rng: &mut ChaCha8Rng,
    ) -> Result<(GradientsParams, StepStats), DistError> {
        let mut op = VoteOp {
            rank: comm.rank(),
            rng,
            stats: StepStats::default(),
            momentum: self.momentum,
            buffers: &mut self.buffers,
        };
        let (out, exchange) = walk_bucketed(module, grads, &mut op, comm, self.bucket_bytes)?;
        op.stats.exchange += exchange;
        Ok((out, op.stats))
    }

    /// Each parameter's momentum as `"{index}.momentum"` (flat).
    fn state(&self) -> Vec<(String, Vec<f32>)> {
        let mut keys: Vec<&usize> = self.buffers.keys().collect();
        keys.sort();
        keys.into_iter()
            .map(|k| (format!("{k}.momentum"), host(self.buffers[k].clone())))
            .collect()
    }

    fn load_state(
        &mut self,
        state: Vec<(String, Vec<f32>)>,
        device: &Device,
    ) -> Result<(), DistError> {
        let mut buffers = HashMap::new();
        for (key, values) in state {
            let index = key
                .strip_suffix(".momentum")
                .and_then(|k| k.parse::<usize>().ok())
                .ok_or_else(|| {
                    DistError::Protocol(format!("{} state: key {key:?}", self.name()))
                })?;
            let n = values.len();
            buffers.insert(index, tensor(values, [n], device));
        }
        self.buffers = buffers;
        Ok(())
    }
}

/// TernGrad with scalar sharing: the ranks first agree on the largest scale of each tensor (one
/// all-gather of every tensor's local scale for the whole step), then each encodes with the
/// shared scales; the ternaries (each tensor signed flat) travel in buckets of
/// [`DEFAULT_BUCKET_BYTES`] and are decoded and averaged. Two collectives per step for a model
/// that fits one bucket, whatever its number of tensors.
#[derive(Debug, Clone)]
pub struct TernGradShared {
    codec: TernGrad,
    bucket_bytes: usize,
}

impl Default for TernGradShared {
    fn default() -> Self {
        Self::new(TernGrad::default())
    }
}

impl TernGradShared {
    /// With a TernGrad codec (clipping and packing as configured).
    pub fn new(codec: TernGrad) -> Self {
        Self {
            codec,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        }
    }

    /// Buckets of `bytes` of gradient, as [`Gathered::with_bucket_bytes`] (1 means one
    /// all-gather per tensor). Zero is rejected.
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Result<Self, DistError> {
        self.bucket_bytes = bucket_size(bytes)?;
        Ok(self)
    }
}

/// TernGrad's first phase: each tensor's local scale, the tensor kept (flat) for the second.
struct TernScales<'a> {
    codec: &'a TernGrad,
    rank: usize,
    flats: HashMap<usize, Tensor<1>>,
    stats: StepStats,
}

impl Encode for TernScales<'_> {
    fn encode<const D: usize>(&mut self, index: usize, grad: Tensor<D>) -> Result<Part, DistError> {
        let n = grad.dims().iter().product::<usize>();
        let local = timed(&mut self.stats.encode, || {
            self.codec.local_scale(grad.clone())
        })
        .map_err(encode_failed(self.rank, index))?;
        self.flats.insert(index, grad.reshape([n]));
        Ok(Part::Floats(vec![local]))
    }
}

/// TernGrad's decoding: the mean of every rank's ternaries.
struct TernDecode<'a> {
    codec: &'a TernGrad,
    stats: StepStats,
}

impl Decode for TernDecode<'_> {
    const PARALLEL: bool = true;

    fn decode_clock(&mut self) -> &mut Duration {
        &mut self.stats.decode
    }

    fn decode(
        &self,
        index: usize,
        dims: &[usize],
        device: &Device,
        exchanged: Exchanged<'_>,
    ) -> Result<Tensor<1>, DistError> {
        let Exchanged::Gathered(payloads) = exchanged else {
            unreachable!("TernGrad's parts are payloads")
        };
        let n = dims.iter().product::<usize>();
        decode_mean(self.codec, &payloads, index, &[n], device)
    }
}

/// The largest of every rank's scale for each of `indices` (rank order), all finite.
fn shared_scales(
    comm: &mut dyn Communicator,
    local: &[f32],
    indices: &[usize],
) -> Result<Vec<f32>, DistError> {
    let mine: Vec<u8> = local.iter().flat_map(|v| v.to_le_bytes()).collect();
    let all = comm.all_gather_borrowed(&mine)?;
    let mut shared = vec![0.0f32; local.len()];
    for (rank, bytes) in all.iter().enumerate() {
        if bytes.len() != mine.len() {
            return Err(DistError::Protocol(format!(
                "rank {rank} sent {} scales, this rank {}",
                bytes.len() / 4,
                local.len()
            )));
        }
        for ((s, chunk), &param) in shared.iter_mut().zip(bytes.chunks_exact(4)).zip(indices) {
            let v = f32::from_le_bytes(chunk.try_into().expect("4 bytes"));
            if !v.is_finite() {
                return Err(DistError::Decode {
                    rank,
                    param,
                    reason: format!("a non-finite TernGrad scale {v}"),
                });
            }
            *s = s.max(v);
        }
    }
    Ok(shared)
}

impl Reducer for TernGradShared {
    fn name(&self) -> String {
        "TernGrad (shared scale)".into()
    }

    fn identity(&self) -> String {
        format!("{}: {:?}", self.name(), self.codec)
    }

    fn reduce<M: Module>(
        &mut self,
        module: &M,
        grads: GradientsParams,
        comm: &mut dyn Communicator,
        rng: &mut ChaCha8Rng,
    ) -> Result<(GradientsParams, StepStats), DistError> {
        let rank = comm.rank();
        let mut scales = TernScales {
            codec: &self.codec,
            rank,
            flats: HashMap::new(),
            stats: StepStats::default(),
        };
        let (entries, params) = encode_all(module, grads, &mut scales)?;
        let local: Vec<f32> = entries
            .iter()
            .map(|e| match &e.part {
                Part::Floats(v) => v[0],
                Part::Bytes(_) => unreachable!("scales are floats"),
            })
            .collect();
        let indices: Vec<usize> = entries.iter().map(|e| e.meta.index).collect();
        let mut stats = scales.stats;
        let shared = timed(&mut stats.exchange, || {
            shared_scales(comm, &local, &indices)
        })?;
        let mut decode = TernDecode {
            codec: &self.codec,
            stats: StepStats::default(),
        };
        let mut flats = scales.flats;
        let mut exchange = Duration::ZERO;
        let codec = &self.codec;
        // Each tensor encoded with its shared scale while the previous buckets travel.
        let mut decoded = pipeline(
            comm,
            &mut decode,
            self.bucket_bytes,
            &mut exchange,
            |_, sink| {
                for (entry, scale) in entries.into_iter().zip(shared) {
                    let flat = flats.remove(&entry.meta.index).expect("kept in phase one");
                    let n = flat.dims()[0];
                    // The 4 bytes: this tensor's scale, sent in the first round.
                    let part = payload_part(&mut stats, (rank, entry.meta.index), n, 4, || {
                        codec.compress_with_scale(flat, scale, &mut *rng)
                    })?;
                    sink(Entry {
                        meta: entry.meta,
                        part,
                    })?;
                }
                Ok(())
            },
        )?;
        decoded.resize_with(params.max(decoded.len()), || None);
        stats.exchange += exchange;
        stats.decode += decode.stats.decode;
        Ok((assemble(module, decoded), stats))
    }
}

/// PowerSGD: per matrix, two all-reduce rounds (`P = ΔQ` summed, orthonormalised; `Q = ΔᵀP`
/// averaged), error feedback on the aggregate (`e ← Δ − PQᵀ`), `Q` warm-started across steps and
/// initialised from a seed shared by every rank. Tensors the compression-rate rule skips (and
/// rank-1 tensors) are all-reduced dense, in the first round. Each round carries every tensor's
/// factors at once, in buckets of [`DEFAULT_BUCKET_BYTES`]: two all-reduces per step for a
/// model that fits one bucket, whatever its number of tensors (the sums are the same as
/// tensor by tensor).
#[derive(Debug, Clone)]
pub struct PowerSgd {
    config: PowerSgdConfig,
    states: HashMap<usize, PowerSgdState>,
    bucket_bytes: usize,
}

impl PowerSgd {
    /// PowerSGD with `config` (rank, minimum compression rate, shared seed).
    pub fn new(config: PowerSgdConfig) -> Self {
        Self {
            config,
            states: HashMap::new(),
            bucket_bytes: DEFAULT_BUCKET_BYTES,
        }
    }

    /// Buckets of `bytes` (the rounds' floats are all-reduced `bytes / 4` at a time). Zero is
    /// rejected.
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Result<Self, DistError> {
        self.bucket_bytes = bucket_size(bytes)?;
        Ok(self)
    }
}

/// PowerSGD's first phase: each matrix's `P = ΔQ` (with `Δ` kept for the second), each dense
/// tensor's values.
struct PowerStart<'a> {
    rank: usize,
    config: &'a PowerSgdConfig,
    states: &'a mut HashMap<usize, PowerSgdState>,
    started: HashMap<usize, Started>,
    stats: StepStats,
}

impl Encode for PowerStart<'_> {
    fn encode<const D: usize>(&mut self, index: usize, grad: Tensor<D>) -> Result<Part, DistError> {
        let dims = grad.dims();
        let device = grad.device();
        let n: usize = dims.iter().product();
        self.stats.raw_bytes += 4 * n as u64;
        if !self.config.compresses(&dims) {
            self.stats.wire_bytes += 4 * n as u64;
            return Ok(Part::Floats(host(grad)));
        }
        let (rows, cols) = matrix_view(&dims);
        let config = self.config;
        let state = self
            .states
            .entry(index)
            .or_insert_with(|| PowerSgdState::new(config, rows, cols, index as u64, &device));
        let started = timed(&mut self.stats.encode, || {
            state.start(grad.reshape([rows, cols]))
        })
        .map_err(encode_failed(self.rank, index))?;
        let p = started.p().to_vec();
        self.started.insert(index, started);
        Ok(Part::Floats(p))
    }
}

/// Element-wise sum (or mean) of `values` over the ranks, `bucket_bytes / 4` floats per
/// collective.
fn all_reduce_buckets(
    comm: &mut dyn Communicator,
    values: &mut [f32],
    bucket_bytes: usize,
    mean: bool,
) -> Result<(), DistError> {
    for chunk in values.chunks_mut((bucket_bytes / 4).max(1)) {
        if mean {
            comm.all_reduce_mean(chunk)?;
        } else {
            comm.all_reduce_sum(chunk)?;
        }
    }
    Ok(())
}

/// Every entry's floats end to end.
fn concat_floats(entries: &[Entry]) -> Vec<f32> {
    let mut flat = Vec::new();
    for entry in entries {
        match &entry.part {
            Part::Floats(v) => flat.extend_from_slice(v),
            Part::Bytes(_) => unreachable!("PowerSGD's parts are floats"),
        }
    }
    flat
}

impl Reducer for PowerSgd {
    fn name(&self) -> String {
        format!("PowerSGD rank {}", self.config.rank)
    }

    fn identity(&self) -> String {
        format!("PowerSGD: {:?}", self.config)
    }

    fn reduce<M: Module>(
        &mut self,
        module: &M,
        grads: GradientsParams,
        comm: &mut dyn Communicator,
        _rng: &mut ChaCha8Rng,
    ) -> Result<(GradientsParams, StepStats), DistError> {
        let config = &self.config;
        let world = comm.world_size() as f32;
        let mut start = PowerStart {
            rank: comm.rank(),
            config,
            states: &mut self.states,
            started: HashMap::new(),
            stats: StepStats::default(),
        };
        let (entries, params) = encode_all(module, grads, &mut start)?;
        let (mut stats, mut started) = (start.stats, start.started);
        // Round 1: every matrix's P summed, every dense tensor's values averaged.
        let mut first = concat_floats(&entries);
        timed(&mut stats.exchange, || {
            all_reduce_buckets(comm, &mut first, self.bucket_bytes, false)
        })?;
        let mut decoded: Vec<Option<Tensor<1>>> = (0..params).map(|_| None).collect();
        let mut projected = Vec::new();
        let mut second = Vec::new();
        let mut at = 0;
        for entry in &entries {
            let len = match &entry.part {
                Part::Floats(v) => v.len(),
                Part::Bytes(_) => unreachable!("PowerSGD's parts are floats"),
            };
            let values = &mut first[at..at + len];
            at += len;
            let Some(step) = started.remove(&entry.meta.index) else {
                // As `all_reduce_mean`: the sum, then divided by the world size.
                values.iter_mut().for_each(|v| *v /= world);
                decoded[entry.meta.index] =
                    Some(tensor(values.to_vec(), [len], &entry.meta.device));
                continue;
            };
            let state = &self.states[&entry.meta.index];
            let step = timed(&mut stats.encode, || state.project(step, values))
                .map_err(encode_failed(comm.rank(), entry.meta.index))?;
            stats.wire_bytes += 4 * (len + step.q().len()) as u64;
            second.extend_from_slice(step.q());
            projected.push((entry, step));
        }
        // Round 2: every matrix's Q averaged.
        timed(&mut stats.exchange, || {
            all_reduce_buckets(comm, &mut second, self.bucket_bytes, true)
        })?;
        let mut at = 0;
        for (entry, step) in projected {
            let q = &second[at..at + step.q().len()];
            at += q.len();
            let state = self.states.get_mut(&entry.meta.index).expect("started");
            let out = timed(&mut stats.decode, || state.finish(step, q))
                .map_err(encode_failed(comm.rank(), entry.meta.index))?;
            let n = entry.meta.dims.iter().product::<usize>();
            decoded[entry.meta.index] = Some(out.reshape([n]));
        }
        Ok((assemble(module, decoded), stats))
    }

    fn state(&self) -> Vec<(String, Vec<f32>)> {
        let mut keys: Vec<&usize> = self.states.keys().collect();
        keys.sort();
        keys.into_iter()
            .flat_map(|k| {
                let s = &self.states[k];
                [
                    (format!("{k}.q"), s.q().to_vec()),
                    (format!("{k}.error"), s.error()),
                ]
            })
            .collect()
    }

    fn load_state(
        &mut self,
        state: Vec<(String, Vec<f32>)>,
        device: &Device,
    ) -> Result<(), DistError> {
        let map: HashMap<String, Vec<f32>> = state.into_iter().collect();
        let bad = |what: String| DistError::Protocol(format!("PowerSGD state: {what}"));
        self.states.clear();
        for key in map.keys().filter_map(|k| k.strip_suffix(".q")) {
            let index: usize = key.parse().map_err(|_| bad(format!("key {key:?}")))?;
            let q = &map[&format!("{key}.q")];
            let e = map
                .get(&format!("{key}.error"))
                .ok_or_else(|| bad(format!("no error for parameter {key}")))?;
            let r = self.config.rank;
            if q.is_empty() || !q.len().is_multiple_of(r) || !e.len().is_multiple_of(q.len() / r) {
                return Err(bad(format!("sizes of parameter {key} do not fit rank {r}")));
            }
            let cols = q.len() / r;
            let rows = e.len() / cols;
            let s = PowerSgdState::restore(&self.config, rows, cols, q.clone(), e.clone(), device)
                .map_err(|e| bad(e.to_string()))?;
            self.states.insert(index, s);
        }
        Ok(())
    }
}
