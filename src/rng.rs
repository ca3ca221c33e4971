//! The library's own generator (SplitMix64) for Plackett-Luce tie breaking and sampling: the
//! same draws on every device, and the process-wide torch seed is left alone.

/// Advances `state` and returns a uniform draw in [0, 1).
pub(crate) fn next_uniform(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}
