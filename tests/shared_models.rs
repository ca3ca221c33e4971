//! Models shared between trainers: crosswise policy/reference pairs
//! step in two threads without deadlock, and a reference handle that is another trainer's
//! policy keeps training there (tests/torchscript.rs: and is read in eval mode here).

mod common;

use adpo::trainer::Trainer;
use common::{batch, model, weights};
use std::sync::mpsc;
use std::time::Duration;

const SGD: &str = r#"{"anchor": {"mode": "fixed"}, "optimizer": {"name": "sgd", "lr": 0.01}}"#;

fn changed(before: &[tch::Tensor], after: &[tch::Tensor]) -> bool {
    before
        .iter()
        .zip(after)
        .any(|(a, b)| (a - b).abs().max().double_value(&[]) > 0.0)
}

#[test]
fn crosswise_trainers_step_in_two_threads_without_deadlock() {
    let (a, b) = (model("tiny/llama"), model("tiny/llama"));
    let one = Trainer::new(a.clone(), Some(b.clone()), SGD).unwrap();
    let two = Trainer::new(b, Some(a), SGD).unwrap();
    let (done, finished) = mpsc::channel();
    for (name, mut trainer) in [
        ("policy A, reference B", one),
        ("policy B, reference A", two),
    ] {
        let done = done.clone();
        std::thread::spawn(move || {
            for i in 0..1000 {
                trainer.step(&batch(i)).unwrap();
            }
            done.send(name).unwrap();
        });
    }
    // A thousand steps take seconds; five minutes without both finishing means
    // they wait for each other's lock (without the global lock order, 4 runs in 9 did).
    for _ in 0..2 {
        finished
            .recv_timeout(Duration::from_secs(300))
            .expect("the two crosswise trainers deadlocked");
    }
}

#[test]
fn a_reference_that_is_another_trainers_policy_keeps_training() {
    let (a, b) = (model("tiny/llama"), model("tiny/llama"));
    let mut one = Trainer::new(a.clone(), Some(b.clone()), SGD).unwrap();
    // Taking A as trainer two's reference used to freeze it: trainer one then failed every
    // step ("element 0 of tensors does not require grad").
    let mut two = Trainer::new(b.clone(), Some(a.clone()), SGD).unwrap();
    for (trainer, policy) in [(&mut one, &a), (&mut two, &b)] {
        let before = weights(policy);
        trainer.step(&batch(4)).unwrap();
        assert!(changed(&before, &weights(policy)), "the policy trained");
    }
    assert!(a.lock().training() && b.lock().training());
}
