//! A fixed pseudo-random stream for the unit tests' inputs (xorshift64), the same on every
//! platform and independent of the codecs' own randomness.

/// The stream's successive 64-bit states from `seed`.
pub(crate) fn xorshift(seed: u64) -> impl Iterator<Item = u64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    std::iter::repeat_with(move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    })
}
