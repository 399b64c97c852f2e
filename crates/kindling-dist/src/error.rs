use thiserror::Error;

/// Why a distributed step failed. Every rank of a group sees an error when one rank fails.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DistError {
    /// A setting is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Another rank failed or aborted; this rank cannot go on.
    #[error("a peer failed: {0}")]
    PeerFailed(String),
    /// A collective did not complete in time (a rank died or hangs).
    #[error("timed out: {0}")]
    Timeout(String),
    /// A payload from a rank did not decode.
    #[error("payload from rank {rank} for parameter {param} does not decode: {reason}")]
    Decode {
        /// The sender.
        rank: usize,
        /// The parameter's index in module order.
        param: usize,
        /// The decoder's message.
        reason: String,
    },
    /// A gradient could not be encoded (for example NaN/Inf entries).
    #[error("cannot encode parameter {param} on rank {rank}: {reason}")]
    Encode {
        /// This rank.
        rank: usize,
        /// The parameter's index in module order.
        param: usize,
        /// The encoder's message.
        reason: String,
    },
    /// The ranks disagree on what they exchange (shapes, counts, parameters).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A saved exchange state is corrupt, truncated, missing or does not fit the protocol.
    #[error("reducer checkpoint: {0}")]
    Checkpoint(String),
    /// A worker thread panicked.
    #[error("worker {rank} panicked: {message}")]
    Panicked {
        /// The worker's rank.
        rank: usize,
        /// The panic message.
        message: String,
    },
}
