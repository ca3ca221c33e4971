//! Updates that would ruin the weights never land: absurd optimizer settings are refused when
//! the trainer is made, and a step whose update would write NaN or Inf into a weight or a
//! moment fails with Status::NonFinite, leaving weights and optimizer state as they were.

mod common;

use adpo::distributed::Communicator;
use adpo::trainer::Trainer;
use adpo::{checkpoint, Result, Status};
use common::{batch, model};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tch::Tensor;

#[test]
fn absurd_optimizer_settings_are_refused() {
    for (cfg, needle) in [
        (
            r#"{"optimizer": {"name": "adamw", "lr": 1e300}}"#,
            "optimizer.lr",
        ),
        (
            r#"{"optimizer": {"name": "sgd", "lr": 1001}}"#,
            "optimizer.lr",
        ),
        (
            r#"{"optimizer": {"name": "adamw", "eps": 1e300}}"#,
            "optimizer.eps",
        ),
        (
            r#"{"optimizer": {"name": "adamw", "lr": 10, "weight_decay": 0.5}}"#,
            "weight_decay",
        ),
        (
            r#"{"optimizer": {"name": "sgd", "lr": 1, "weight_decay": 2}}"#,
            "weight_decay",
        ),
        (
            r#"{"optimizer": {"name": "sgd", "lr": 1, "momentum": 1}}"#,
            "momentum",
        ),
        (
            r#"{"schedule": {"name": "cosine", "total_steps": 10, "min_lr": 1}}"#,
            "min_lr",
        ),
    ] {
        let e = Trainer::new(model("tiny/llama"), None, cfg).err().unwrap();
        assert_eq!(e.status, Status::InvalidConfig, "{cfg}: {}", e.message);
        assert!(e.message.contains(needle), "{cfg}: {}", e.message);
    }
    // The bounds themselves are accepted.
    Trainer::new(
        model("tiny/llama"),
        None,
        r#"{"optimizer": {"name": "sgd", "lr": 1e3}}"#,
    )
    .unwrap();
}

/// One rank whose "all-reduce" replaces every gradient with `value` once `poisoned` is set
/// (a host reduction gone wrong); small buffers (the step's agreement) pass unchanged.
struct PoisoningComm {
    poisoned: Arc<AtomicBool>,
    value: f64,
}

impl Communicator for PoisoningComm {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn name(&self) -> &'static str {
        "poisoning"
    }
    fn all_reduce_sum(&mut self, buf: &mut Tensor) -> Result<()> {
        if self.poisoned.load(Ordering::Relaxed) && buf.numel() > 1000 {
            let _ = buf.fill_(self.value);
        }
        Ok(())
    }
}

/// Every tensor of a checkpoint: weights, moments, step counter.
fn state(t: &mut Trainer, path: &std::path::Path) -> Vec<(String, Tensor)> {
    t.save(path).unwrap();
    checkpoint::load(path).unwrap()
}

#[test]
fn a_step_that_would_write_non_finite_values_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("adpo-ruinous-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.safetensors");
    // (optimizer, injected gradient, what overflows) on the float32 fixture.
    for (opt, value, what) in [
        (
            r#"{"name": "adamw", "lr": 0.01}"#,
            1e20,
            "second moment (g^2)",
        ),
        (r#"{"name": "sgd", "lr": 10}"#, 3e38, "weights (p - lr g)"),
        (
            r#"{"name": "sgd", "lr": 0.1, "momentum": 0.9}"#,
            f64::INFINITY,
            "gradient",
        ),
    ] {
        let cfg = format!(r#"{{"optimizer": {opt}}}"#);
        let mut t = Trainer::new(model("tiny/llama"), None, &cfg).unwrap();
        let poisoned = Arc::new(AtomicBool::new(false));
        let comm = PoisoningComm {
            poisoned: poisoned.clone(),
            value,
        };
        t.use_communicator(Box::new(comm)).unwrap();
        t.step(&batch(0)).unwrap();
        let before = state(&mut t, &path);
        poisoned.store(true, Ordering::Relaxed);
        let e = t.step(&batch(1)).unwrap_err();
        assert_eq!(e.status, Status::NonFinite, "{what}: {}", e.message);
        let after = state(&mut t, &path);
        for ((name, a), (_, b)) in before.iter().zip(&after) {
            assert!(a.equal(b), "{what}: {name} changed");
        }
        // The trainer still trains once the gradients are sane again.
        poisoned.store(false, Ordering::Relaxed);
        assert_eq!(t.step(&batch(2)).unwrap().step, 2, "{what}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
