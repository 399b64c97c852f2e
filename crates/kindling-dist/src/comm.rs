//! Transports: how workers exchange bytes and floats. A [`Communicator`] is one rank's handle on
//! a group; every collective is called by every rank, in the same order.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::{DistError, NetworkModel};

/// Exact byte counts of one rank's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes this rank sent.
    pub sent: u64,
    /// Bytes this rank received.
    pub received: u64,
    /// Collectives this rank has run (each pays the network's latency; see
    /// [`NetworkModel`](crate::NetworkModel)). Transports outside this crate may leave it 0.
    pub collectives: u64,
    /// Message rounds of those collectives as the transport ran them, each paying one latency
    /// in [`NetworkModel::seconds_sent`](crate::NetworkModel::seconds_sent): `W − 1` for an
    /// all-gather, a broadcast or a barrier, `2·(W − 1)` for a (ring) all-reduce, and for `Mpi`
    /// also its header exchange (an all-gather) before each collective's data. Transports
    /// outside this crate may leave it 0.
    pub rounds: u64,
}

/// Every rank's payload from one all-gather, in rank order, borrowed from the transport's receive
/// buffer: decoders read each peer's bytes where they arrived, with no copy per peer.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub(crate) bytes: &'a [u8],
    /// Where each rank's payload starts, when they are not end to end.
    pub(crate) starts: Option<&'a [usize]>,
    pub(crate) ends: &'a [usize],
}

impl<'a> Received<'a> {
    /// The payloads laid end to end in `bytes`, rank `r`'s ending at `ends[r]` (for transports
    /// outside this crate). `None` unless `ends` is non-decreasing and ends at `bytes.len()`.
    pub fn new(bytes: &'a [u8], ends: &'a [usize]) -> Option<Self> {
        let ordered = ends.windows(2).all(|w| w[0] <= w[1]);
        let complete = ends.last().copied().unwrap_or(0) == bytes.len();
        (ordered && complete).then_some(Self {
            bytes,
            starts: None,
            ends,
        })
    }

    /// Rank `r`'s payload at `bytes[starts[r]..ends[r]]` (payloads with gaps between them, as
    /// inside the MPI transport's headers).
    #[cfg(feature = "mpi")]
    pub(crate) fn spaced(bytes: &'a [u8], starts: &'a [usize], ends: &'a [usize]) -> Self {
        debug_assert!(
            starts.len() == ends.len()
                && starts
                    .iter()
                    .zip(ends)
                    .all(|(s, e)| s <= e && *e <= bytes.len())
        );
        Self {
            bytes,
            starts: Some(starts),
            ends,
        }
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.ends.len()
    }

    /// Rank `rank`'s payload (panics outside the group).
    pub fn get(&self, rank: usize) -> &'a [u8] {
        let start = match self.starts {
            Some(starts) => starts[rank],
            None if rank == 0 => 0,
            None => self.ends[rank - 1],
        };
        &self.bytes[start..self.ends[rank]]
    }

    /// The payloads in rank order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a [u8]> + '_ {
        (0..self.world_size()).map(|r| self.get(r))
    }

    /// Owned copies, one per rank.
    pub fn to_vecs(&self) -> Vec<Vec<u8>> {
        self.iter().map(<[u8]>::to_vec).collect()
    }

    /// An owned copy of the payloads end to end, with their ends (for [`Received::new`]).
    pub(crate) fn to_parts(self) -> (Vec<u8>, Vec<usize>) {
        let (mut bytes, mut ends) = (Vec::new(), Vec::with_capacity(self.world_size()));
        for payload in self.iter() {
            bytes.extend_from_slice(payload);
            ends.push(bytes.len());
        }
        (bytes, ends)
    }
}

/// A value one rank hands to the others of a group in one address space
/// ([`Communicator::share`]); the receiver downcasts it to the type it expects.
pub type Shared = Arc<dyn Any + Send + Sync>;

