//! CSV and markdown output, the final-numbers table (mean ± 95 % CI over seeds) and the checks.

use crate::stats::{summarize, Summary};
use crate::task::Task;
use crate::{Method, Params, Run, METHODS};
use std::fmt::Write as _;
use std::io::Write as _;

/// Final numbers of one run.
#[derive(Clone, Copy, Debug)]
pub struct Final {
    /// Held-out greedy exact-match accuracy after the last step.
    pub acc_greedy: f64,
    /// Held-out accuracy of one temperature-1 sample per prompt after the last step.
    pub acc_sampled: f64,
    /// Mean training reward over the last 10 % of the steps.
    pub reward_final: f64,
    /// Highest per-step training reward (the paper's metric: peak reward of a 128-sample batch).
    pub reward_peak: f64,
    /// Mean training reward over all steps.
    pub reward_mean: f64,
}

pub fn tail_len(p: &Params) -> usize {
    (p.steps / 10).max(1)
}

pub fn final_of(r: &Run, p: &Params) -> Final {
    let last = r.evals.last().expect("evals");
    let rewards: Vec<f64> = r.steps.iter().map(|s| s.reward).collect();
    let tail = &rewards[rewards.len() - tail_len(p).min(rewards.len())..];
    Final {
        acc_greedy: last.acc_greedy,
        acc_sampled: last.acc_sampled,
        reward_final: tail.iter().sum::<f64>() / tail.len() as f64,
        reward_peak: rewards.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        reward_mean: rewards.iter().sum::<f64>() / rewards.len() as f64,
    }
}

