//! A network cost model: turns one step's byte counts into the communication time it would take
//! on a cluster, so a run on one machine reports time-to-accuracy as it would be elsewhere.

use crate::DistError;

/// How the workers are connected for an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Bandwidth-optimal ring all-reduce of a dense buffer of `B` bytes:
    /// `2·(W−1)/W · B / bandwidth + 2·(W−1) · latency` (the latency term per collective).
    RingAllReduce,
    /// Ring all-gather of one payload of `b` bytes per worker (compressed exchanges): each
    /// worker forwards the others' payloads, `(W−1) · b / bandwidth + (W−1) · latency` (the
    /// latency term per collective).
    AllGather,
    /// A parameter server: the `W` workers push their payloads of `b` bytes over the server's
    /// link and pull back the dense aggregate of `B` bytes each:
    /// `W·b / bandwidth + W·B / bandwidth + 2 · latency` (the latency term per collective).
    ParameterServer,
}

/// Link bandwidth, latency and topology of a modelled cluster of `workers` machines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkModel {
    /// Workers W.
    pub workers: usize,
    /// Link bandwidth in bits per second (for example `1e9` for 1 Gb/s).
    pub bandwidth_bits: f64,
    /// Per-message latency in seconds.
    pub latency: f64,
    /// The topology.
    pub topology: Topology,
}

impl NetworkModel {
    /// A model with the given workers, bandwidth (bits/s), latency (s) and topology.
    pub fn new(
        workers: usize,
        bandwidth_bits: f64,
        latency: f64,
        topology: Topology,
    ) -> Result<Self, DistError> {
        if workers == 0
            || !(bandwidth_bits.is_finite() && bandwidth_bits > 0.0)
            || !(latency.is_finite() && latency >= 0.0)
        {
            return Err(DistError::InvalidConfig(format!(
                "network model needs workers ≥ 1, a positive bandwidth and a latency ≥ 0 (got {workers}, {bandwidth_bits}, {latency})"
            )));
        }
        Ok(Self {
            workers,
            bandwidth_bits,
            latency,
            topology,
        })
    }

    /// Modelled seconds of one exchange of `collectives` collectives (at least one is charged)
    /// in which each worker contributes `payload_bytes` in all and the dense aggregate has
    /// `dense_bytes` (only the parameter server sends the aggregate back): the bandwidth term
    /// of the bytes, plus the latency term once per collective — an exchange that runs one
    /// collective per tensor pays it per tensor ([`StepStats::collectives`](crate::StepStats)).
    pub fn seconds(&self, payload_bytes: u64, dense_bytes: u64, collectives: u64) -> f64 {
        let w = self.workers as f64;
        let bytes_per_second = self.bandwidth_bits / 8.0;
        let rounds = collectives.max(1) as f64;
        match self.topology {
            Topology::RingAllReduce => {
                2.0 * (w - 1.0) / w * payload_bytes as f64 / bytes_per_second
                    + rounds * 2.0 * (w - 1.0) * self.latency
            }
            Topology::AllGather => {
                (w - 1.0) * payload_bytes as f64 / bytes_per_second
                    + rounds * (w - 1.0) * self.latency
            }
            Topology::ParameterServer => {
                w * payload_bytes as f64 / bytes_per_second
                    + w * dense_bytes as f64 / bytes_per_second
                    + rounds * 2.0 * self.latency
            }
        }
    }

    /// Modelled seconds of the traffic a transport counted: the bytes this rank sent over its
    /// link, plus the latency once per message round ([`Traffic::rounds`](crate::Traffic)).
    /// [`seconds`](Self::seconds) models a topology from the payloads' sizes; this charges what
    /// the transport actually ran, so it sees what the payloads alone do not: `Mpi`'s header
    /// exchange before each collective, small payloads and all-reduces riding inline in it (an
    /// all-gather, `W − 1` copies of the slot, where a ring all-reduce would send `2·(W−1)/W`
    /// of the buffer), the float all-reduce as a ring. The topology is not used: the transport's
    /// counts already follow its algorithm.
    pub fn seconds_sent(&self, sent_bytes: u64, rounds: u64) -> f64 {
        sent_bytes as f64 * 8.0 / self.bandwidth_bits + rounds as f64 * self.latency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas() {
        // 16 workers at 1 Gb/s, no latency: a 100 MB ring all-reduce moves 2·15/16·100 MB.
        let ring = NetworkModel::new(16, 1e9, 0.0, Topology::RingAllReduce).unwrap();
        assert!((ring.seconds(100_000_000, 0, 1) - 2.0 * 15.0 / 16.0 * 0.8).abs() < 1e-9);
        let gather = NetworkModel::new(16, 1e9, 1e-4, Topology::AllGather).unwrap();
        assert!((gather.seconds(1_000_000, 0, 1) - (15.0 * 0.008 + 15.0 * 1e-4)).abs() < 1e-12);
        // Latency is paid per collective: 4 all-gathers of the same bytes pay it 4 times.
        let four = gather.seconds(1_000_000, 0, 4);
        assert!((four - (15.0 * 0.008 + 4.0 * 15.0 * 1e-4)).abs() < 1e-12);
        let ps = NetworkModel::new(4, 8e9, 0.0, Topology::ParameterServer).unwrap();
        assert!((ps.seconds(1_000, 4_000, 1) - (4.0 * 1e-6 + 4.0 * 4e-6)).abs() < 1e-15);
        assert!(NetworkModel::new(0, 1e9, 0.0, Topology::AllGather).is_err());
        // Counted traffic: 1 MB sent at 1 Gb/s and 6 rounds of 1e-4 s.
        assert!((gather.seconds_sent(1_000_000, 6) - (0.008 + 6.0 * 1e-4)).abs() < 1e-12);
        // A transport that counts as the topologies do gives the same figures: an all-gather
        // of 1 MB payloads sends 15 MB in 15 rounds, a ring all-reduce 2·15/16 of the buffer
        // in 2·15 rounds.
        let counted = gather.seconds_sent(15 * 1_000_000, 15);
        assert!((counted - gather.seconds(1_000_000, 0, 1)).abs() < 1e-12);
        let ring = NetworkModel::new(16, 1e9, 1e-4, Topology::RingAllReduce).unwrap();
        let counted = ring.seconds_sent(2 * 15 * 100_000_000 / 16, 30);
        assert!((counted - ring.seconds(100_000_000, 0, 1)).abs() < 1e-9);
    }
}
