//! The fused host kernel agrees with the tensor kernel on every configuration (on the ones it
//! does not compute, `eval` runs the tensor kernel too). The kernel is chosen here directly,
//! which only code inside the crate can do.

#[path = "../../tests/common/objective_cases.rs"]
mod cases;

use super::kernel::{Kernel, NewTensors};
use super::{EvalInputs, EvalOutput, Groups, Objective, Signal};
use cases::{assert_close, close, random_batch, Rng, CONFIGS};
use tch::{Device, Kind, Tensor};

fn t(v: &[f64]) -> Tensor {
    Tensor::from_slice(v)
}

fn vec(x: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(x.to_kind(Kind::Double).to_device(Device::Cpu).reshape([-1])).unwrap()
}

/// `eval` on the tensor kernel, whatever the inputs.
fn on_tensor_kernel(obj: &Objective, inputs: &EvalInputs) -> EvalOutput {
    let x = obj.check(inputs, &NewTensors).unwrap();
    let (loss, metrics, (grad_logp, scores)) = obj.run(&x, Kernel::Tensor, NewTensors).unwrap();
    EvalOutput {
        loss,
        grad_logp,
        scores,
        metrics,
    }
}

#[test]
fn fused_cpu_kernel_matches_the_tensor_path() {
    let mut rng = Rng(31337);
    let extra = [
        r#"{"loss": "pairwise"}"#,
        r#"{"loss": "dpo"}"#,
        r#"{"adaptive_tau": {"rule": "target_entropy", "alpha": 0.5, "tau_min": 0.05}, "reward_transform": "raw"}"#,
    ];
    // Random Plackett-Luce tie breaking draws anew at each call: not comparable call to call.
    for cfg in CONFIGS
        .iter()
        .chain(extra.iter())
        .filter(|c| !c.contains("random"))
    {
        let pairs = cfg.contains("pairwise") || cfg.contains("dpo");
        let (logp, anchor, rewards, ids) = if cfg.is_empty() {
            random_batch(&mut rng, 5000, 8) // large enough for the kernel's worker threads
        } else if pairs {
            let ids: Vec<i64> = (0..20).map(|i| (i / 2) as i64 * 3 % 17).collect();
            let v = |rng: &mut Rng| (0..20).map(|_| rng.normal()).collect::<Vec<_>>();
            (v(&mut rng), v(&mut rng), v(&mut rng), ids)
        } else {
            random_batch(&mut rng, 9, 7)
        };
        let obj = Objective::from_json(cfg).unwrap();
        let groups = Groups::from_ids(&ids).unwrap();
        let (l, a, r) = (t(&logp), t(&anchor), t(&rewards));
        let mut ties = rewards.clone();
        ties[0] = ties[1]; // exercise tied best keys in top1 targets and win mass
        let tt = t(&ties);
        for signal in [Signal::Rewards(&r), Signal::Rewards(&tt)] {
            let inputs = EvalInputs {
                logp: &l,
                anchor_logp: &a,
                signal,
                groups: &groups,
                policy_entropy: None,
            };
            let fused = obj.eval(&inputs).unwrap();
            let tensor = on_tensor_kernel(&obj, &inputs);
            assert!(
                close(fused.loss, tensor.loss, 1e-12),
                "{cfg}: {} vs {}",
                fused.loss,
                tensor.loss
            );
            assert_close(&vec(&fused.grad_logp), &vec(&tensor.grad_logp), 1e-9, cfg);
            assert_close(&vec(&fused.scores), &vec(&tensor.scores), 1e-12, cfg);
            let (fm, tm) = (fused.metrics, tensor.metrics);
            for (name, x, y) in [
                ("entropy", fm.entropy, tm.entropy),
                ("kl_target", fm.kl_target, tm.kl_target),
                ("win_mass", fm.win_mass, tm.win_mass),
                ("mean_abs_score", fm.mean_abs_score, tm.mean_abs_score),
                ("max_abs_score", fm.max_abs_score, tm.max_abs_score),
                ("tau", fm.tau, tm.tau),
                ("anchor_kl", fm.anchor_kl, tm.anchor_kl),
            ] {
                let same = close(x, y, 1e-9) || x.is_nan() && y.is_nan();
                assert!(same, "{cfg}: metric {name}: fused {x} vs tensor {y}");
            }
            assert_eq!(fm.groups, tm.groups);
        }
    }
}