type Getter = fn(&Final) -> f64;
type Metric = (&'static str, Getter);

pub fn metrics(p: &Params) -> Vec<(String, Getter)> {
    let m: [Metric; 5] = [
        ("held-out accuracy, greedy (final)", |f| f.acc_greedy),
        ("held-out accuracy, 1 sample at T = 1 (final)", |f| {
            f.acc_sampled
        }),
        ("", |f| f.reward_final),
        ("training reward, peak step (the paper's metric)", |f| {
            f.reward_peak
        }),
        ("training reward, mean over all steps", |f| f.reward_mean),
    ];
    m.iter()
        .map(|(name, f)| {
            let name = if name.is_empty() {
                format!("training reward, mean of the last {} steps", tail_len(p))
            } else {
                name.to_string()
            };
            (name, *f)
        })
        .collect()
}

fn runs_of(runs: &[Run], m: Method) -> Vec<&Run> {
    runs.iter().filter(|r| r.method == m).collect()
}

fn fmt(s: &Summary) -> String {
    if s.n < 2 {
        format!("{:.3}", s.mean)
    } else {
        format!("{:.3} ± {:.3}", s.mean, s.ci)
    }
}

fn fmt_signed(s: &Summary) -> String {
    let bold = s.n >= 2 && (s.mean - s.ci > 0.0 || s.mean + s.ci < 0.0);
    let text = if s.n < 2 {
        format!("{:+.3}", s.mean)
    } else {
        format!("{:+.3} ± {:.3}", s.mean, s.ci)
    };
    if bold {
        format!("**{text}**")
    } else {
        text
    }
}

/// The starting point (step 0, before any RL update), mean over the runs.
fn start_values(runs: &[Run]) -> (f64, f64, f64) {
    let n = runs.len().max(1) as f64;
    let g = runs.iter().map(|r| r.evals[0].acc_greedy).sum::<f64>() / n;
    let s = runs.iter().map(|r| r.evals[0].acc_sampled).sum::<f64>() / n;
    let w = runs.iter().map(|r| r.steps[0].reward).sum::<f64>() / n;
    (g, s, w)
}

/// Markdown table of the final numbers: mean ± 95 % CI over seeds, and the paired difference.
pub fn final_table(p: &Params, task: &Task, runs: &[Run]) -> String {
    let (a, g) = (runs_of(runs, Method::Adpo), runs_of(runs, Method::Grpo));
    let (g0, s0, w0) = start_values(runs);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nFinal numbers after {} steps ({} seeds; mean ± 95 % CI over seeds; bold: the paired CI excludes 0). Held-out: {} fixed test prompts.\n",
        p.steps,
        p.seeds,
        task.test_pairs.len()
    );
    let _ = writeln!(
        s,
        "| metric | SFT start | {} | {} | ADPO − GRPO (paired) | ADPO / GRPO − 1 |",
        Method::Adpo.label(),
        Method::Grpo.label()
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for (i, (name, f)) in metrics(p).into_iter().enumerate() {
        let va: Vec<f64> = a.iter().map(|r| f(&final_of(r, p))).collect();
        let vg: Vec<f64> = g.iter().map(|r| f(&final_of(r, p))).collect();
        // Paired by seed (runs are sorted by method, then seed).
        let diff: Vec<f64> = a
            .iter()
            .zip(&g)
            .map(|(x, y)| {
                assert_eq!(x.seed, y.seed);
                f(&final_of(x, p)) - f(&final_of(y, p))
            })
            .collect();
        let (sa, sg) = (summarize(&va), summarize(&vg));
        let start = match i {
            0 => format!("{g0:.3}"),
            1 => format!("{s0:.3}"),
            _ => format!("{w0:.3} (step 1)"),
        };
        let rel = if sg.mean > 0.0 {
            format!("{:+.1} %", 100.0 * (sa.mean / sg.mean - 1.0))
        } else {
            "–".into()
        };
        let _ = writeln!(
            s,
            "| {name} | {start} | {} | {} | {} | {rel} |",
            fmt(&sa),
            fmt(&sg),
            fmt_signed(&summarize(&diff))
        );
    }
    s
}

pub fn params_table(p: &Params, task: &Task) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| parameter | value |");
    let _ = writeln!(s, "|---|---|");
    let rows: Vec<(&str, String)> = vec![
        ("task", task.task.clone()),
        ("SFT policy", format!("scripts/rl_sft.py (stamp {}): {} AdamW steps ({:.0} s), stopped at validation accuracy {:.3}; held-out greedy accuracy {:.3}", task.sft.stamp, task.sft.steps, task.sft.seconds, task.sft.val_acc, task.sft.test_acc)),
        ("held-out set", format!("{} fixed test pairs (plus {} validation pairs), never used as training prompts", task.test_pairs.len(), task.val_pairs.len())),
        ("training prompts", format!("{} per step, uniform operand pairs outside the held-out sets, drawn from the seed (the same prompts for both methods)", p.prompts_per_step)),
        ("samples", format!("K = {} per prompt from Trainer::sample, temperature {}, no top-k/top-p, at most {} new tokens, EOS ends a sample", p.k, p.temperature, task.answer_len)),
        ("reward", "exact match: 1 if the tokens up to the first EOS are the zero-padded sum and EOS, else 0 (no partial credit)".into()),
        ("steps", format!("{} (one sampled batch and {} optimizer update(s) per step)", p.steps, p.epochs_per_batch)),
        ("optimizer", format!("AdamW lr {}, betas (0.9, 0.999), eps 1e-8, weight decay {}; cosine schedule, warmup {} steps, to 0; gradient-norm clip {}", p.lr, p.weight_decay, p.warmup_steps, p.grad_clip.map_or("none".to_string(), |c| c.to_string()))),
        ("ADPO", format!("{{{}}}", Method::Adpo.objective_json())),
        ("GRPO", format!("{{{}}} (library defaults otherwise: token-level ratios, dapo aggregation, z-scored group advantages)", Method::Grpo.objective_json())),
        ("evaluation", format!("every {} steps: greedy decoding, and one temperature-1 sample per prompt (the same random numbers for both methods)", p.eval_every)),
        ("seeds", format!("{}; a seed fixes the training prompts and the sampler's generator", p.seeds)),
    ];
    for (k, v) in rows {
        let _ = writeln!(s, "| {k} | {} |", v.replace('|', "\\|"));
    }
    s
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        String::new()
    }
}

