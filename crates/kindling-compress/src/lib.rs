//! Gradient compression for burn 0.22: codecs that turn a gradient tensor into a self-describing
//! byte payload and back (QSGD, TernGrad, sign and scaled sign, ATOMO with entry-wise, spectral and
//! Fourier atoms, top-k, random-k, PowerSGD math, error feedback).
//!
//! Not implemented yet: the codecs land with their issue (see the README's crate table).