/// Collectives over a group of workers (in-process threads, MPI processes, …).
///
/// Byte counts follow the transport's real traffic model: all-gather sends this rank's payload to
/// every other rank and receives theirs; the float all-reduce is counted as a ring all-reduce,
/// `2·(W−1)/W` of the buffer sent and received per rank.
///
/// **Failure.** A rank that cannot go on calls [`fail`](Communicator::fail) (the trainers in
/// this crate do so on every error), so that its peers end within the transport's bound instead
/// of waiting for it: a [`LocalGroup`] turns every rank's pending and next collective into an
/// error; `Mpi` prints the reason and aborts the job.
pub trait Communicator: Send {
    /// This worker's rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// Number of workers.
    fn world_size(&self) -> usize;
    /// Element-wise sum of `values` over all ranks, in place.
    fn all_reduce_sum(&mut self, values: &mut [f32]) -> Result<(), DistError>;
    /// Every rank's payload, in rank order, borrowed from this handle's receive buffer until the
    /// next collective (payloads may differ in length).
    fn all_gather_borrowed(&mut self, payload: &[u8]) -> Result<Received<'_>, DistError>;
    /// Rank `root`'s bytes on every rank.
    fn broadcast(&mut self, bytes: Vec<u8>, root: usize) -> Result<Vec<u8>, DistError>;
    /// Waits for every rank.
    fn barrier(&mut self) -> Result<(), DistError>;
    /// Bytes sent and received so far.
    fn traffic(&self) -> Traffic;

    /// Every rank's payload as owned bytes, indexed by rank (a copy of
    /// [`all_gather_borrowed`](Communicator::all_gather_borrowed)'s).
    fn all_gather(&mut self, payload: Vec<u8>) -> Result<Vec<Vec<u8>>, DistError> {
        Ok(self.all_gather_borrowed(&payload)?.to_vecs())
    }

    /// This rank cannot go on (`reason` says why): make its peers end within the transport's
    /// bound rather than wait for a collective it will never join. The default does nothing,
    /// for transports whose peers notice a departure on their own.
    fn fail(&mut self, reason: &str) {
        let _ = reason;
    }

    /// Whether every rank lives in this process's address space, so that ranks can hand each
    /// other values with [`share`](Communicator::share) instead of sending copies. The trainers
    /// use it to decode each payload once per group rather than once per rank. False by default;
    /// a plain [`LocalGroup`] says true, an [emulated](LocalGroup::emulating) one false (it
    /// keeps a cluster's costs, where every rank decodes every payload).
    fn shares_memory(&self) -> bool {
        false
    }

    /// Every rank's `value`, in rank order, handed over without a copy, for transports that
    /// [share memory](Communicator::shares_memory). It is tagged and checked as a collective
    /// (every rank must call it at the same point), but moves no bytes over a network, so it
    /// adds nothing to [`Traffic`]. The default refuses.
    fn share(&mut self, value: Shared) -> Result<Vec<Shared>, DistError> {
        let _ = value;
        Err(DistError::Protocol(
            "this transport does not share memory between its ranks".into(),
        ))
    }

    /// Element-wise mean over all ranks, in place.
    fn all_reduce_mean(&mut self, values: &mut [f32]) -> Result<(), DistError> {
        self.all_reduce_sum(values)?;
        let w = self.world_size() as f32;
        values.iter_mut().for_each(|v| *v /= w);
        Ok(())
    }

    /// The maximum of one scalar over all ranks.
    fn all_reduce_max(&mut self, value: f32) -> Result<f32, DistError> {
        let all = self.all_gather_borrowed(&value.to_le_bytes())?;
        all.iter()
            .map(|b| {
                b.try_into()
                    .map(f32::from_le_bytes)
                    .map_err(|_| DistError::Protocol("a scalar of the wrong size".into()))
            })
            .try_fold(f32::MIN, |m, v| v.map(|v| m.max(v)))
    }
}

/// A borrowed transport is a transport: lend one to a [`DataParallel`](crate::DataParallel)
/// trainer and keep using it afterwards.
impl<C: Communicator + ?Sized> Communicator for &mut C {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn world_size(&self) -> usize {
        (**self).world_size()
    }
    fn all_reduce_sum(&mut self, values: &mut [f32]) -> Result<(), DistError> {
        (**self).all_reduce_sum(values)
    }
    fn all_gather_borrowed(&mut self, payload: &[u8]) -> Result<Received<'_>, DistError> {
        (**self).all_gather_borrowed(payload)
    }
    fn all_gather(&mut self, payload: Vec<u8>) -> Result<Vec<Vec<u8>>, DistError> {
        (**self).all_gather(payload)
    }
    fn fail(&mut self, reason: &str) {
        (**self).fail(reason)
    }
    fn shares_memory(&self) -> bool {
        (**self).shares_memory()
    }
    fn share(&mut self, value: Shared) -> Result<Vec<Shared>, DistError> {
        (**self).share(value)
    }
    fn broadcast(&mut self, bytes: Vec<u8>, root: usize) -> Result<Vec<u8>, DistError> {
        (**self).broadcast(bytes, root)
    }
    fn barrier(&mut self) -> Result<(), DistError> {
        (**self).barrier()
    }
    fn traffic(&self) -> Traffic {
        (**self).traffic()
    }
}

