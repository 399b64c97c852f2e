//! Recovering one-hidden-layer ReLU networks for burn 0.22: the teacher model, tensor
//! initialization with gradient descent (Zhang et al. 2019) and alternating minimization
//! (Jagatap & Hegde 2018).
//!
//! Not implemented yet: it lands with its issue (see the README's crate table).
