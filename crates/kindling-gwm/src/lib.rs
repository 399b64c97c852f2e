//! Graph weighted models on pictures (Amortila & Rabusseau, arXiv 1806.08297) for burn 0.22:
//! tensor-network modules contracted row by row, and picture languages to learn.
//!
//! Not implemented yet: it lands with its issue (see the README's crate table).