/// Bytes one rank sends (and receives) in a ring all-reduce of `len` floats over `world` ranks:
/// `2·(W−1)/W` of the buffer.
pub(crate) fn ring_all_reduce_bytes(len: usize, world: usize) -> u64 {
    let w = world as u64;
    4 * len as u64 * 2 * (w - 1) / w.max(1)
}

/// Rank `r`'s share of an all-reduce of `len` floats over `world` ranks: the entries it sums
/// (the same on every transport).
pub(crate) fn share(r: usize, len: usize, world: usize) -> std::ops::Range<usize> {
    r * len / world..(r + 1) * len / world
}

/// `sum` set to zeros, plus each of `parts` (one rank's values each) in turn, in rank order: every
/// transport's all-reduce adds the ranks' values in this order, from 0.0, so they all give the
/// same bits.
pub(crate) fn sum_in_rank_order<P: IntoIterator<Item = f32>>(
    parts: impl IntoIterator<Item = P>,
    sum: &mut [f32],
) {
    sum.fill(0.0);
    for part in parts {
        for (s, v) in sum.iter_mut().zip(part) {
            *s += v;
        }
    }
}

/// Latency rounds of one collective of `kind` among `world` ranks ([`Traffic::rounds`]); an
/// all-reduce's second round is inside its first's count.
pub(crate) fn rounds(kind: Kind, world: usize) -> u64 {
    let hops = world.saturating_sub(1) as u64;
    match kind {
        Kind::AllReduce { .. } => 2 * hops,
        Kind::AllReduceShares { .. } | Kind::Share => 0,
        Kind::AllGather | Kind::Broadcast { .. } | Kind::Barrier => hops,
    }
}

/// `(sent, received)` bytes of rank `rank` in an all-gather: its own payload to each of the
/// `W − 1` peers, and every peer's payload.
pub(crate) fn all_gather_traffic(all: &Received<'_>, rank: usize) -> (u64, u64) {
    let own = all.get(rank).len() as u64;
    let total: u64 = all.iter().map(|p| p.len() as u64).sum();
    (own * (all.world_size() as u64 - 1), total - own)
}

/// What a rank says it is doing in a collective round: every rank must say the same, or the
/// round is an error on every rank (never mixed data). Both transports check it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    /// Collectives this rank has entered before this one.
    pub sequence: u64,
    /// The call.
    pub kind: Kind,
}

/// A collective call, with what every rank must agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    AllReduce {
        len: u64,
    },
    /// An all-reduce's second round: each rank's share of the sum.
    AllReduceShares {
        len: u64,
    },
    AllGather,
    Broadcast {
        root: u64,
    },
    Barrier,
    /// Values handed over in memory ([`Communicator::share`]).
    Share,
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            Kind::AllReduce { len } => write!(f, "an all-reduce of {len} floats")?,
            Kind::AllReduceShares { len } => {
                write!(f, "the second round of an all-reduce of {len} floats")?
            }
            Kind::AllGather => write!(f, "an all-gather")?,
            Kind::Broadcast { root } => write!(f, "a broadcast from rank {root}")?,
            Kind::Barrier => write!(f, "a barrier")?,
            Kind::Share => write!(f, "a share in memory")?,
        }
        write!(f, " as its collective #{}", self.sequence)
    }
}

/// Every rank's tag (`None`: a call this rank could not read) against rank 0's: the first rank
/// whose call differs is a [`DistError::Protocol`] naming both calls.
pub(crate) fn check_tags(tags: &[Option<Tag>]) -> Result<(), DistError> {
    let describe = |t: Option<Tag>| t.map_or_else(|| "an unknown call".into(), |t| t.to_string());
    match tags.iter().enumerate().find(|(_, t)| **t != tags[0]) {
        None => Ok(()),
        Some((r, theirs)) => Err(DistError::Protocol(format!(
            "mismatched collectives: rank 0 called {}, rank {r} called {}",
            describe(tags[0]),
            describe(*theirs)
        ))),
    }
}

