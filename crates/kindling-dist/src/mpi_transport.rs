//! The MPI transport (feature `mpi`): one process per rank, started by `mpirun`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mpi::collective::{CommunicatorCollectives, Root};
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::{Count, Threading};

use crate::DistError;
use crate::comm::{
    Communicator, Kind, Received, Tag, Traffic, all_gather_traffic, check_tags,
    ring_all_reduce_bytes, rounds, share, sum_in_rank_order,
};

/// The watchdog's default: how long a collective may wait for its slowest rank.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Words in a collective's header: sequence number, kind, argument (all-reduce length or
/// broadcast root), payload length.
const HEADER_WORDS: usize = 4;

/// Bytes of a header (its words, little-endian), before the inline slot.
const HEADER_BYTES: usize = 8 * HEADER_WORDS;

/// Word `i` of a header.
fn word(header: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(header[8 * i..8 * i + 8].try_into().expect("8 bytes"))
}

/// The largest inline slot: all-gathers of payloads up to this size travel inside the header,
/// in one collective.
const MAX_INLINE: usize = 4096;

/// One MPI process's handle on `MPI_COMM_WORLD` (built on the [`mpi`] crate, rsmpi).
///
/// Start the program with `mpirun -np W program`; every process calls [`Mpi::init`] once and
/// hands the result to [`DataParallel`](crate::DataParallel) like a [`LocalGroup`](crate::LocalGroup)
/// handle.
///
/// * **Sums are identical on every rank, and to [`LocalGroup`](crate::LocalGroup)'s.**
///   `all_reduce_sum` is an all-to-all that hands each rank one share of every rank's buffer,
///   which it sums in rank order, followed by an all-gather of the sums. Every entry is summed
///   once, in rank order, so every replica receives the same bits (an `MPI_Allreduce` may add in
///   a different order on different ranks), the bits a `LocalGroup` computes; each rank's link
///   carries the ring all-reduce's `2·(W−1)/W` of the buffer, not a root's copies for every
///   peer.
///   Replicas therefore stay bit-identical for every protocol, as with `LocalGroup`.
/// * **Tagged collectives.** Every collective starts with an all-gather of a 32-byte header —
///   its sequence number, kind, broadcast root or all-reduce length, and payload length — which
///   every rank checks before any data moves. Ranks that call different collectives get a
///   [`DistError::Protocol`] naming rank 0's call and the first rank whose call differs, on
///   every rank; data is never mixed. The header doubles as the all-gather's length exchange,
///   and carries small data inline: a slot as large as the data of the collective two back
///   (an all-gather's largest payload or an all-reduce's buffer, up to 4 KiB: a step repeats
///   its collectives), so small all-gathers (step votes,
///   TernGrad's scales, small buckets) take one collective instead of two, and small
///   all-reduces (PowerSGD's rounds) one instead of three, summed on every rank in rank order.
/// * **Zero-copy all-gather.** [`all_gather_borrowed`](Communicator::all_gather_borrowed)
///   returns the peers' payloads where MPI wrote them, in one receive buffer kept for the
///   handle's lifetime.
/// * **Byte counters** count every byte this rank sends and receives, headers included: headers
///   and payloads of an all-gather as sent to each peer, a broadcast's payload once per peer
///   from the root, and the float all-reduce as `2·(W−1)/W` of the buffer (its all-to-all's and
///   its all-gather's `(W−1)/W` each, what a ring sends); a small all-reduce that rides inline
///   counts its headers as sent.
///   [`Traffic::rounds`] counts `W − 1` message rounds per header exchange, all-gather or
///   broadcast and `2·(W − 1)` per ring all-reduce, so that
///   [`NetworkModel::seconds_sent`](crate::NetworkModel::seconds_sent) charges what ran.
/// * **Bounded failure.** No rank waits forever:
///   - a collective that does not complete within the timeout (default 5 minutes,
///     [`with_timeout`](Mpi::with_timeout)) — a peer stopped, stalled, left early or failed —
///     is caught by the handle's watchdog thread, which prints the collective, the timeout and
///     where the missing ranks are, then ends the process with status 1 (which `mpirun` turns
///     into the end of every rank). The collectives themselves are MPI's blocking ones, which
///     are faster than its non-blocking ones polled against a deadline. Each rank posts the
///     collective it entered to a board in shared memory, which its node's peers read without
///     its help, so the message names the culprit even when it is stopped: e.g. "an all-gather
///     as its collective #2 did not complete within 8s: rank 3 is still at its collective #1",
///     or "rank 1 has finished (dropped its handle)". Ranks on other nodes (or with an MPI
///     library that shares no memory) are reported as not visible;
///   - [`fail`](Communicator::fail) (called by [`DataParallel`](crate::DataParallel) and
///     `CompressedDdp` on every error: a local encode error, a payload that does not decode,
///     a protocol mismatch) prints the reason with the rank and aborts the job at once;
///   - a rank that panics aborts the job when the handle is dropped during the unwind (the
///     panic message is printed first);
///   - dropping the handle waits (up to twice the timeout) until every rank has dropped its
///     own, then finalises MPI: a rank that finishes while its peers still wait in a collective
///     (fewer batches, a missing call) does not hang in `MPI_Finalize`; the peers' watchdog ends
///     the job, naming it as finished (or its own, at twice the timeout);
///   - a process that dies ends the job through `mpirun`.
///
///   Buffers over `i32::MAX` elements (MPI's count type) are rejected with
///   [`DistError::InvalidConfig`].
/// * The handle may move between threads (MPI is initialised with `MPI_THREAD_SERIALIZED`);
///   `&mut self` on every collective keeps calls serialised.
///
/// A CUDA user could add burn's NCCL all-reduce (`burn::tensor::distributed`) the same way: a
/// type implementing [`Communicator`] whose `all_reduce_sum` calls it.
pub struct Mpi {
    /// A duplicate of the world for the finishing handshake, so it never matches a collective
    /// that a peer is still waiting in (freed before the universe finalises MPI).
    finish: FinishComm,
    /// What this rank is blocked in and where each rank is, read by the watchdog thread.
    watch: Arc<Watch>,
    /// The watchdog thread (`None` once stopped).
    watchdog: Option<JoinHandle<()>>,
    universe: Universe,
    rank: usize,
    world: usize,
    sequence: u64,
    /// The collective this rank waits in (`None` while finishing).
    waiting: Option<u64>,
    traffic: Traffic,
    /// Every rank's header of the last collective: `HEADER_BYTES`, then the inline slot.
    headers: Vec<u8>,
    /// Bytes of data every header carries inline (a multiple of 8, at most `MAX_INLINE`): see
    /// [`Mpi::remember`].
    inline: usize,
    /// The data size of the last all-gather or all-reduce (`usize::MAX` before any): the next
    /// slot but one.
    last_data: usize,
    /// Where each rank's inline payload starts in `headers`.
    starts: Vec<usize>,
    /// This rank's header, reused.
    mine: Vec<u8>,
    /// Every rank's tag of the last collective, reused.
    tags: Vec<Option<Tag>>,
    /// Every rank's payload length of the last collective, reused.
    lengths: Vec<usize>,
    gather_buffer: Vec<u8>,
    /// The all-reduce's pieces of this rank's share, one from each rank, reused.
    reduce_buffer: Vec<f32>,
    /// This rank's share of the all-reduce's sum, reused.
    reduce_block: Vec<f32>,
    ends: Vec<usize>,
}

