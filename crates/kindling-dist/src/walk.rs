//! Visiting every float parameter of a module in a fixed order (the same on every rank): each
//! gradient encoded, the parts exchanged in buckets, the agreed gradients put back in shape.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use crate::{Communicator, DistError};

/// What one rank contributes for one parameter to a bucketed exchange.
pub(crate) enum Part {
    /// Floats to combine over the ranks (an all-reduce).
    Floats(Vec<f32>),
    /// A payload to all-gather.
    Bytes(Vec<u8>),
}

/// What came back for one parameter.
pub(crate) enum Exchanged<'a> {
    /// The mean over the ranks.
    Mean(Vec<f32>),
    /// Every rank's payload, in rank order.
    Gathered(Vec<&'a [u8]>),
}

/// What a protocol makes of each parameter's gradient before an exchange.
pub(crate) trait Encode {
    /// This rank's part for parameter `index` (module order).
    fn encode<const D: usize>(&mut self, index: usize, grad: Tensor<D>) -> Result<Part, DistError>;
}

/// A protocol in one round: each parameter's part is encoded, the parts travel in buckets (one
/// collective per bucket), and each parameter's agreed gradient is decoded from what came back.
pub(crate) trait BucketOp: Encode {
    /// The agreed gradient of parameter `index` (flat; reshaped by the caller).
    fn decode(
        &mut self,
        index: usize,
        dims: &[usize],
        device: &Device,
        exchanged: Exchanged<'_>,
    ) -> Result<Tensor<1>, DistError>;
}

/// One encoded parameter waiting for its bucket.
pub(crate) struct Entry {
    /// The parameter's index in module order.
    pub index: usize,
    /// Its gradient's shape.
    pub dims: Vec<usize>,
    /// Its gradient's device.
    pub device: Device,
    /// This rank's contribution.
    pub part: Part,
}

/// Collects every gradient's part, in module order (phase 1).
struct Encoder<'a, O: Encode> {
    grads: &'a mut GradientsParams,
    op: &'a mut O,
    entries: Vec<Entry>,
    index: usize,
    error: Option<DistError>,
}

impl<O: Encode> ModuleVisitor for Encoder<'_, O> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let index = self.index;
        self.index += 1;
        if self.error.is_some() {
            return;
        }
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            if !param.val().is_require_grad() {
                return;
            }
            self.error = Some(DistError::Protocol(format!(
                "parameter {index} ({}) has no gradient on this rank",
                param.id
            )));
            return;
        };
        let (dims, device) = (grad.dims().to_vec(), grad.device());
        match self.op.encode(index, grad) {
            Ok(part) => self.entries.push(Entry {
                index,
                dims,
                device,
                part,
            }),
            Err(e) => self.error = Some(e),
        }
    }
}

/// Registers each decoded gradient in its parameter's shape (phase 3).
struct Assembler {
    decoded: Vec<Option<Tensor<1>>>,
    out: GradientsParams,
    index: usize,
}

impl ModuleVisitor for Assembler {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let index = self.index;
        self.index += 1;
        if let Some(flat) = self.decoded.get_mut(index).and_then(Option::take) {
            let dims: [usize; D] = param.val().dims();
            self.out.register(param.id, flat.reshape(dims));
        }
    }
}

/// Bytes a part puts in its bucket.
fn part_bytes(part: &Part) -> usize {
    match part {
        Part::Floats(v) => 4 * v.len(),
        Part::Bytes(b) => b.len(),
    }
}

/// Every float parameter's part (in module order), and the number of float parameters. Every
/// parameter that requires a gradient must have one (all ranks must walk the same list); frozen
/// parameters (no gradient required, none given) are skipped, keeping their index: they are
/// left out of the exchange and of the update, the same on every rank since the replicas are
/// identical down to this flag.
pub(crate) fn encode_all<M: Module, O: Encode>(
    module: &M,
    mut grads: GradientsParams,
    op: &mut O,
) -> Result<(Vec<Entry>, usize), DistError> {
    let mut encoder = Encoder {
        grads: &mut grads,
        op,
        entries: Vec::new(),
        index: 0,
        error: None,
    };
    module.visit(&mut encoder);
    match encoder.error {
        Some(e) => Err(e),
        None => Ok((encoder.entries, encoder.index)),
    }
}

/// The decoded gradients (flat, indexed by parameter) registered in their parameters' shapes.
pub(crate) fn assemble<M: Module>(module: &M, decoded: Vec<Option<Tensor<1>>>) -> GradientsParams {
    let mut assembler = Assembler {
        decoded,
        out: GradientsParams::new(),
        index: 0,
    };
    module.visit(&mut assembler);
    assembler.out
}