/// What a rank puts into a [`LocalGroup`] round.
enum Deposit {
    Nothing,
    Bytes(Vec<u8>),
    Floats(Vec<f32>),
    Value(Shared),
}

/// One collective round of a [`LocalGroup`]: every rank deposits, then every rank reads.
struct Round {
    generation: u64,
    deposited: usize,
    read: usize,
    tags: Vec<Option<Tag>>,
    /// Shared, so that each rank copies or sums them after leaving the lock.
    slots: Vec<Option<Arc<Vec<u8>>>>,
    floats: Vec<Option<Arc<Vec<f32>>>>,
    values: Vec<Option<Shared>>,
    failed: Option<String>,
    /// When the last rank deposited: the emulated link starts moving the round's data then.
    completed: Instant,
}

struct Rendezvous {
    round: Mutex<Round>,
    changed: Condvar,
    timeout: Duration,
    world: usize,
    /// The emulated link, if any ([`LocalGroup::emulating`]).
    link: Option<NetworkModel>,
}

/// W workers as threads of one process, each with its own handle (and its own burn `Device`).
/// Collectives meet at a shared rendezvous; a rank that does not arrive within the timeout, or
/// that [`abort`](LocalGroup::abort)s, turns the collective into an error on every rank — a dead
/// worker never hangs the group.
///
/// Every collective carries a tag — its kind, the broadcast root or the all-reduce length, and
/// the rank's collective sequence number — checked on every rank: ranks that call different
/// collectives (an all-gather against an all-reduce, different roots or lengths, one rank a
/// collective ahead) get a [`DistError::Protocol`] naming rank 0's call and the first rank
/// whose call differs, on every rank, and no data is combined.
///
/// **Shared memory.** The ranks of a plain group live in one process, so they
/// [share memory](Communicator::shares_memory): the protocols that decode codecs (the gathered
/// ones and TernGrad) decode each tensor's payloads on one rank and hand the result to the
/// others ([`share`](Communicator::share)), rather than every rank decoding every payload.
///
/// **Emulated links.** A group made with [`emulating`](LocalGroup::emulating) also takes, for
/// every collective, the time a real link would: each rank returns no earlier than
/// [`NetworkModel::seconds_sent`] of the collective's busiest link (the most bytes any rank
/// sends or receives in it, as [`Traffic`] counts them, plus one latency per round) after the
/// last rank joined. The waiting sleeps, as a NIC's transfer leaves the CPU free, so encoding
/// and decoding overlap the emulated wire as they would a real one: a protocol's step time on
/// one machine then shows what it would be on a cluster with that link (as far as the machine
/// has a core per worker).
pub struct LocalGroup {
    rank: usize,
    shared: Arc<Rendezvous>,
    sequence: AtomicU64,
    collectives: AtomicU64,
    rounds: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    /// The last all-gather's payloads end to end, and where each rank's ends.
    gathered: Vec<u8>,
    ends: Vec<usize>,
}

impl LocalGroup {
    /// Handles for `world` ranks (hand one to each worker thread). `timeout` bounds how long a
    /// collective waits for the slowest rank.
    pub fn new(world: usize, timeout: Duration) -> Result<Vec<LocalGroup>, DistError> {
        Self::group(world, timeout, None)
    }

    /// Handles for `link.workers` ranks whose collectives take the time `link` gives them (see
    /// *Emulated links* in [`LocalGroup`]); the topology is not used, the group's own
    /// traffic counts are charged. `timeout` bounds the wait for the slowest rank, as in
    /// [`new`](Self::new).
    pub fn emulating(link: NetworkModel, timeout: Duration) -> Result<Vec<LocalGroup>, DistError> {
        Self::group(link.workers, timeout, Some(link))
    }