/// The finishing handshake's communicator.
struct FinishComm(SimpleCommunicator);

// SAFETY: an MPI communicator handle names process-wide MPI state, not state of the thread that
// created it. MPI is initialised with `MPI_THREAD_SERIALIZED`, and the handle is used only in
// `Mpi`'s drop, which no other call of the same `Mpi` can overlap.
unsafe impl Send for FinishComm {}

/// Every rank's progress, readable by the ranks on its node: a shared-memory MPI window
/// (`MPI_Win_allocate_shared` on the node's communicator) holding, per rank, `sequence + 1` of
/// the last collective it entered (0 before any, [`Board::FINISHING`] once it drops its handle).
/// Posting and reading are plain atomic loads and stores — no MPI call, so a watchdog that fires
/// reads a stopped peer's board as easily as a live one's, and its message names the rank that
/// is missing instead of only the collective that stalled. Ranks on other nodes are not visible.
struct Board {
    /// The window, when the MPI library could allocate it.
    window: Option<mpi::ffi::MPI_Win>,
    /// Per world rank: its board, when it is on this node.
    boards: Vec<Option<*const AtomicU64>>,
    rank: usize,
}

// SAFETY: the window handle, its memory and the node communicator are process-wide MPI state,
// used only through `&mut Mpi` (serialised calls) or in its drop. Shared with the watchdog
// thread, the boards are only read and written by atomic loads and stores (`post`,
// `whereabouts`); `free`, the one MPI call, needs `&mut` after that thread has ended.
unsafe impl Send for Board {}
unsafe impl Sync for Board {}

