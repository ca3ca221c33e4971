//! One random stream per row, named by what the row is (the call's seed, the prompt's tokens,
//! which copy of that prompt, which of its k candidates) rather than by where it sits in the
//! batch: the same seed gives a row the same draws whatever the order of the prompts or the
//! other prompts beside it. All the draws of a call are made up front and sent to the device
//! once.

use crate::rng::next_uniform;
use tch::{Device, Kind, Tensor};

/// FNV-1a over the prompt's tokens.
fn prompt_hash(prompt: &[i64]) -> u64 {
    prompt.iter().fold(0xCBF2_9CE4_8422_2325, |h, &t| {
        (h ^ t as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// The stream's starting state of candidate `j` of the `copy`-th occurrence of `prompt`.
fn row_state(seed: u64, prompt: &[i64], copy: u64, j: u64) -> u64 {
    let mut state = seed ^ prompt_hash(prompt);
    let mut mix = |x: u64| {
        state ^= x;
        next_uniform(&mut state);
    };
    mix(copy.wrapping_mul(0xA24B_AED4_963E_E407));
    mix(j.wrapping_mul(0x9FB2_1C65_1E98_DF25));
    state
}

/// Uniform draws [rows, steps] in `kind` on `device`: row r = prompt r / k, candidate r % k.
pub fn uniforms(
    seed: u64,
    prompts: &[&[i64]],
    k: usize,
    steps: usize,
    kind: Kind,
    device: Device,
) -> Tensor {
    let mut values = Vec::with_capacity(prompts.len() * k * steps);
    for (i, prompt) in prompts.iter().enumerate() {
        let copy = prompts[..i].iter().filter(|p| *p == prompt).count() as u64;
        for j in 0..k as u64 {
            let mut state = row_state(seed, prompt, copy, j);
            values.extend((0..steps).map(|_| next_uniform(&mut state)));
        }
    }
    Tensor::from_slice(&values)
        .view([(prompts.len() * k) as i64, steps as i64])
        .to_kind(kind)
        .to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rows_draws_do_not_depend_on_its_neighbours() {
        let a: &[i64] = &[1, 2, 3];
        let b: &[i64] = &[4, 5];
        let alone = uniforms(7, &[a], 2, 5, Kind::Double, Device::Cpu);
        let beside = uniforms(7, &[b, a, b], 2, 5, Kind::Double, Device::Cpu);
        assert!(alone.equal(&beside.narrow(0, 2, 2)));
        // the second copy of b differs from the first; another seed differs
        assert!(!beside.narrow(0, 0, 2).equal(&beside.narrow(0, 4, 2)));
        assert!(!alone.equal(&uniforms(8, &[a], 2, 5, Kind::Double, Device::Cpu)));
        // candidates of one prompt differ
        assert!(!alone.get(0).equal(&alone.get(1)));
    }
}