    fn group(
        world: usize,
        timeout: Duration,
        link: Option<NetworkModel>,
    ) -> Result<Vec<LocalGroup>, DistError> {
        if world == 0 {
            return Err(DistError::InvalidConfig(
                "a group needs at least one worker".into(),
            ));
        }
        let shared = Arc::new(Rendezvous {
            round: Mutex::new(Round {
                generation: 0,
                deposited: 0,
                read: 0,
                tags: vec![None; world],
                slots: vec![None; world],
                floats: vec![None; world],
                values: vec![None; world],
                failed: None,
                completed: Instant::now(),
            }),
            changed: Condvar::new(),
            timeout,
            world,
            link,
        });
        Ok((0..world)
            .map(|rank| LocalGroup {
                rank,
                shared: shared.clone(),
                sequence: AtomicU64::new(0),
                collectives: AtomicU64::new(0),
                rounds: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                received: AtomicU64::new(0),
                gathered: Vec::new(),
                ends: Vec::new(),
            })
            .collect())
    }

    /// A handle that can [`abort`](Aborter::abort) the group after this one has been moved.
    pub fn aborter(&self) -> Aborter {
        Aborter {
            rank: self.rank,
            shared: self.shared.clone(),
        }
    }

    /// Marks the group failed (this worker cannot go on): every rank's next or pending
    /// collective returns an error naming this rank.
    pub fn abort(&self, reason: &str) {
        self.aborter().abort(reason);
    }
}

/// Aborts a [`LocalGroup`] from outside a worker (for example after it panicked).
pub struct Aborter {
    rank: usize,
    shared: Arc<Rendezvous>,
}

impl Aborter {
    /// See [`LocalGroup::abort`].
    pub fn abort(&self, reason: &str) {
        let mut round = self.shared.round.lock().unwrap_or_else(|p| p.into_inner());
        if round.failed.is_none() {
            round.failed = Some(format!("rank {} aborted: {reason}", self.rank));
        }
        self.shared.changed.notify_all();
    }

    /// The ranks waiting inside a collective that has not completed yet (they end on their own,
    /// at its timeout at the latest).
    pub(crate) fn waiting(&self) -> Vec<usize> {
        let round = self.shared.round.lock().unwrap_or_else(|p| p.into_inner());
        if round.read != 0 {
            return Vec::new();
        }
        (0..self.shared.world)
            .filter(|&r| round.tags[r].is_some())
            .collect()
    }
}

impl LocalGroup {
    /// Deposits this rank's contribution, waits for all, checks that every rank made the same
    /// call, and lets `read` see every rank's contribution (in rank order) before the round is
    /// released. Also returns when the last rank joined.
    fn exchange<T>(
        &self,
        kind: Kind,
        deposit: Deposit,
        read: impl FnOnce(&Round) -> T,
    ) -> Result<(T, Instant), DistError> {
        let tag = Tag {
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed),
            kind,
        };
        // An all-reduce's second round is inside its count; a share is not a network collective.
        if !matches!(kind, Kind::AllReduceShares { .. } | Kind::Share) {
            self.collectives.fetch_add(1, Ordering::Relaxed);
        }
        self.rounds
            .fetch_add(rounds(kind, self.shared.world), Ordering::Relaxed);
        let shared = &self.shared;
        let deadline = Instant::now() + shared.timeout;
        let mut round = shared.round.lock().unwrap_or_else(|p| p.into_inner());
        // Wait until the previous round has been read by everyone.
        while round.read != 0 && round.failed.is_none() {
            round = wait(shared, round, deadline, self.rank)?;
        }
        if let Some(reason) = &round.failed {
            return Err(DistError::PeerFailed(reason.clone()));
        }
        let generation = round.generation;
        round.tags[self.rank] = Some(tag);
        match deposit {
            Deposit::Nothing => {}
            Deposit::Bytes(bytes) => round.slots[self.rank] = Some(Arc::new(bytes)),
            Deposit::Floats(floats) => round.floats[self.rank] = Some(Arc::new(floats)),
            Deposit::Value(value) => round.values[self.rank] = Some(value),
        }
        round.deposited += 1;
        if round.deposited == shared.world {
            round.generation += 1;
            round.completed = Instant::now();
            shared.changed.notify_all();
        }
        while round.generation == generation && round.failed.is_none() {
            round = wait(shared, round, deadline, self.rank)?;
        }
        // A round every rank joined is delivered even if a rank failed since (it may have
        // failed decoding this very round); one that never completed is the failure.
        if round.generation == generation {
            let reason = round.failed.clone().expect("woken by a failure");
            return Err(DistError::PeerFailed(reason));
        }
        let mismatch = check_tags(&round.tags).err();
        let out = mismatch.is_none().then(|| (read(&round), round.completed));
        round.read += 1;
        if round.read == shared.world {
            round.read = 0;
            round.deposited = 0;
            round.tags.iter_mut().for_each(|t| *t = None);
            round.slots.iter_mut().for_each(|s| *s = None);
            round.floats.iter_mut().for_each(|s| *s = None);
            round.values.iter_mut().for_each(|s| *s = None);
            shared.changed.notify_all();
        }
        match (mismatch, out) {
            (Some(e), _) => Err(e),
            (None, out) => Ok(out.expect("read when every rank made the same call")),
        }
    }

    /// On an emulated link, sleeps until the link would have delivered a collective of `kind`
    /// that the last rank joined at `joined` and whose busiest link carried `bytes()`.
    fn wire(&self, kind: Kind, joined: Instant, bytes: impl FnOnce() -> u64) {
        if let Some(link) = &self.shared.link {
            let seconds = link.seconds_sent(bytes(), rounds(kind, self.shared.world));
            let done = joined + Duration::from_secs_f64(seconds);
            let now = Instant::now();
            if done > now {
                std::thread::sleep(done - now);
            }
        }
    }
}