impl Board {
    /// The value of a rank that is dropping its handle.
    const FINISHING: u64 = u64::MAX;

    /// Allocates the boards of `world`'s ranks on each node (collective).
    fn new(world: &SimpleCommunicator) -> Self {
        use mpi::ffi;
        use mpi::raw::AsRaw;
        let rank = world.rank() as usize;
        let node = world.split_shared(0);
        let mut world_ranks = vec![0i32; node.size() as usize];
        node.all_gather_into(&(rank as i32), &mut world_ranks[..]);
        let mut mine: *mut u64 = std::ptr::null_mut();
        let mut window = std::mem::MaybeUninit::<ffi::MPI_Win>::uninit();
        let mut boards = vec![None; world.size() as usize];
        // SAFETY: valid out-pointers. MPI allocates 8 bytes per rank of `node` in memory shared
        // by the node's processes, aligned for a u64, writes this rank's address into `mine` and
        // the peers' into `peer` (`MPI_Win_shared_query`); they stay valid until `MPI_Win_free`.
        // A library that cannot share memory returns an error (not the default abort, thanks to
        // the error handler): the boards then stay invisible.
        unsafe {
            ffi::MPI_Comm_set_errhandler(node.as_raw(), ffi::RSMPI_ERRORS_RETURN);
            let allocated = ffi::MPI_Win_allocate_shared(
                8,
                8,
                ffi::RSMPI_INFO_NULL,
                node.as_raw(),
                (&mut mine as *mut *mut u64).cast(),
                window.as_mut_ptr(),
            ) == ffi::MPI_SUCCESS as i32;
            // Every rank of the node learns whether all of them have a window.
            let mut everywhere = false;
            node.all_reduce_into(
                &allocated,
                &mut everywhere,
                mpi::collective::SystemOperation::logical_and(),
            );
            if !everywhere {
                if allocated {
                    ffi::MPI_Win_free(window.as_mut_ptr());
                }
                return Self {
                    window: None,
                    boards,
                    rank,
                };
            }
            let window = window.assume_init();
            (*mine.cast::<AtomicU64>()).store(0, Ordering::Release);
            for (local, &global) in world_ranks.iter().enumerate() {
                let (mut size, mut unit) = (0, 0);
                let mut peer: *mut u64 = std::ptr::null_mut();
                ffi::MPI_Win_shared_query(
                    window,
                    local as i32,
                    &mut size,
                    &mut unit,
                    (&mut peer as *mut *mut u64).cast(),
                );
                boards[global as usize] = Some(peer.cast_const().cast::<AtomicU64>());
            }
            node.barrier();
            Self {
                window: Some(window),
                boards,
                rank,
            }
        }
    }

    /// Posts this rank's progress.
    fn post(&self, value: u64) {
        if let Some(mine) = self.boards[self.rank] {
            // SAFETY: this rank's board, alive until `free`.
            unsafe { (*mine).store(value, Ordering::Release) }
        }
    }

