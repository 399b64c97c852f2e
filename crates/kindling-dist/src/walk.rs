//! Visiting every float parameter of a module in a fixed order (the same on every rank): each
//! gradient encoded, the parts exchanged in buckets, the agreed gradients put back in shape.

use std::collections::VecDeque;
use std::sync::{Arc, mpsc};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use crate::{Communicator, DistError, Received, Shared};

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

/// What a protocol makes of what came back from a bucketed exchange, parameter by parameter.
/// Decoding needs only `&self`, so a bucket's parameters decode in parallel (see
/// [`decode_parallel`]).
pub(crate) trait Decode: Sync {
    /// The agreed gradient of parameter `index` (flat; reshaped by the caller).
    fn decode(
        &self,
        index: usize,
        dims: &[usize],
        device: &Device,
        exchanged: Exchanged<'_>,
    ) -> Result<Tensor<1>, DistError>;

    /// The clock that the time spent decoding goes on.
    fn decode_clock(&mut self) -> &mut Duration;

    /// Whether a bucket's parameters decode in parallel on the host: worth it where decoding
    /// runs a codec's kernels (measured: the gathered codecs gain, while dense's copies and the
    /// vote lost 10–25% to the hand-offs).
    const PARALLEL: bool = false;
}

/// Decodes a bucket's parameters with `op`, in the bucket's order: for a [`Decode::PARALLEL`]
/// op on the host in parallel (rayon, one task per parameter; each codec's kernels then run
/// inside the pool, with no hand-off from this thread per call), otherwise one by one. The first
/// error in bucket order is returned; the time goes on the op's decode clock.
fn decode_parallel<O: Decode>(
    op: &mut O,
    parts: Vec<(&Meta, Exchanged<'_>)>,
) -> Result<Vec<Tensor<1>>, DistError> {
    use rayon::prelude::*;
    let start = Instant::now();
    let on_host = parts
        .iter()
        .all(|(meta, _)| kindling_compress::is_host_device(&meta.device));
    let decode = |(meta, exchanged): (&Meta, Exchanged<'_>)| {
        op.decode(meta.index, &meta.dims, &meta.device, exchanged)
    };
    let decoded = if O::PARALLEL && on_host && parts.len() > 1 {
        parts.into_par_iter().map(decode).collect()
    } else {
        parts.into_iter().map(decode).collect()
    };
    *op.decode_clock() += start.elapsed();
    decoded
}

/// Where one parameter's gradient comes from.
#[derive(Clone)]
pub(crate) struct Meta {
    /// The parameter's index in module order.
    pub index: usize,
    /// Its gradient's shape.
    pub dims: Vec<usize>,
    /// Its gradient's device.
    pub device: Device,
}

/// One encoded parameter waiting for its bucket.
pub(crate) struct Entry {
    /// The parameter.
    pub meta: Meta,
    /// This rank's contribution.
    pub part: Part,
}

/// Hands every gradient's part, in module order, to a sink (phase 1).
struct Encoder<'a, O: Encode> {
    grads: &'a mut GradientsParams,
    op: &'a mut O,
    sink: &'a mut dyn FnMut(Entry) -> Result<(), DistError>,
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
        let meta = Meta {
            index,
            dims: grad.dims().to_vec(),
            device: grad.device(),
        };
        let sent = self
            .op
            .encode(index, grad)
            .and_then(|part| (self.sink)(Entry { meta, part }));
        if let Err(e) = sent {
            self.error = Some(e);
        }
    }
}

/// Encodes every float parameter's gradient (module order) into `sink`; returns the number of
/// float parameters. Every parameter that requires a gradient must have one (all ranks must walk
/// the same list); frozen parameters (no gradient required, none given) are skipped, keeping
/// their index: they are left out of the exchange and of the update, the same on every rank
/// since the replicas are identical down to this flag.
fn encode_into<M: Module, O: Encode>(
    module: &M,
    mut grads: GradientsParams,
    op: &mut O,
    sink: &mut dyn FnMut(Entry) -> Result<(), DistError>,
) -> Result<usize, DistError> {
    let mut encoder = Encoder {
        grads: &mut grads,
        op,
        sink,
        index: 0,
        error: None,
    };
    module.visit(&mut encoder);
    match encoder.error {
        Some(e) => Err(e),
        None => Ok(encoder.index),
    }
}

