//! KD-code embeddings (Chen, Min & Sun, ICML 2018) for burn 0.22: a compact drop-in for
//! `burn::nn::Embedding` that stores a discrete code per symbol.
//!
//! Not implemented yet: it lands with its issue (see the README's crate table).