    /// Where the other ranks are, as seen by this rank waiting in its collective #`waiting` (or
    /// finishing, `waiting = None`): the ranks not with it, one phrase each.
    fn whereabouts(&self, waiting: Option<u64>) -> String {
        let here = waiting.map_or(Self::FINISHING, |s| s + 1);
        let mut missing = Vec::new();
        let mut unseen = Vec::new();
        for (peer, board) in self.boards.iter().enumerate() {
            if peer == self.rank {
                continue;
            }
            // SAFETY: a board of this node, alive until `free`.
            let Some(value) = board.map(|b| unsafe { (*b).load(Ordering::Acquire) }) else {
                unseen.push(peer.to_string());
                continue;
            };
            missing.push(match value {
                v if v == here => continue,
                Self::FINISHING => format!("rank {peer} has finished (dropped its handle)"),
                0 => format!("rank {peer} has not entered any collective"),
                v if waiting.is_some_and(|s| v - 1 < s) => format!(
                    "rank {peer} is still at its collective #{} (stopped, or busy outside \
                     kindling's collectives)",
                    v - 1
                ),
                v => format!("rank {peer} is at its collective #{}", v - 1),
            });
        }
        if !unseen.is_empty() {
            missing.push(format!(
                "the progress of rank(s) {} is not visible here (another node, or an MPI \
                 library without shared memory)",
                unseen.join(", ")
            ));
        }
        if missing.is_empty() {
            "every rank has entered it".into()
        } else {
            missing.join("; ")
        }
    }

    /// Frees the window (collective over the node: every rank must call it).
    fn free(&mut self) {
        self.boards.iter_mut().for_each(|b| *b = None);
        if let Some(mut window) = self.window.take() {
            // SAFETY: the window from `new`, not used afterwards.
            unsafe {
                mpi::ffi::MPI_Win_free(&mut window);
            }
        }
    }
}

/// What a rank's collective is blocked in, for the watchdog's message.
#[derive(Clone, Copy)]
enum Phase {
    /// The header exchange that starts every collective.
    Header(Tag),
    /// An all-reduce's all-to-all and all-gather of `len` floats.
    AllReduce { len: u64 },
    /// An all-gather's data, `total` bytes.
    AllGather { total: usize },
    /// A broadcast's `len` bytes from `root`.
    Broadcast { len: usize, root: usize },
    /// The finishing handshake, when the handle drops.
    Finishing,
}

impl Phase {
    /// The phrase for a rank waiting in its collective #`waiting`.
    fn describe(self, waiting: Option<u64>) -> String {
        let n = waiting.unwrap_or_default();
        match self {
            Phase::Header(tag) => tag.to_string(),
            Phase::AllReduce { len } => {
                format!("the all-reduce of {len} floats (collective #{n})")
            }
            Phase::AllGather { total } => {
                format!("the all-gather of {total} bytes (collective #{n})")
            }
            Phase::Broadcast { len, root } => {
                format!("the broadcast of {len} bytes from rank {root} (collective #{n})")
            }
            Phase::Finishing => "finishing (every rank dropping its handle)".into(),
        }
    }
}

/// A blocking call in progress: what, in which collective, since when.
#[derive(Clone, Copy)]
struct Armed {
    phase: Phase,
    waiting: Option<u64>,
    since: Instant,
}

/// What the watchdog thread reads: the call this rank is blocked in, the timeout, the boards.
///
/// Collectives are MPI's blocking ones. Non-blocking collectives, polled against a deadline on
/// the calling thread (as before), are slower: Open MPI's raw non-blocking all-gather took
/// 1.3–1.6× the blocking call's time between 2 ranks at 1 KiB, 1.5× at 16 KiB and 2.0–2.4× at
/// 128 KiB. A thread of its own keeps the bound instead: it wakes every 1/20 of the timeout (at
/// most every 200 ms) and ends the process when a call has been blocked past the timeout.
/// Arming costs a lock and a clock read per call, within the noise of a 1 KiB all-gather.
struct Watch {
    armed: Mutex<Option<Armed>>,
    /// The timeout, in nanoseconds.
    timeout: AtomicU64,
    stop: AtomicBool,
    board: Board,
    rank: usize,
    world: usize,
}

/// Disarms the watch when the blocking call returns (or unwinds).
struct Disarm<'a>(&'a Watch);

impl Drop for Disarm<'_> {
    fn drop(&mut self) {
        *self.0.lock() = None;
    }
}