/// Every float parameter's part, in module order, and the number of float parameters (see
/// [`encode_into`]).
pub(crate) fn encode_all<M: Module, O: Encode>(
    module: &M,
    grads: GradientsParams,
    op: &mut O,
) -> Result<(Vec<Entry>, usize), DistError> {
    let mut entries = Vec::new();
    let params = encode_into(module, grads, op, &mut |entry| {
        entries.push(entry);
        Ok(())
    })?;
    Ok((entries, params))
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
/// buckets of about `bucket_bytes` of gradient, exchanged while the next parts are encoded (see
/// [`pipeline`]). Returns the agreed gradients and the time spent
/// exchanging.
pub(crate) fn walk_bucketed<M: Module, O: Encode + Decode>(
    module: &M,
    grads: GradientsParams,
    op: &mut O,
    comm: &mut dyn Communicator,
    bucket_bytes: usize,
) -> Result<(GradientsParams, Duration), DistError> {
    let mut params = 0;
    let mut exchange = Duration::ZERO;
    let mut decoded = pipeline(comm, op, bucket_bytes, &mut exchange, |op, sink| {
        params = encode_into(module, grads, op, sink)?;
        Ok(())
    })?;
    decoded.resize_with(params.max(decoded.len()), || None);
    Ok((assemble(module, decoded), exchange))
}

/// A bucket (or this rank's decoded share of one) on its way to the communication thread.
enum Outgoing {
    Floats(Vec<f32>),
    Bytes(Vec<u8>),
    Share(Shared),
}

/// A bucket back from it.
enum Incoming {
    Mean(Vec<f32>),
    Gathered { bytes: Vec<u8>, ends: Vec<usize> },
    Shares(Vec<Shared>),
}

/// One rank's decoded share of a bucket: its parameters' gradients in bucket order, or why it
/// could not decode them (the same error then ends the step on every rank).
type DecodedShare = Result<Vec<Tensor<1>>, DistError>;

/// The first bucket of a step closes at 1 MiB of gradient (or the bucket size, if smaller), as
/// PyTorch DDP's first bucket: the wire starts while most of the model is still being encoded.
pub(crate) const FIRST_BUCKET_BYTES: usize = 1 << 20;

/// Packs entries into buckets and sends each full one to the [`Link`]. A bucket closes once its
/// tensors hold `bucket_bytes` of gradient (f32, whatever their parts weigh on the wire:
/// encoding time follows the gradient's size, so buckets of equal gradient pipeline evenly for
/// every codec); the first one at [`FIRST_BUCKET_BYTES`].
struct Packer<'scope, 'c> {
    bucket_bytes: usize,
    open: Vec<Entry>,
    open_bytes: usize,
    sent: usize,
    in_flight: VecDeque<Vec<Meta>>,
    link: Link<'scope, 'c>,
}

impl Packer<'_, '_> {
    fn push(&mut self, entry: Entry) -> Result<(), DistError> {
        self.open_bytes += 4 * entry.meta.dims.iter().product::<usize>();
        self.open.push(entry);
        let limit = match self.sent {
            0 => self.bucket_bytes.min(FIRST_BUCKET_BYTES),
            _ => self.bucket_bytes,
        };
        if self.open_bytes >= limit {
            // More entries may follow: the exchange of this bucket can overlap their encoding.
            self.link.overlap()?;
            self.flush()?;
        }
        Ok(())
    }

    /// Sends the open bucket (if any). A bucket of floats is their concatenation; a bucket of
    /// payloads is each payload preceded by its length (u32, little-endian).
    fn flush(&mut self) -> Result<(), DistError> {
        let Some(first) = self.open.first() else {
            return Ok(());
        };
        let part_bytes: usize = self.open.iter().map(|e| part_bytes(&e.part)).sum();
        let outgoing = match first.part {
            Part::Floats(_) => {
                let mut flat = Vec::with_capacity(part_bytes / 4);
                for entry in &self.open {
                    let Part::Floats(v) = &entry.part else {
                        unreachable!("a protocol's parts are all of one kind")
                    };
                    flat.extend_from_slice(v);
                }
                Outgoing::Floats(flat)
            }
            Part::Bytes(_) => {
                let mut message = Vec::with_capacity(part_bytes + 4 * self.open.len());
                for entry in &self.open {
                    let Part::Bytes(b) = &entry.part else {
                        unreachable!("a protocol's parts are all of one kind")
                    };
                    let len = u32::try_from(b.len()).map_err(|_| {
                        DistError::InvalidConfig(format!(
                            "parameter {}: a payload of {} bytes exceeds the 4 GiB bucket entry \
                             limit",
                            entry.meta.index,
                            b.len()
                        ))
                    })?;
                    message.extend_from_slice(&len.to_le_bytes());
                    message.extend_from_slice(b);
                }
                Outgoing::Bytes(message)
            }
        };
        let metas = self.open.drain(..).map(|e| e.meta).collect();
        self.open_bytes = 0;
        self.sent += 1;
        self.link.send(outgoing)?;
        self.in_flight.push_back(metas);
        Ok(())
    }
}

/// Where a step's collectives run. On the calling thread, each when it is sent, until a bucket
/// closes while entries may still follow ([`Link::overlap`]): from then on on a communication
/// thread, which runs them in order while the caller goes on encoding. A step whose gradient
/// fits its first bucket (under 1 MiB, [`FIRST_BUCKET_BYTES`]) has nothing to overlap and
/// starts no thread: a thread's start and the hand-offs to it cost more than such a step's
/// exchange on a loaded machine.
struct Link<'scope, 'c> {
    scope: &'scope Scope<'scope, 'c>,
    /// The communicator, until a thread takes it.
    comm: Option<&'c mut dyn Communicator>,
    /// Results of the collectives run on the calling thread, in order.
    ready: VecDeque<Result<Incoming, DistError>>,
    /// Time spent in the collectives run on the calling thread.
    spent: Duration,
    thread: Option<Server<'scope>>,
}

/// The communication thread and its two channels.
struct Server<'scope> {
    /// `None` once closed: the thread ends after the jobs sent.
    jobs: Option<mpsc::Sender<Outgoing>>,
    results: mpsc::Receiver<Result<Incoming, DistError>>,
    handle: ScopedJoinHandle<'scope, Duration>,
}