fn wait<'a>(
    shared: &Rendezvous,
    guard: std::sync::MutexGuard<'a, Round>,
    deadline: Instant,
    rank: usize,
) -> Result<std::sync::MutexGuard<'a, Round>, DistError> {
    let now = Instant::now();
    if now >= deadline {
        let mut guard = guard;
        // Before the round is complete, the ranks that have not deposited are the missing ones.
        let missing: Vec<usize> = (0..shared.world)
            .filter(|&r| guard.read == 0 && guard.tags[r].is_none())
            .collect();
        let reason = if missing.is_empty() {
            format!(
                "rank {rank} timed out after {:?} waiting for the group to finish the previous \
                 collective",
                shared.timeout
            )
        } else {
            format!(
                "rank {rank} timed out after {:?} waiting for rank(s) {missing:?} to join the \
                 collective",
                shared.timeout
            )
        };
        guard.failed.get_or_insert(reason.clone());
        shared.changed.notify_all();
        return Err(DistError::Timeout(reason));
    }
    let (guard, _) = shared
        .changed
        .wait_timeout(guard, deadline - now)
        .unwrap_or_else(|p| p.into_inner());
    Ok(guard)
}

impl Drop for LocalGroup {
    fn drop(&mut self) {
        // A worker that exits (or unwinds from a panic) while others may still wait for it.
        if std::thread::panicking() {
            self.abort("the worker panicked");
        }
    }
}

