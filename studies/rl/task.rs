//! The synthetic reasoning task written by scripts/rl_sft.py (task.json): multi-digit addition
//! "aaa+bbb=" -> the zero-padded sum, most significant digit first, then EOS. Prompts, the
//! exact-match reward, and the held-out evaluation (greedy and temperature-1 sampling, batched).

use adpo::Model;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::Path;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Deserialize)]
pub struct SftInfo {
    pub steps: u64,
    pub seconds: f64,
    pub test_acc: f64,
    pub val_acc: f64,
    pub stamp: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    pub task: String,
    pub vocab: Vec<String>,
    pub digits: u32,
    pub plus_id: i64,
    pub equals_id: i64,
    pub eos_id: i64,
    pub pad_id: i64,
    pub prompt_len: usize,
    pub answer_len: usize,
    pub test_pairs: Vec<[u64; 2]>,
    pub val_pairs: Vec<[u64; 2]>,
    pub sft: SftInfo,
    /// Test and validation pairs: never used as RL training prompts.
    #[serde(skip)]
    excluded: HashSet<(u64, u64)>,
}

/// SplitMix64 (the same generator as the library's): training prompts and held-out sampling.
pub struct Rng(u64);

impl Rng {
    /// A stream determined by a list of keys (seed, purpose, ...).
    pub fn new(keys: &[u64]) -> Self {
        let mut r = Rng(0x0AD9_0BA7_D175_2025);
        for &k in keys {
            r.0 ^= k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            r.next_u64();
        }
        r
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

impl Task {
    pub fn load(dir: &Path) -> Result<Task, String> {
        let path = dir.join("task.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read {}: {e} (run .venv/bin/python scripts/rl_sft.py {} first)",
                path.display(),
                dir.display()
            )
        })?;
        let mut task: Task =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        task.excluded = task
            .test_pairs
            .iter()
            .chain(&task.val_pairs)
            .map(|p| (p[0], p[1]))
            .collect();
        if task.prompt_len != 2 * task.digits as usize + 2
            || task.answer_len != task.digits as usize + 2
        {
            return Err(format!("{}: inconsistent lengths", path.display()));
        }
        Ok(task)
    }

    pub fn vocab_size(&self) -> i64 {
        self.vocab.len() as i64
    }

    fn digits_of(n: u64, width: usize) -> Vec<i64> {
        let s = format!("{n:0width$}");
        s.bytes().map(|c| (c - b'0') as i64).collect()
    }

    pub fn prompt(&self, a: u64, b: u64) -> Vec<i64> {
        let d = self.digits as usize;
        let mut p = Self::digits_of(a, d);
        p.push(self.plus_id);
        p.extend(Self::digits_of(b, d));
        p.push(self.equals_id);
        p
    }

    /// The correct completion: the zero-padded sum, then EOS.
    pub fn answer(&self, a: u64, b: u64) -> Vec<i64> {
        let mut ans = Self::digits_of(a + b, self.digits as usize + 1);
        ans.push(self.eos_id);
        ans
    }

    /// Exact-match reward of a completion (the generated tokens, possibly followed by padding):
    /// 1 if the tokens up to and including the first EOS are exactly the answer, else 0 (also
    /// when no EOS was generated).
    pub fn reward(&self, a: u64, b: u64, completion: &[i64]) -> f64 {
        let end = match completion.iter().position(|&t| t == self.eos_id) {
            Some(i) => i + 1,
            None => return 0.0,
        };
        if completion[..end] == self.answer(a, b)[..] {
            1.0
        } else {
            0.0
        }
    }

    /// `n` training prompts (operand pairs), never a test or validation pair.
    pub fn train_pairs(&self, rng: &mut Rng, n: usize) -> Vec<(u64, u64)> {
        let top = 10u64.pow(self.digits);
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let pair = (rng.below(top), rng.below(top));
            if !self.excluded.contains(&pair) {
                v.push(pair);
            }
        }
        v
    }

    /// Held-out exact-match accuracy of `model` on the test pairs: greedy decoding, or (when `rng`
    /// is given) one temperature-1 sample per prompt. One batched forward per answer position.
    pub fn accuracy(&self, model: &Model, rng: Option<&mut Rng>) -> f64 {
        let n = self.test_pairs.len();
        let ids: Vec<i64> = self
            .test_pairs
            .iter()
            .flat_map(|p| self.prompt(p[0], p[1]))
            .collect();
        let mut seqs = Tensor::from_slice(&ids).view([n as i64, self.prompt_len as i64]);
        let mut rng = rng;
        tch::no_grad(|| {
            for _ in 0..self.answer_len {
                let logits = model
                    .logits(&seqs, &seqs.ones_like())
                    .expect("forward")
                    .select(1, -1)
                    .to_kind(Kind::Double);
                let next = match rng.as_deref_mut() {
                    None => logits.argmax(1, true),
                    Some(r) => {
                        let cdf = logits.softmax(1, Kind::Double).cumsum(1, Kind::Double);
                        let u: Vec<f64> = (0..n).map(|_| r.uniform()).collect();
                        let u = Tensor::from_slice(&u).unsqueeze(1) * cdf.narrow(1, -1, 1);
                        cdf.lt_tensor(&u)
                            .sum_dim_intlist(1, true, Kind::Int64)
                            .clamp_max(self.vocab_size() - 1)
                    }
                };
                seqs = Tensor::cat(&[seqs.shallow_clone(), next], 1);
            }
        });
        let width = self.prompt_len + self.answer_len;
        let out = Vec::<i64>::try_from(seqs.reshape([-1])).expect("ids");
        let correct: f64 = self
            .test_pairs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                self.reward(
                    p[0],
                    p[1],
                    &out[i * width + self.prompt_len..(i + 1) * width],
                )
            })
            .sum();
        correct / n as f64
    }

    /// Checks of the reward function on the test pairs (run at start-up; an error is a bug).
    pub fn self_test(&self) -> Result<(), String> {
        for p in self.test_pairs.iter().take(200) {
            let (a, b) = (p[0], p[1]);
            let ans = self.answer(a, b);
            let mut padded = ans.clone();
            padded.extend([self.pad_id, self.pad_id]);
            let mut wrong = ans.clone();
            wrong[0] = (wrong[0] + 1) % 10;
            let mut no_eos = ans.clone();
            no_eos.pop();
            let mut late_eos = ans[..ans.len() - 1].to_vec();
            late_eos.extend([0, self.eos_id]);
            let sum: u64 = ans[..ans.len() - 1]
                .iter()
                .fold(0, |acc, &d| acc * 10 + d as u64);
            let cases = [
                (&ans, 1.0),
                (&padded, 1.0),
                (&wrong, 0.0),
                (&no_eos, 0.0),
                (&late_eos, 0.0),
            ];
            if sum != a + b || ans.len() != self.answer_len {
                return Err(format!("answer({a}, {b}) = {ans:?} is not the sum"));
            }
            for (c, want) in cases {
                if self.reward(a, b, c) != want {
                    return Err(format!("reward({a}, {b}, {c:?}) != {want}"));
                }
            }
        }
        Ok(())
    }
}