pub fn write_all(p: &Params, task: &Task, runs: &[Run], secs: f64) -> std::io::Result<()> {
    let out = &p.out;
    let mut f = std::fs::File::create(out.join("steps.csv"))?;
    writeln!(f, "method,seed,step,reward,solved_any,flat_groups,loss,grad_norm,lr,tau,mean_abs_score,clip_fraction,completion_len,step_ms")?;
    for r in runs {
        for s in &r.steps {
            writeln!(
                f,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{:.2}",
                r.method.name(),
                r.seed,
                s.step,
                s.reward,
                s.solved_any,
                s.flat_groups,
                num(s.loss),
                num(s.grad_norm),
                num(s.lr),
                num(s.tau),
                num(s.mean_abs_score),
                num(s.clip_fraction),
                s.completion_len,
                s.ms
            )?;
        }
    }
    let mut f = std::fs::File::create(out.join("eval.csv"))?;
    writeln!(f, "method,seed,step,acc_greedy,acc_sampled")?;
    for r in runs {
        for e in &r.evals {
            writeln!(
                f,
                "{},{},{},{},{}",
                r.method.name(),
                r.seed,
                e.step,
                e.acc_greedy,
                e.acc_sampled
            )?;
        }
    }
    let mut f = std::fs::File::create(out.join("runs.csv"))?;
    writeln!(f, "method,seed,steps,acc_greedy_start,acc_greedy,acc_sampled,reward_final,reward_peak,reward_mean,param_change,seconds")?;
    for r in runs {
        let fin = final_of(r, p);
        writeln!(
            f,
            "{},{},{},{},{},{},{},{},{},{},{:.1}",
            r.method.name(),
            r.seed,
            r.steps.len(),
            r.evals[0].acc_greedy,
            fin.acc_greedy,
            fin.acc_sampled,
            fin.reward_final,
            fin.reward_peak,
            fin.reward_mean,
            r.param_change,
            r.seconds
        )?;
    }
    let mut f = std::fs::File::create(out.join("results.md"))?;
    writeln!(
        f,
        "# RL study: listwise ADPO vs GRPO ({} mode)\n",
        if p.quick { "quick" } else { "full" }
    )?;
    writeln!(
        f,
        "{} runs in {secs:.0} s on {} threads.\n",
        runs.len(),
        p.threads
    )?;
    write!(f, "{}", params_table(p, task))?;
    write!(f, "{}", final_table(p, task, runs))?;
    writeln!(f, "\nPer run:\n")?;
    writeln!(
        f,
        "| method | seed | held-out greedy | held-out sampled | reward, last {} steps | peak reward | seconds |",
        tail_len(p)
    )?;
    writeln!(f, "|---|---|---|---|---|---|---|")?;
    for r in runs {
        let fin = final_of(r, p);
        writeln!(
            f,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} |",
            r.method.label(),
            r.seed,
            fin.acc_greedy,
            fin.acc_sampled,
            fin.reward_final,
            fin.reward_peak,
            r.seconds
        )?;
    }
    Ok(())
}