impl<'scope, 'c> Link<'scope, 'c> {
    fn new(scope: &'scope Scope<'scope, 'c>, comm: &'c mut dyn Communicator) -> Self {
        Self {
            scope,
            comm: Some(comm),
            ready: VecDeque::new(),
            spent: Duration::ZERO,
            thread: None,
        }
    }

    /// Moves the collectives to a communication thread (once; before any collective ran here).
    fn overlap(&mut self) -> Result<(), DistError> {
        let Some(comm) = self.comm.take() else {
            return Ok(());
        };
        debug_assert!(self.ready.is_empty(), "no collective ran before the thread");
        let (jobs, queue) = mpsc::channel::<Outgoing>();
        let (done, results) = mpsc::channel::<Result<Incoming, DistError>>();
        let handle = std::thread::Builder::new()
            .name("kindling-exchange".into())
            .spawn_scoped(self.scope, move || serve(comm, queue, done))
            .map_err(|e| {
                DistError::InvalidConfig(format!("cannot start the exchange thread: {e}"))
            })?;
        self.thread = Some(Server {
            jobs: Some(jobs),
            results,
            handle,
        });
        Ok(())
    }

    /// Runs `job`'s collective, here or on the thread.
    fn send(&mut self, job: Outgoing) -> Result<(), DistError> {
        match (&mut self.comm, &self.thread) {
            (Some(comm), _) => {
                let start = Instant::now();
                let result = run(&mut **comm, job);
                self.spent += start.elapsed();
                self.ready.push_back(result);
                Ok(())
            }
            (
                None,
                Some(Server {
                    jobs: Some(jobs),
                    results,
                    ..
                }),
            ) => jobs.send(job).map_err(|_| {
                // The thread stopped at a failed collective, whose error it sent last: that is
                // the step's error, not the thread's end (a slow encoder sends its next bucket
                // after the failure).
                results
                    .try_iter()
                    .find_map(Result::err)
                    .unwrap_or_else(thread_ended)
            }),
            (None, _) => Err(thread_ended()),
        }
    }