impl Communicator for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&mut self, values: &mut [f32]) -> Result<(), DistError> {
        // Reduce-scatter, then all-gather: rank r sums the r-th of W equal shares of every
        // rank's contribution (in rank order, outside the lock), and the shares are shared — each
        // rank adds n floats instead of W·n. Every element is summed in rank order by one rank, so
        // every rank holds bit-identical sums (the tags checked the lengths).
        let (n, world) = (values.len(), self.shared.world);
        let kind = Kind::AllReduce { len: n as u64 };
        let (all, joined) = self.exchange(kind, Deposit::Floats(values.to_vec()), |round| {
            round.floats.clone()
        })?;
        let mine = share(self.rank, n, world);
        let mut sum = vec![0.0; mine.len()];
        sum_in_rank_order(
            all.iter()
                .flatten()
                .map(|c| c[mine.clone()].iter().copied()),
            &mut sum,
        );
        drop(all);
        let shares_kind = Kind::AllReduceShares { len: n as u64 };
        let (shares, _) = self.exchange(shares_kind, Deposit::Floats(sum), |round| {
            round.floats.clone()
        })?;
        for (r, part) in shares.iter().enumerate() {
            if let Some(part) = part {
                values[share(r, n, world)].copy_from_slice(part);
            }
        }
        let ring = ring_all_reduce_bytes(values.len(), self.shared.world);
        self.wire(kind, joined, || ring);
        self.sent.fetch_add(ring, Ordering::Relaxed);
        self.received.fetch_add(ring, Ordering::Relaxed);
        Ok(())
    }

    fn all_gather_borrowed(&mut self, payload: &[u8]) -> Result<Received<'_>, DistError> {
        let (mut gathered, mut ends) = (
            std::mem::take(&mut self.gathered),
            std::mem::take(&mut self.ends),
        );
        let outcome = self.exchange(Kind::AllGather, Deposit::Bytes(payload.to_vec()), |round| {
            round.slots.clone()
        });
        // Copied outside the lock, every rank at once.
        if let Ok((slots, _)) = &outcome {
            gathered.clear();
            ends.clear();
            for slot in slots {
                gathered.extend_from_slice(slot.as_deref().map_or(&[][..], Vec::as_slice));
                ends.push(gathered.len());
            }
        }
        (self.gathered, self.ends) = (gathered, ends);
        let (_, joined) = outcome?;
        let all = Received {
            bytes: &self.gathered,
            starts: None,
            ends: &self.ends,
        };
        self.wire(Kind::AllGather, joined, || {
            (0..all.world_size())
                .map(|r| {
                    let (sent, received) = all_gather_traffic(&all, r);
                    sent.max(received)
                })
                .max()
                .unwrap_or(0)
        });
        let (sent, received) = all_gather_traffic(&all, self.rank);
        self.sent.fetch_add(sent, Ordering::Relaxed);
        self.received.fetch_add(received, Ordering::Relaxed);
        Ok(all)
    }

    fn fail(&mut self, reason: &str) {
        self.abort(reason);
    }

    /// True unless the group [emulates a link](LocalGroup::emulating).
    fn shares_memory(&self) -> bool {
        self.shared.link.is_none()
    }

    fn share(&mut self, value: Shared) -> Result<Vec<Shared>, DistError> {
        let (values, _) = self.exchange(Kind::Share, Deposit::Value(value), |round| {
            round.values.clone()
        })?;
        Ok(values
            .into_iter()
            .map(|v| v.expect("every rank deposits a value in a share"))
            .collect())
    }

    fn broadcast(&mut self, bytes: Vec<u8>, root: usize) -> Result<Vec<u8>, DistError> {
        if root >= self.shared.world {
            return Err(DistError::InvalidConfig(format!(
                "broadcast root {root} outside the group"
            )));
        }
        let mine = match self.rank == root {
            true => Deposit::Bytes(bytes),
            false => Deposit::Nothing,
        };
        let kind = Kind::Broadcast { root: root as u64 };
        let (out, joined) = self.exchange(kind, mine, |round| round.slots[root].clone())?;
        let out = out.map_or_else(Vec::new, |b| b.as_ref().clone());
        // The root sends the bytes to every peer: its link is the busiest.
        let root_sent = out.len() as u64 * (self.shared.world as u64 - 1);
        self.wire(kind, joined, || root_sent);
        if self.rank == root {
            self.sent.fetch_add(root_sent, Ordering::Relaxed);
        } else {
            self.received.fetch_add(out.len() as u64, Ordering::Relaxed);
        }
        Ok(out)
    }

    fn barrier(&mut self) -> Result<(), DistError> {
        let ((), joined) = self.exchange(Kind::Barrier, Deposit::Nothing, |_| ())?;
        self.wire(Kind::Barrier, joined, || 0);
        Ok(())
    }

    fn traffic(&self) -> Traffic {
        Traffic {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            collectives: self.collectives.load(Ordering::Relaxed),
            rounds: self.rounds.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Payloads end to end, split at their ends; ends out of order, short or long are refused.
    #[test]
    fn received_splits_and_checks_its_ends() {
        let bytes = [1, 2, 3, 4, 5];
        let all = Received::new(&bytes, &[2, 2, 5]).unwrap();
        assert_eq!(all.world_size(), 3);
        assert_eq!(
            all.iter().collect::<Vec<_>>(),
            [&[1, 2][..], &[], &[3, 4, 5]]
        );
        assert_eq!(all.to_vecs()[2], vec![3, 4, 5]);
        assert!(Received::new(&bytes, &[3, 2, 5]).is_none(), "out of order");
        assert!(
            Received::new(&bytes, &[2, 4]).is_none(),
            "short of the bytes"
        );
        assert!(Received::new(&bytes, &[2, 6]).is_none(), "past the bytes");
        assert!(Received::new(&[], &[]).is_some(), "an empty group");
    }
}
