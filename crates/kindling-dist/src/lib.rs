//! Compressed data-parallel training for burn 0.22: transports (in-process worker groups, MPI),
//! exchange protocols over `kindling-compress` codecs, a network cost model and burn-train
//! integration.
//!
//! Not implemented yet: it lands with its issue (see the README's crate table).