impl Watch {
    fn lock(&self) -> MutexGuard<'_, Option<Armed>> {
        self.armed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout.load(Ordering::Relaxed))
    }

    fn set_timeout(&self, timeout: Duration) {
        let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        self.timeout.store(nanos, Ordering::Relaxed);
    }

    /// Runs the blocking `call` under the watch.
    fn blocking<R>(&self, phase: Phase, waiting: Option<u64>, call: impl FnOnce() -> R) -> R {
        *self.lock() = Some(Armed {
            phase,
            waiting,
            since: Instant::now(),
        });
        let _disarm = Disarm(self);
        call()
    }

    /// The watchdog thread's loop: past the timeout, prints the blocked call, the timeout and
    /// where the peers are, and ends this process with status 1 (`mpirun` then ends every
    /// rank). It does not call `MPI_Abort`: MPI is initialised for serialised calls, and the
    /// rank's own thread is inside one.
    fn run(&self) {
        while !self.stop.load(Ordering::Acquire) {
            let timeout = self.timeout();
            let period = (timeout / 20).clamp(Duration::from_millis(1), Duration::from_millis(200));
            std::thread::park_timeout(period);
            let armed = *self.lock();
            if let Some(armed) = armed.filter(|a| a.since.elapsed() >= timeout) {
                let whereabouts = self.board.whereabouts(armed.waiting);
                report(
                    self.rank,
                    self.world,
                    &format!(
                        "{} did not complete within {timeout:?}: {whereabouts}",
                        armed.phase.describe(armed.waiting)
                    ),
                );
                // SAFETY: ends the process at once, without running exit handlers that could
                // call into the MPI library the rank's thread is blocked in.
                unsafe { libc::_exit(1) }
            }
        }
    }
}

/// Prints why this rank ends the job.
fn report(rank: usize, world: usize, reason: &str) {
    eprintln!("kindling-dist: rank {rank} of {world}: {reason}; aborting the MPI job");
}

