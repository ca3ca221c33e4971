//! DAPO's soft overlong penalty, for the host's reward (TRL `get_soft_overlong_punishment`,
//! verl `reward_model.overlong_buffer`): 0 up to `max_length - buffer` tokens, then falling
//! linearly to -factor at `max_length`, and -factor beyond it.

use crate::error::{Error, Result};

pub fn soft_overlong_penalty(
    length: u64,
    max_length: u64,
    buffer: u64,
    factor: f64,
) -> Result<f64> {
    if buffer == 0 || buffer > max_length {
        return Err(Error::invalid(format!(
            "overlong buffer must be in [1, max_length = {max_length}], got {buffer}"
        )));
    }
    if !(factor.is_finite() && factor >= 0.0) {
        return Err(Error::invalid(format!(
            "overlong penalty factor must be finite and >= 0, got {factor}"
        )));
    }
    let free = max_length - buffer;
    let fraction = match length {
        l if l <= free => 0.0,
        l if l <= max_length => (l - free) as f64 / buffer as f64,
        _ => 1.0,
    };
    Ok(-factor * fraction)
}

#[cfg(test)]
mod tests {
    use super::soft_overlong_penalty as p;

    /// TRL's values: max 20, cache 4 → 0 through 16, -(l - 16) / 4 through 20, -1 after.
    #[test]
    fn matches_trl_soft_punishment() {
        let trl = |l: u64| match l {
            l if l <= 16 => 0.0,
            l if l <= 20 => (16.0 - l as f64) / 4.0,
            _ => -1.0,
        };
        for l in 0..30 {
            assert_eq!(p(l, 20, 4, 1.0).unwrap(), trl(l), "length {l}");
        }
        assert_eq!(p(18, 20, 4, 0.5).unwrap(), -0.25);
        assert!(p(5, 20, 0, 1.0).is_err());
        assert!(p(5, 20, 21, 1.0).is_err());
        assert!(p(5, 20, 4, f64::NAN).is_err());
    }
}