/// Checks of the machinery (and, in full mode, of learning). Returns the failures.
pub fn checks(p: &Params, task: &Task, runs: &[Run], repeats: &[Run]) -> Vec<String> {
    let mut fails = Vec::new();
    let mut check = |ok: bool, what: String| {
        println!("check: {what}: {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            fails.push(what);
        }
    };
    check(
        runs.len() == p.seeds * METHODS.len(),
        format!(
            "{} runs finished (expected {})",
            runs.len(),
            p.seeds * METHODS.len()
        ),
    );
    // The Rust greedy decoder on the TorchScript policy reproduces the Python accuracy.
    let tol = 2.0 / task.test_pairs.len() as f64 + 1e-12;
    for r in runs {
        let a0 = r.evals[0].acc_greedy;
        check(
            (a0 - task.sft.test_acc).abs() <= tol,
            format!(
                "{} seed {}: step-0 greedy accuracy {a0:.4} matches the SFT script's {:.4}",
                r.method.label(),
                r.seed,
                task.sft.test_acc
            ),
        );
    }
    for r in runs {
        let name = format!("{} seed {}", r.method.label(), r.seed);
        check(
            r.steps.len() == p.steps
                && r.steps.iter().all(|s| {
                    s.loss.is_finite() && s.grad_norm.is_finite() && (0.0..=1.0).contains(&s.reward)
                }),
            format!(
                "{name}: {} steps, finite losses and gradient norms, rewards in [0, 1]",
                p.steps
            ),
        );
        check(
            r.param_change > 0.0,
            format!("{name}: the policy changed (|Δθ| = {:.4})", r.param_change),
        );
        match r.method {
            Method::Adpo => {
                let tau_ok = r
                    .steps
                    .iter()
                    .filter(|s| s.tau.is_finite())
                    .all(|s| (0.1 - 1e-9..=0.8 + 1e-9).contains(&s.tau));
                check(
                    tau_ok,
                    format!("{name}: adaptive tau within [tau_min 0.1, tau_base 0.8]"),
                );
                if p.epochs_per_batch == 1 {
                    let max_s = r
                        .steps
                        .iter()
                        .map(|s| s.mean_abs_score)
                        .filter(|x| x.is_finite())
                        .fold(0.0, f64::max);
                    check(
                        max_s < 1e-3,
                        format!("{name}: on-policy anchor, one update per batch: mean |s| stays ~0 (max {max_s:.2e}; docs/MATH.md §3.6)"),
                    );
                }
            }
            Method::Grpo => {
                if p.epochs_per_batch == 1 {
                    let clipped = r
                        .steps
                        .iter()
                        .map(|s| s.clip_fraction)
                        .filter(|x| x.is_finite())
                        .fold(0.0, f64::max);
                    check(
                        clipped == 0.0,
                        format!("{name}: one update per batch: the ratio is 1 and nothing is clipped (max clip fraction {clipped})"),
                    );
                }
            }
        }
    }
    // Determinism: a repeated run gives the same numbers, bit for bit.
    for rep in repeats {
        let orig = runs
            .iter()
            .find(|r| r.method == rep.method && r.seed == rep.seed)
            .expect("the repeated run");
        let same = orig.steps.len() == rep.steps.len()
            && orig.steps.iter().zip(&rep.steps).all(|(a, b)| {
                a.reward.to_bits() == b.reward.to_bits() && a.loss.to_bits() == b.loss.to_bits()
            })
            && orig.evals.iter().zip(&rep.evals).all(|(a, b)| {
                a.acc_greedy.to_bits() == b.acc_greedy.to_bits()
                    && a.acc_sampled.to_bits() == b.acc_sampled.to_bits()
            })
            && orig.param_change.to_bits() == rep.param_change.to_bits();
        check(
            same,
            format!(
                "{} seed {} run twice: identical rewards, losses, accuracies and weights",
                rep.method.label(),
                rep.seed
            ),
        );
    }
    // Learning (full mode): RL improves on the SFT policy, for each method (mean over seeds).
    if !p.quick {
        for m in METHODS {
            let rs = runs_of(runs, m);
            let n = rs.len().max(1) as f64;
            let head = tail_len(p);
            let start = rs
                .iter()
                .map(|r| r.steps[..head].iter().map(|s| s.reward).sum::<f64>() / head as f64)
                .sum::<f64>()
                / n;
            let end = rs.iter().map(|r| final_of(r, p).reward_final).sum::<f64>() / n;
            let acc0 = rs.iter().map(|r| r.evals[0].acc_greedy).sum::<f64>() / n;
            let acc1 = rs.iter().map(|r| final_of(r, p).acc_greedy).sum::<f64>() / n;
            check(
                end > start && acc1 > acc0,
                format!(
                    "{}: training reward rises (first {head} steps {start:.3} -> last {head} steps {end:.3}) and held-out greedy accuracy rises ({acc0:.3} -> {acc1:.3})",
                    m.label()
                ),
            );
        }
    }
    fails
}
