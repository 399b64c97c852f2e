//! The Deductron recurrent network (Rychlik, arXiv 1806.09038) for burn 0.22: the module, the
//! W-language data, simulated annealing and gradient training.
//!
//! Not implemented yet: it lands with its issue (see the README's crate table).