/// Runs `op` over every float parameter's gradient with the parts packed, in module order, into
/// buckets of about `bucket_bytes` (a bucket closes once it holds that many bytes; a larger
/// part is a bucket of its own): one collective per bucket instead of one per tensor.
///
/// A bucket of payloads travels as one all-gather message per rank: each payload preceded by
/// its length (u32, little-endian). Every rank's message is split back with bounds checked; a
/// message that does not hold exactly the bucket's payloads is a decode error naming its rank.
pub(crate) fn walk_bucketed<M: Module, O: BucketOp>(
    module: &M,
    grads: GradientsParams,
    op: &mut O,
    comm: &mut dyn Communicator,
    bucket_bytes: usize,
    exchange: &mut std::time::Duration,
) -> Result<GradientsParams, DistError> {
    let (entries, params) = encode_all(module, grads, op)?;
    let mut decoded: Vec<Option<Tensor<1>>> = (0..params).map(|_| None).collect();
    exchange_buckets(&entries, op, comm, bucket_bytes, exchange, &mut decoded)?;
    Ok(assemble(module, decoded))
}

/// Exchanges `entries` in buckets of about `bucket_bytes` and decodes each into `decoded`.
pub(crate) fn exchange_buckets<O: BucketOp>(
    entries: &[Entry],
    op: &mut O,
    comm: &mut dyn Communicator,
    bucket_bytes: usize,
    exchange: &mut std::time::Duration,
    decoded: &mut [Option<Tensor<1>>],
) -> Result<(), DistError> {
    let mut rest = entries;
    while !rest.is_empty() {
        let mut size = 0;
        let mut take = 0;
        while take < rest.len() && (take == 0 || size < bucket_bytes) {
            size += part_bytes(&rest[take].part);
            take += 1;
        }
        let (bucket, after) = rest.split_at(take);
        rest = after;
        exchange_bucket(bucket, op, comm, exchange, decoded)?;
    }
    Ok(())
}

/// One collective for `bucket`, then each of its parameters decoded into `decoded`.
fn exchange_bucket<O: BucketOp>(
    bucket: &[Entry],
    op: &mut O,
    comm: &mut dyn Communicator,
    exchange: &mut std::time::Duration,
    decoded: &mut [Option<Tensor<1>>],
) -> Result<(), DistError> {
    let start = std::time::Instant::now();
    match &bucket[0].part {
        Part::Floats(_) => {
            let mut flat = Vec::with_capacity(bucket.iter().map(|e| part_bytes(&e.part)).sum());
            for entry in bucket {
                let Part::Floats(v) = &entry.part else {
                    unreachable!("a protocol's parts are all of one kind")
                };
                flat.extend_from_slice(v);
            }
            comm.all_reduce_mean(&mut flat)?;
            *exchange += start.elapsed();
            let mut at = 0;
            for entry in bucket {
                let n: usize = entry.dims.iter().product();
                let mean = flat[at..at + n].to_vec();
                at += n;
                decoded[entry.index] = Some(op.decode(
                    entry.index,
                    &entry.dims,
                    &entry.device,
                    Exchanged::Mean(mean),
                )?);
            }
        }
        Part::Bytes(_) => {
            let mut message =
                Vec::with_capacity(bucket.iter().map(|e| 4 + part_bytes(&e.part)).sum());
            for entry in bucket {
                let Part::Bytes(b) = &entry.part else {
                    unreachable!("a protocol's parts are all of one kind")
                };
                let len = u32::try_from(b.len()).map_err(|_| {
                    DistError::InvalidConfig(format!(
                        "parameter {}: a payload of {} bytes exceeds the 4 GiB bucket entry limit",
                        entry.index,
                        b.len()
                    ))
                })?;
                message.extend_from_slice(&len.to_le_bytes());
                message.extend_from_slice(b);
            }
            let received = comm.all_gather_borrowed(&message)?;
            *exchange += start.elapsed();
            let per_rank = received
                .iter()
                .enumerate()
                .map(|(rank, m)| split_message(m, bucket, rank))
                .collect::<Result<Vec<_>, DistError>>()?;
            for (k, entry) in bucket.iter().enumerate() {
                let payloads = per_rank.iter().map(|parts| parts[k]).collect();
                decoded[entry.index] = Some(op.decode(
                    entry.index,
                    &entry.dims,
                    &entry.device,
                    Exchanged::Gathered(payloads),
                )?);
            }
        }
    }
    Ok(())
}

/// Rank `rank`'s bucket message cut into its payloads: exactly one per parameter of `bucket`.
fn split_message<'a>(
    mut message: &'a [u8],
    bucket: &[Entry],
    rank: usize,
) -> Result<Vec<&'a [u8]>, DistError> {
    let mut parts = Vec::with_capacity(bucket.len());
    for entry in bucket {
        let fail = |reason: String| DistError::Decode {
            rank,
            param: entry.index,
            reason,
        };
        let (len, body) = message
            .split_first_chunk::<4>()
            .ok_or_else(|| fail("the bucket message ends before this payload's length".into()))?;
        let len = u32::from_le_bytes(*len) as usize;
        if body.len() < len {
            return Err(fail(format!(
                "the bucket message holds {} bytes, this payload claims {len}",
                body.len()
            )));
        }
        let (payload, after) = body.split_at(len);
        parts.push(payload);
        message = after;
    }
    if !message.is_empty() {
        let last = bucket.last().map_or(0, |e| e.index);
        return Err(DistError::Decode {
            rank,
            param: last,
            reason: format!("{} bytes past the bucket's last payload", message.len()),
        });
    }
    Ok(parts)
}
