//! The MPI transport (feature `mpi`): one process per rank, started by `mpirun`.

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::Communicator as _;
use mpi::{Count, Threading};

use crate::DistError;
use crate::comm::{Communicator, Traffic, all_gather_traffic, ring_all_reduce_bytes};

/// One MPI process's handle on `MPI_COMM_WORLD` (built on the [`mpi`] crate, rsmpi).
///
/// Start the program with `mpirun -np W program`; every process calls [`Mpi::init`] once and
/// hands the result to [`DataParallel`](crate::DataParallel) like a [`LocalGroup`](crate::LocalGroup)
/// handle. MPI is finalised when the handle is dropped.
///
/// * **Sums are identical on every rank.** `all_reduce_sum` is a reduction to rank 0 followed
///   by a broadcast of its result, so every replica receives the same bits whatever order the
///   MPI library adds in (an `MPI_Allreduce` may add in a different order on different ranks).
///   Replicas therefore stay bit-identical for every protocol, as with `LocalGroup`; the sums
///   themselves may differ in the last bits from `LocalGroup`'s rank-order sums.
/// * **Byte counters** follow the same model as `LocalGroup` (a ring all-reduce,
///   `2·(W−1)/W` of the buffer; all-gather of each payload to every peer), the figures the
///   [`NetworkModel`](crate::NetworkModel) expects, not the MPI library's internal traffic.
/// * **Failures.** MPI's default error handler aborts the whole job on a communication error,
///   and `mpirun` terminates every rank when one process dies, so a dead rank ends the job
///   rather than hanging it. Buffers over `i32::MAX` elements (MPI's count type) are rejected
///   with [`DistError::InvalidConfig`].
/// * The handle may move between threads (MPI is initialised with `MPI_THREAD_SERIALIZED`);
///   `&mut self` on every collective keeps calls serialised.
///
/// A CUDA user could add burn's NCCL all-reduce (`burn::tensor::distributed`) the same way: a
/// type implementing [`Communicator`] whose `all_reduce_sum` calls it.
pub struct Mpi {
    universe: Universe,
    rank: usize,
    world: usize,
    traffic: Traffic,
    gather_buffer: Vec<u8>,
}

impl Mpi {
    /// Initialises MPI (once per process) and returns this rank's handle.
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
        Ok(Self {
            universe,
            rank,
            world: size,
            traffic: Traffic::default(),
            gather_buffer: Vec::new(),
        })
    }

    /// `MPI_COMM_WORLD` as an [`mpi`] crate communicator, for MPI calls of your own beside
    /// kindling's collectives (they do not count in [`traffic`](Communicator::traffic)).
    pub fn world(&self) -> mpi::topology::SimpleCommunicator {
        self.universe.world()
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
        let world = self.universe.world();
        let root = world.process_at_rank(0);
        if self.rank == 0 {
            let mut sum = vec![0.0f32; values.len()];
            root.reduce_into_root(&values[..], &mut sum[..], SystemOperation::sum());
            values.copy_from_slice(&sum);
        } else {
            root.reduce_into(&values[..], SystemOperation::sum());
        }
        root.broadcast_into(values);
        let bytes = ring_all_reduce_bytes(values.len(), self.world);
        self.traffic.sent += bytes;
        self.traffic.received += bytes;
        Ok(())
    }

    fn all_gather(&mut self, payload: Vec<u8>) -> Result<Vec<Vec<u8>>, DistError> {
        let world = self.universe.world();
        let own = payload.len() as u64;
        let mut lengths = vec![0u64; self.world];
        world.all_gather_into(&own, &mut lengths[..]);
        let counts = lengths
            .iter()
            .map(|&l| count(l as usize, "an all-gather payload"))
            .collect::<Result<Vec<Count>, _>>()?;
        let total: usize = lengths.iter().map(|&l| l as usize).sum();
        count(total, "an all-gather")?;
        let displs: Vec<Count> = counts
            .iter()
            .scan(0, |at, &c| {
                let d = *at;
                *at += c;
                Some(d)
            })
            .collect();
        // One receive buffer for the handle's lifetime: a fresh one per call costs page faults
        // (and the MPI library's buffer registration) on every large all-gather.
        if self.gather_buffer.len() < total {
            self.gather_buffer.resize(total, 0);
        }
        let flat = &mut self.gather_buffer[..total];
        {
            let mut partition = PartitionMut::new(&mut flat[..], &counts[..], &displs[..]);
            world.all_gather_varcount_into(&payload[..], &mut partition);
        }
        // Each peer's payload is copied out of the receive buffer (decoders take owned bytes);
        // this rank's own is the payload it sent.
        let mut own_payload = Some(payload);
        let mut all = Vec::with_capacity(self.world);
        let mut at = 0;
        for (r, &l) in lengths.iter().enumerate() {
            let bytes = &flat[at..at + l as usize];
            all.push(match own_payload.take_if(|_| r == self.rank) {
                Some(own) => own,
                None => bytes.to_vec(),
            });
            at += l as usize;
        }
        let (sent, received) = all_gather_traffic(&all, self.rank);
        self.traffic.sent += sent;
        self.traffic.received += received;
        Ok(all)
    }

    fn broadcast(&mut self, bytes: Vec<u8>, root: usize) -> Result<Vec<u8>, DistError> {
        if root >= self.world {
            return Err(DistError::InvalidConfig(format!(
                "broadcast root {root} outside the group"
            )));
        }
        let world = self.universe.world();
        let process = world.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        process.broadcast_into(&mut len);
        count(len as usize, "a broadcast")?;
        let mut out = if self.rank == root {
            bytes
        } else {
            vec![0u8; len as usize]
        };
        process.broadcast_into(&mut out[..]);
        if self.rank == root {
            self.traffic.sent += len * (self.world as u64 - 1);
        } else {
            self.traffic.received += len;
        }
        Ok(out)
    }

    fn barrier(&mut self) -> Result<(), DistError> {
        self.universe.world().barrier();
        Ok(())
    }

    fn traffic(&self) -> Traffic {
        self.traffic
    }
}