    /// The next collective's result, in the order sent.
    fn receive(&mut self) -> Result<Incoming, DistError> {
        match &self.thread {
            None => self.ready.pop_front().ok_or_else(thread_ended)?,
            Some(server) => server.results.recv().map_err(|_| thread_ended())?,
        }
    }

    /// No more jobs: the thread ends after the ones sent.
    fn close(&mut self) {
        if let Some(server) = &mut self.thread {
            server.jobs = None;
        }
    }

    /// Waits for the thread (its panic goes on unwinding here); the time spent in collectives.
    fn finish(self) -> Duration {
        match self.thread {
            None => self.spent,
            Some(Server {
                jobs,
                results,
                handle,
            }) => {
                drop((jobs, results));
                match handle.join() {
                    Ok(spent) => spent,
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
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

/// The bucketed, overlapped exchange. `produce` hands the parts to a sink in module order; they
/// are packed into buckets of about `bucket_bytes` of gradient (see [`Packer`]; a larger tensor
/// is a bucket of its own), one collective per bucket. Once a bucket closes with more entries to
/// come, a communication thread runs the collectives in order while `produce` goes on encoding,
/// so the encoding of bucket i+1 overlaps the exchange of bucket i, and the decoding of bucket i
/// the exchange of the later ones; a step of one bucket runs its collective on the calling
/// thread ([`Link`]). Returns the decoded gradients, flat, indexed by parameter; `exchange` gains
/// the time spent in collectives, on either thread.
///
/// A bucket of payloads travels as one all-gather message per rank; every rank's message is
/// split back with bounds checked, and a message that does not hold exactly the bucket's
/// payloads is a decode error naming its rank.
///
/// **Shared decoding.** Where the ranks [share memory](Communicator::shares_memory) (a plain
/// [`LocalGroup`](crate::LocalGroup)) and a [`Decode::PARALLEL`] op decodes host tensors, each
/// rank decodes only its share of a bucket's parameters (split by size, [`owners`]), and the
/// decoded gradients are handed to every rank by a [`share`](Communicator::share) queued after
/// the step's buckets: each payload is decoded once per group instead of once per rank, and the
/// result is the same bits. A rank that cannot decode its share puts the error in it, so every
/// rank ends the step with the same error.
pub(crate) fn pipeline<O: Decode>(
    comm: &mut dyn Communicator,
    op: &mut O,
    bucket_bytes: usize,
    exchange: &mut Duration,
    produce: impl FnOnce(
        &mut O,
        &mut dyn FnMut(Entry) -> Result<(), DistError>,
    ) -> Result<(), DistError>,
) -> Result<Vec<Option<Tensor<1>>>, DistError> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let shares = O::PARALLEL && world > 1 && comm.shares_memory();
    std::thread::scope(|scope| {
        let mut packer = Packer {
            bucket_bytes,
            open: Vec::new(),
            open_bytes: 0,
            sent: 0,
            in_flight: VecDeque::new(),
            link: Link::new(scope, comm),
        };
        let produced = produce(op, &mut |entry| packer.push(entry)).and_then(|()| packer.flush());
        let Packer {
            in_flight,
            mut link,
            ..
        } = packer;
        let mut decoded: Vec<Option<Tensor<1>>> = Vec::new();
        let outcome = produced.and_then(|()| {
            let mut sharing = VecDeque::new();
            for metas in in_flight {
                match link.receive()? {
                    Incoming::Gathered { bytes, ends } if shares && on_host(&metas) => {
                        let owners = owners(&metas, world);
                        let mine: DecodedShare =
                            decode_share(&metas, &owners, rank, bytes, &ends, op);
                        link.send(Outgoing::Share(Arc::new(mine)))?;
                        sharing.push_back((metas, owners));
                    }
                    incoming => decode_bucket(&metas, incoming, op, &mut decoded)?,
                }
            }
            link.close();
            for (metas, owners) in sharing {
                let Incoming::Shares(all) = link.receive()? else {
                    unreachable!("shares come back after the step's buckets")
                };
                place_shares(&metas, &owners, &all, &mut decoded)?;
            }
            Ok(())
        });
        *exchange += link.finish();
        outcome.map(|()| decoded)
    })
}

/// The communication thread: runs each bucket's collective in order and sends the result back;
/// stops at the first failure or when the buckets run out. Returns the time spent.
fn serve(
    comm: &mut dyn Communicator,
    queue: mpsc::Receiver<Outgoing>,
    done: mpsc::Sender<Result<Incoming, DistError>>,
) -> Duration {
    let mut spent = Duration::ZERO;
    for job in queue {
        let start = Instant::now();
        let result = run(comm, job);
        spent += start.elapsed();
        let failed = result.is_err();
        if done.send(result).is_err() || failed {
            break;
        }
    }
    spent
}

/// One bucket's (or share's) collective.
fn run(comm: &mut dyn Communicator, job: Outgoing) -> Result<Incoming, DistError> {
    match job {
        Outgoing::Floats(mut values) => comm
            .all_reduce_mean(&mut values)
            .map(|()| Incoming::Mean(values)),
        // The receive buffer is the transport's, until its next collective: the bucket
        // leaves with its own copy of the peers' bytes.
        Outgoing::Bytes(message) => comm.all_gather_borrowed(&message).map(|all| {
            let (bytes, ends) = all.to_parts();
            Incoming::Gathered { bytes, ends }
        }),
        Outgoing::Share(mine) => comm.share(mine).map(Incoming::Shares),
    }
}

/// Whether every parameter of a bucket lives on a host device.
fn on_host(metas: &[Meta]) -> bool {
    metas
        .iter()
        .all(|meta| kindling_compress::is_host_device(&meta.device))
}

/// Which rank decodes each parameter of a bucket in a shared decode: the largest first, each to
/// the rank with the fewest entries so far (the lowest such rank on ties), so the ranks' shares
/// weigh about the same. The same on every rank.
fn owners(metas: &[Meta], world: usize) -> Vec<usize> {
    let entries = |k: usize| metas[k].dims.iter().product::<usize>();
    let mut order: Vec<usize> = (0..metas.len()).collect();
    order.sort_by_key(|&k| (std::cmp::Reverse(entries(k)), k));
    let mut load = vec![0usize; world];
    let mut owners = vec![0; metas.len()];
    for k in order {
        let least = (0..world).min_by_key(|&r| (load[r], r)).expect("a rank");
        owners[k] = least;
        load[least] += entries(k);
    }
    owners
}

/// Rank `rank`'s share of a gathered bucket: every rank's message split (so a malformed one is
/// found by every rank alike), then the parameters `owners` gives this rank decoded.
fn decode_share<O: Decode>(
    metas: &[Meta],
    owners: &[usize],
    rank: usize,
    bytes: Vec<u8>,
    ends: &[usize],
    op: &mut O,
) -> DecodedShare {
    let received = Received::new(&bytes, ends).expect("ends are the running sum");
    let parts = gathered_parts(metas, received, |k| owners[k] == rank)?;
    decode_parallel(op, parts)
}

/// Every rank's bucket message cut into its payloads (a message that does not frame exactly the
/// bucket's payloads is an error naming its sender), and for each parameter `keep` selects,
/// every rank's payload of it, in rank order.
fn gathered_parts<'a>(
    metas: &'a [Meta],
    received: Received<'a>,
    keep: impl Fn(usize) -> bool,
) -> Result<Vec<(&'a Meta, Exchanged<'a>)>, DistError> {
    let per_rank = received
        .iter()
        .enumerate()
        .map(|(sender, m)| split_message(m, metas, sender))
        .collect::<Result<Vec<_>, DistError>>()?;
    Ok(metas
        .iter()
        .enumerate()
        .filter(|&(k, _)| keep(k))
        .map(|(k, meta)| {
            let payloads = per_rank.iter().map(|parts| parts[k]).collect();
            (meta, Exchanged::Gathered(payloads))
        })
        .collect())
}

/// Every rank's decoded share of a bucket put in `decoded`; the first rank's error (in rank
/// order) if any share holds one, so that every rank returns the same error.
fn place_shares(
    metas: &[Meta],
    owners: &[usize],
    all: &[Shared],
    decoded: &mut Vec<Option<Tensor<1>>>,
) -> Result<(), DistError> {
    let shares = all
        .iter()
        .map(|share| {
            share.downcast_ref::<DecodedShare>().ok_or_else(|| {
                DistError::Protocol("a rank shared something other than decoded gradients".into())
            })
        })
        .collect::<Result<Vec<_>, DistError>>()?;
    let mut tensors = Vec::with_capacity(shares.len());
    for share in shares {
        tensors.push(share.as_ref().map_err(Clone::clone)?.iter());
    }
    for (meta, &owner) in metas.iter().zip(owners) {
        let t = tensors[owner].next().ok_or_else(|| {
            DistError::Protocol(format!(
                "rank {owner} shared fewer decoded gradients than it owns"
            ))
        })?;
        place(decoded, meta.index, t.clone());
    }
    Ok(())
}

/// The communication thread stopped taking or answering jobs (it ends at a collective's
/// failure, which the caller then receives instead).
fn thread_ended() -> DistError {
    DistError::Protocol("the communication thread ended before the exchange did".into())
}

/// Parameter `index`'s decoded gradient put in `decoded` (grown as needed).
fn place(decoded: &mut Vec<Option<Tensor<1>>>, index: usize, t: Tensor<1>) {
    if decoded.len() <= index {
        decoded.resize_with(index + 1, || None);
    }
    decoded[index] = Some(t);
}

/// Decodes each parameter of one bucket into `decoded` (grown as needed).
fn decode_bucket<O: Decode>(
    metas: &[Meta],
    incoming: Incoming,
    op: &mut O,
    decoded: &mut Vec<Option<Tensor<1>>>,
) -> Result<(), DistError> {
    let decoded_bucket = match incoming {
        Incoming::Mean(flat) => {
            let mut at = 0;
            let parts = metas
                .iter()
                .map(|meta| {
                    let n: usize = meta.dims.iter().product();
                    let mean = flat[at..at + n].to_vec();
                    at += n;
                    (meta, Exchanged::Mean(mean))
                })
                .collect();
            decode_parallel(op, parts)?
        }
        Incoming::Shares(_) => unreachable!("shares are placed by place_shares"),
        Incoming::Gathered { bytes, ends } => {
            let received = Received::new(&bytes, &ends).expect("ends are the running sum");
            decode_parallel(op, gathered_parts(metas, received, |_| true)?)?
        }
    };
    for (meta, t) in metas.iter().zip(decoded_bucket) {
        place(decoded, meta.index, t);
    }
    Ok(())
}

/// Rank `rank`'s bucket message cut into its payloads: exactly one per parameter of `bucket`.
fn split_message<'a>(
    mut message: &'a [u8],
    bucket: &[Meta],
    rank: usize,
) -> Result<Vec<&'a [u8]>, DistError> {
    let mut parts = Vec::with_capacity(bucket.len());
    for meta in bucket {
        let fail = |reason: String| DistError::Decode {
            rank,
            param: meta.index,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Traffic;

    /// A transport whose every collective fails.
    struct Failing;

    impl Communicator for Failing {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&mut self, _: &mut [f32]) -> Result<(), DistError> {
            Err(DistError::Protocol("the peer left".into()))
        }
        fn all_gather_borrowed(&mut self, _: &[u8]) -> Result<Received<'_>, DistError> {
            Err(DistError::Protocol("the peer left".into()))
        }
        fn broadcast(&mut self, _: Vec<u8>, _: usize) -> Result<Vec<u8>, DistError> {
            Err(DistError::Protocol("the peer left".into()))
        }
        fn barrier(&mut self) -> Result<(), DistError> {
            Err(DistError::Protocol("the peer left".into()))
        }
        fn traffic(&self) -> Traffic {
            Traffic::default()
        }
    }

    /// A bucket sent after the communication thread stopped at a failed collective gets that
    /// collective's error, not "the thread ended" (an encoder slower than the failure, as on
    /// wgpu, sends its next bucket then).
    #[test]
    fn a_bucket_sent_after_a_failure_gets_the_failure() {
        let mut comm = Failing;
        std::thread::scope(|scope| {
            let mut link = Link::new(scope, &mut comm);
            link.overlap().unwrap();
            link.send(Outgoing::Floats(vec![1.0])).unwrap();
            while !link.thread.as_ref().unwrap().handle.is_finished() {
                std::thread::yield_now();
            }
            match link.send(Outgoing::Floats(vec![2.0])) {
                Err(DistError::Protocol(m)) => assert_eq!(m, "the peer left"),
                other => panic!("{other:?}"),
            }
            link.finish();
        });
    }
}