impl Mpi {
    /// Initialises MPI (once per process) and returns this rank's handle, with the default
    /// 5-minute collective timeout.
    ///
    /// Fails if MPI was initialised before in this process or the library cannot serialise
    /// calls from several threads.
    pub fn init() -> Result<Self, DistError> {
        let (universe, provided) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| {
                DistError::InvalidConfig("MPI is already initialised in this process".into())
            })?;
        if provided < Threading::Serialized {
            return Err(DistError::InvalidConfig(format!(
                "the MPI library provides {provided:?} threading, kindling needs Serialized"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let watch = Arc::new(Watch {
            armed: Mutex::new(None),
            timeout: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            board: Board::new(&world),
            rank,
            world: size,
        });
        watch.set_timeout(DEFAULT_TIMEOUT);
        let watchdog = {
            let watch = Arc::clone(&watch);
            std::thread::Builder::new()
                .name("kindling-mpi-watchdog".into())
                .spawn(move || watch.run())
                .map_err(|e| {
                    DistError::InvalidConfig(format!("cannot start the watchdog thread: {e}"))
                })?
        };
        Ok(Self {
            finish: FinishComm(world.duplicate()),
            watch,
            watchdog: Some(watchdog),
            universe,
            rank,
            world: size,
            sequence: 0,
            waiting: None,
            traffic: Traffic::default(),
            headers: vec![0; HEADER_BYTES * size],
            inline: 0,
            last_data: usize::MAX,
            starts: Vec::new(),
            mine: Vec::new(),
            tags: Vec::with_capacity(size),
            lengths: Vec::with_capacity(size),
            gather_buffer: Vec::new(),
            reduce_buffer: Vec::new(),
            reduce_block: Vec::new(),
            ends: Vec::new(),
        })
    }

    /// How long a collective (and, twice this, the finishing handshake) waits for the slowest
    /// rank before this rank aborts the job. Rank 0's validation or checkpointing runs while the others wait
    /// in their next collective, so keep it above the longest of those. Zero is rejected.
    pub fn with_timeout(self, timeout: Duration) -> Result<Self, DistError> {
        if timeout.is_zero() {
            return Err(DistError::InvalidConfig(
                "timeout: an MPI collective timeout must be positive".into(),
            ));
        }
        self.watch.set_timeout(timeout);
        Ok(self)
    }

    /// The collective timeout.
    pub fn timeout(&self) -> Duration {
        self.watch.timeout()
    }

    /// `MPI_COMM_WORLD` as an [`mpi`] crate communicator, for MPI calls of your own beside
    /// kindling's collectives (they are not tagged, bounded or counted in
    /// [`traffic`](Communicator::traffic)).
    pub fn world(&self) -> SimpleCommunicator {
        self.universe.world()
    }

    /// Prints `reason` and ends every rank of the job.
    fn abort(&self, reason: &str) -> ! {
        report(self.rank, self.world, reason);
        self.universe.world().abort(1)
    }

    /// Sizes the next header's slot after a collective that carried `bytes` of data per rank
    /// (an all-gather's largest payload, an all-reduce's buffer): the size of the collective
    /// before this one, if it fits `MAX_INLINE`. A training step repeats its collectives, so
    /// the collective two back is the best guess for the next one's size: alternating small
    /// collectives (a step's two PowerSGD rounds, a vote and its payloads) each get a slot of
    /// their own size, where one slot for both made the smaller pay for the larger (PowerSGD's
    /// 2.1 KB round carried a 3.6 KB slot). Every rank sees the same sizes, so every rank picks
    /// the same slot. Every header pays for the slot, so it stays small: on a slow link a larger
    /// one costs more than the rounds it saves.
    fn remember(&mut self, bytes: usize) {
        self.inline = if self.last_data <= MAX_INLINE {
            self.last_data.next_multiple_of(8)
        } else {
            0
        };
        self.last_data = bytes;
    }

    /// Exchanges this rank's header for `kind` (with `len` payload bytes, and the payload itself
    /// in the inline slot when `inline` is given and fits), checks that every rank made the same
    /// call, and leaves the ranks' payload lengths in `lengths`.
    fn agree(&mut self, kind: Kind, len: usize, inline: Option<&[u8]>) -> Result<(), DistError> {
        let tag = Tag {
            sequence: self.sequence,
            kind,
        };
        self.sequence += 1;
        self.waiting = Some(tag.sequence);
        self.watch.board.post(tag.sequence + 1);
        self.traffic.collectives += 1;
        self.traffic.rounds += rounds(Kind::AllGather, self.world);
        let stride = HEADER_BYTES + self.inline;
        let mut mine = std::mem::take(&mut self.mine);
        mine.clear();
        for word in tag.header(len as u64) {
            mine.extend_from_slice(&word.to_le_bytes());
        }
        if let Some(payload) = inline.filter(|p| p.len() <= self.inline) {
            mine.extend_from_slice(payload);
        }
        mine.resize(stride, 0);
        let world = self.universe.world();
        let mut headers = std::mem::take(&mut self.headers);
        headers.resize(stride * self.world, 0);
        self.watch.blocking(Phase::Header(tag), self.waiting, || {
            world.all_gather_into(&mine[..], &mut headers[..])
        });
        self.tags.clear();
        self.tags
            .extend(headers.chunks_exact(stride).map(Tag::parse));
        self.lengths.clear();
        self.lengths
            .extend(headers.chunks_exact(stride).map(|h| word(h, 3) as usize));
        self.headers = headers;
        self.mine = mine;
        let peers = stride as u64 * (self.world as u64 - 1);
        self.traffic.sent += peers;
        self.traffic.received += peers;
        check_tags(&self.tags)
    }
}

/// A tag on the wire: sequence, kind, root or length, payload length.
impl Tag {
    fn header(&self, len: u64) -> [u64; HEADER_WORDS] {
        let (kind, arg) = match self.kind {
            Kind::AllReduce { len } => (1, len),
            Kind::AllGather => (2, 0),
            Kind::Broadcast { root } => (3, root),
            Kind::Barrier => (4, 0),
            Kind::AllReduceShares { len } => (5, len),
            Kind::Share => (6, 0),
        };
        [self.sequence, kind, arg, len]
    }

    fn parse(header: &[u8]) -> Option<Self> {
        let kind = match (word(header, 1), word(header, 2)) {
            (1, len) => Kind::AllReduce { len },
            (2, 0) => Kind::AllGather,
            (3, root) => Kind::Broadcast { root },
            (4, 0) => Kind::Barrier,
            (5, len) => Kind::AllReduceShares { len },
            (6, 0) => Kind::Share,
            _ => return None,
        };
        Some(Self {
            sequence: word(header, 0),
            kind,
        })
    }
}

/// `len` as an MPI count, or an error naming the collective.
fn count(len: usize, what: &str) -> Result<Count, DistError> {
    Count::try_from(len).map_err(|_| {
        DistError::InvalidConfig(format!(
            "{what} of {len} elements exceeds MPI's count limit ({})",
            Count::MAX
        ))
    })
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, values: &mut [f32]) -> Result<(), DistError> {
        count(values.len(), "an all-reduce")?;
        let n = values.len() as u64;
        let bytes = 4 * values.len();
        let slot = self.inline;
        if bytes <= slot {
            // Small enough to ride in the header exchange: every rank sums the ranks' values in
            // rank order, the same f32 additions everywhere, so the result is bit-identical on
            // every rank after one collective instead of three (header, all-to-all, all-gather).
            let mut mine = Vec::with_capacity(bytes);
            for v in values.iter() {
                mine.extend_from_slice(&v.to_le_bytes());
            }
            self.agree(Kind::AllReduce { len: n }, bytes, Some(&mine))?;
            self.remember(bytes);
            let stride = HEADER_BYTES + slot;
            let headers = &self.headers;
            sum_in_rank_order(
                (0..self.world).map(|r| {
                    let at = r * stride + HEADER_BYTES;
                    headers[at..at + bytes]
                        .chunks_exact(4)
                        .map(|x| f32::from_le_bytes(x.try_into().expect("4 bytes")))
                }),
                values,
            );
            return Ok(());
        }
        self.agree(Kind::AllReduce { len: n }, bytes, None)?;
        self.remember(bytes);
        // A reduce-scatter by hand (the library's was 2× slower in memory, and adds in its own
        // order), then an all-gather: see the type's docs.
        let (len, world) = (values.len(), self.world);
        let counts: Vec<Count> = (0..world)
            .map(|r| share(r, len, world).len() as Count)
            .collect();
        let displs: Vec<Count> = (0..world)
            .map(|r| share(r, len, world).start as Count)
            .collect();
        let mine = share(self.rank, len, world).len();
        let mut pieces = std::mem::take(&mut self.reduce_buffer);
        pieces.resize(world * mine, 0.0);
        let piece_counts = vec![mine as Count; world];
        let piece_displs: Vec<Count> = (0..world).map(|r| (r * mine) as Count).collect();
        let world_comm = self.universe.world();
        let phase = Phase::AllReduce { len: n };
        let send = Partition::new(&values[..], &counts[..], &displs[..]);
        let mut receive = PartitionMut::new(&mut pieces[..], &piece_counts[..], &piece_displs[..]);
        self.watch.blocking(phase, self.waiting, || {
            world_comm.all_to_all_varcount_into(&send, &mut receive)
        });
        let mut own = std::mem::take(&mut self.reduce_block);
        own.resize(mine, 0.0);
        sum_in_rank_order(
            pieces.chunks_exact(mine.max(1)).map(|p| p.iter().copied()),
            &mut own,
        );
        let mut gathered = PartitionMut::new(&mut values[..], &counts[..], &displs[..]);
        self.watch.blocking(phase, self.waiting, || {
            world_comm.all_gather_varcount_into(&own[..], &mut gathered)
        });
        self.reduce_buffer = pieces;
        self.reduce_block = own;
        let bytes = ring_all_reduce_bytes(values.len(), self.world);
        self.traffic.rounds += rounds(Kind::AllReduce { len: n }, self.world);
        self.traffic.sent += bytes;
        self.traffic.received += bytes;
        Ok(())
    }

    fn all_gather_borrowed(&mut self, payload: &[u8]) -> Result<Received<'_>, DistError> {
        count(payload.len(), "an all-gather payload")?;
        let slot = self.inline;
        self.agree(Kind::AllGather, payload.len(), Some(payload))?;
        let largest = self.lengths.iter().copied().max().unwrap_or(0);
        self.remember(largest);
        if largest <= slot {
            // Every payload came inline: one collective, the headers' bytes are the traffic,
            // and the payloads are read where they arrived, inside the headers.
            let stride = HEADER_BYTES + slot;
            self.starts.clear();
            self.ends.clear();
            for (r, &len) in self.lengths.iter().enumerate() {
                self.starts.push(r * stride + HEADER_BYTES);
                self.ends.push(r * stride + HEADER_BYTES + len);
            }
            return Ok(Received::spaced(&self.headers, &self.starts, &self.ends));
        }
        let counts = self
            .lengths
            .iter()
            .map(|&l| count(l, "an all-gather payload"))
            .collect::<Result<Vec<Count>, _>>()?;
        let total: usize = self.lengths.iter().sum();
        count(total, "an all-gather")?;
        self.ends.clear();
        self.ends.extend(self.lengths.iter().scan(0, |at, &l| {
            *at += l;
            Some(*at)
        }));
        let displs: Vec<Count> = self
            .ends
            .iter()
            .zip(&counts)
            .map(|(&end, &c)| (end - c as usize) as Count)
            .collect();
        // One receive buffer for the handle's lifetime: a fresh one per call costs page faults
        // (and the MPI library's buffer registration) on every large all-gather.
        if self.gather_buffer.len() < total {
            self.gather_buffer.resize(total, 0);
        }
        let mut buffer = std::mem::take(&mut self.gather_buffer);
        let world = self.universe.world();
        let mut partition = PartitionMut::new(&mut buffer[..total], &counts[..], &displs[..]);
        self.watch
            .blocking(Phase::AllGather { total }, self.waiting, || {
                world.all_gather_varcount_into(payload, &mut partition)
            });
        self.gather_buffer = buffer;
        let all = Received::new(&self.gather_buffer[..total], &self.ends)
            .expect("the ends are the running sum of the lengths");
        let (sent, received) = all_gather_traffic(&all, self.rank);
        self.traffic.rounds += rounds(Kind::AllGather, self.world);
        self.traffic.sent += sent;
        self.traffic.received += received;
        Ok(all)
    }

    fn fail(&mut self, reason: &str) {
        self.abort(reason)
    }

    fn broadcast(&mut self, bytes: Vec<u8>, root: usize) -> Result<Vec<u8>, DistError> {
        if root >= self.world {
            return Err(DistError::InvalidConfig(format!(
                "broadcast root {root} outside the group"
            )));
        }
        let own = if self.rank == root { bytes.len() } else { 0 };
        count(own, "a broadcast")?;
        self.agree(Kind::Broadcast { root: root as u64 }, own, None)?;
        let len = self.lengths[root];
        let mut out = if self.rank == root {
            bytes
        } else {
            vec![0u8; len]
        };
        let world = self.universe.world();
        let process = world.process_at_rank(root as i32);
        self.watch
            .blocking(Phase::Broadcast { len, root }, self.waiting, || {
                process.broadcast_into(&mut out[..])
            });
        self.traffic.rounds += rounds(Kind::Broadcast { root: root as u64 }, self.world);
        if self.rank == root {
            self.traffic.sent += len as u64 * (self.world as u64 - 1);
        } else {
            self.traffic.received += len as u64;
        }
        Ok(out)
    }

    /// The header exchange is itself the barrier.
    fn barrier(&mut self) -> Result<(), DistError> {
        self.agree(Kind::Barrier, 0, None)
    }

    fn traffic(&self) -> Traffic {
        self.traffic
    }
}

impl Drop for Mpi {
    /// Finishes in step with the other ranks, or ends the job: a rank that unwinds from a panic
    /// aborts at once; otherwise it waits (up to twice the timeout) until every rank is
    /// finishing, then MPI is finalised.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.abort("this rank panicked (the panic message is above)");
        }
        // Twice the collectives' timeout: a peer already waiting in a collective for this rank
        // then reports first, naming this rank as finished, rather than this rank reporting the
        // peer as merely busy (which of two equal timeouts fired first was down to scheduling).
        self.watch.set_timeout(self.timeout().saturating_mul(2));
        self.waiting = None;
        self.watch.board.post(Board::FINISHING);
        let finish = &self.finish.0;
        self.watch
            .blocking(Phase::Finishing, None, || finish.barrier());
        self.watch.stop.store(true, Ordering::Release);
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.thread().unpark();
            let _ = watchdog.join();
        }
        if let Some(watch) = Arc::get_mut(&mut self.watch) {
            watch.board.free();
        }
    }
}
