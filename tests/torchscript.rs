//! The TorchScript adapter (src/model/torchscript.rs) on the fixtures of
//! tests/fixtures/make_models.py: the forward contract checked at load, libtorch's messages
//! without backtraces, train and eval mode (a model with dropout), what a TorchScript module
//! cannot do, and a step on the logits path. TorchScript is the optional cargo feature
//! `torchscript` (make test-torchscript).
#![cfg(feature = "torchscript")]

mod common;

use adpo::model::{Dtype, LoadOptions};
use adpo::trainer::Trainer;
use adpo::{Batch, Model, Status};
use common::{batch, device, fixture, max_rel_diff, model, weights};
use tch::{Device, Kind, Tensor};

#[test]
fn models_that_break_the_contract_are_refused_at_load() {
    for (name, needle) in [
        ("bad_signature.pt", "neither forward"),
        ("bad_output.pt", "logits [B, T, V]"),
    ] {
        let e = Model::load(&fixture(name), Device::Cpu).err().unwrap();
        assert_eq!(e.status, Status::Model);
        assert!(e.message.contains(needle), "{name}: {}", e.message);
    }
    // forward(input_ids) only is accepted.
    assert_eq!(
        Model::load(&fixture("tiny_gru.pt"), Device::Cpu)
            .unwrap()
            .vocab(),
        16
    );
}

#[test]
fn two_pass_step_equals_one_pass_step_on_logits() {
    for opt in [
        r#"{"name": "sgd", "lr": 0.1}"#,
        r#"{"name": "adamw", "lr": 0.01}"#,
    ] {
        let run = |micro: &str| {
            let policy = model("tiny_transformer_f64.pt");
            let reference = model("tiny_transformer_f64.pt");
            let cfg = format!(
                r#"{{"optimizer": {opt}, "micro_batch_rows": {micro}, "anchor": {{"mode": "fixed"}}, "epochs_per_batch": 2}}"#
            );
            let mut t = Trainer::new(policy.clone(), Some(reference), &cfg).unwrap();
            t.step(&batch(1)).unwrap();
            t.step(&batch(2)).unwrap();
            weights(&policy)
        };
        let d = max_rel_diff(&run("5"), &run("null"));
        assert!(d < 1e-10, "{opt}: two-pass differs from one-pass by {d}");
    }
}

#[test]
fn normalised_entropy_on_logits_is_the_mean_token_entropy_over_log_v() {
    let policy = model("tiny_transformer.pt");
    let p = policy.lock();
    let b = batch(4);
    let (ids, attn, mask) = b.rows(0, b.n as i64, device());
    let got = adpo::logprob::normalised_entropy(&p, &ids, &attn, &mask, None).unwrap();
    let want = common::normalised_entropy_reference(&p, &ids, &attn, &mask);
    assert!(
        want.min().double_value(&[]) > 0.01,
        "entropies are not trivial"
    );
    let d = (got.to_kind(Kind::Double) - want)
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-5, "normalised entropy off by {d}");
}

#[test]
fn what_a_torchscript_module_cannot_do_is_refused_with_the_reason() {
    let script = fixture("tiny_transformer.pt");
    let with = |json: &str| LoadOptions {
        device: device(),
        ..LoadOptions::from_json(json).unwrap()
    };
    let e = Model::load_with(&script, &with(r#"{"lora": {}}"#))
        .err()
        .unwrap();
    assert_eq!(e.status, Status::Unsupported, "{e}");
    assert!(e.message.contains("TorchScript"), "{e}");
    let f64_options = LoadOptions {
        dtype: Dtype::Float64,
        ..with("")
    };
    let e = Model::load_with(&script, &f64_options)
        .err()
        .expect("a float64 TorchScript load");
    assert_eq!(e.status, Status::Unsupported, "{e}");
    assert!(e.message.contains("Float64"), "{e}");
    assert_eq!(
        Model::load_with(&script, &with("")).unwrap().kind(),
        Kind::Float
    );
    let out = tempfile::tempdir().unwrap();
    let e = Model::load(&script, device())
        .unwrap()
        .save_pretrained(&out.path().join("script"))
        .unwrap_err();
    assert_eq!(e.status, Status::Unsupported, "{e}");
    let checkpointed = r#"{"activation_checkpointing": true}"#;
    let e = Trainer::new(model("tiny_transformer.pt"), None, checkpointed)
        .err()
        .expect("refused");
    assert_eq!(e.status, Status::Unsupported);
    assert!(e.message.contains("activation_checkpointing"), "{e}");
    assert!(e.message.contains("TorchScript"), "{e}");
}

#[test]
fn sampling_and_sequence_logp_run_the_policy_without_dropout() {
    use adpo::batch::SuppliedLogp;
    use adpo::sample::SamplingConfig;
    let policy = model("tiny_dropout.pt");
    let mut t = Trainer::new(
        policy.clone(),
        None,
        r#"{"optimizer": {"name": "sgd", "lr": 0.1}}"#,
    )
    .unwrap();
    // The test can fail: in train mode this model's dropout changes every forward.
    {
        let p = policy.lock();
        assert!(p.training());
        let ids = Tensor::from_slice(&[1i64, 2, 3, 4])
            .view([1, 4])
            .to_device(device());
        let mask = ids.ones_like();
        let (a, b) = (
            p.logits(&ids, &mask).unwrap(),
            p.logits(&ids, &mask).unwrap(),
        );
        assert!(
            (a - b).abs().max().double_value(&[]) > 1e-3,
            "dropout is active"
        );
    }
    let cfg = SamplingConfig {
        max_new_tokens: 5,
        seed: Some(11),
        ..SamplingConfig::default()
    };
    let (a, b) = (
        t.sample(&[&[1, 2], &[3]], 4, &cfg).unwrap(),
        t.sample(&[&[1, 2], &[3]], 4, &cfg).unwrap(),
    );
    assert!(
        policy.lock().training(),
        "train mode is restored after sampling"
    );
    let ids = |x: &Batch| Vec::<i64>::try_from(x.ids.reshape([-1])).unwrap();
    assert_eq!(ids(&a), ids(&b), "same seed, same samples");
    let old = |x: &Batch| match x.old_logp.as_ref().unwrap() {
        SuppliedLogp::Tokens(t) => {
            Vec::<f64>::try_from(t.reshape([-1]).to_kind(Kind::Double)).unwrap()
        }
        SuppliedLogp::Sequence(t) => Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap(),
    };
    assert_eq!(
        old(&a),
        old(&b),
        "sampling-time log-probs without dropout noise"
    );
    let (la, lb) = (t.sequence_logp(&a).unwrap(), t.sequence_logp(&a).unwrap());
    assert_eq!(la, lb);
    assert!(policy.lock().training());
}

#[test]
fn a_reference_in_train_mode_elsewhere_is_read_without_dropout() {
    // A has dropout and is trainer one's policy (train mode); trainer two reads it as its
    // reference. With a learning rate of ~0, two steps of trainer two on one batch see the same
    // anchor only if the reference forward runs in eval mode.
    let a = model("tiny_dropout.pt");
    let _one = Trainer::new(a.clone(), None, r#"{"anchor": {"mode": "on_policy"}}"#).unwrap();
    assert!(a.lock().training());
    let b = model("tiny_transformer.pt");
    let cfg = r#"{"anchor": {"mode": "fixed"}, "optimizer": {"name": "sgd", "lr": 1e-12}}"#;
    let mut two = Trainer::new(b, Some(a.clone()), cfg).unwrap();
    let first = two.step(&batch(2)).unwrap().objective.loss;
    let second = two.step(&batch(2)).unwrap().objective.loss;
    assert!(
        (first - second).abs() < 1e-7,
        "the reference's dropout changed the anchor: loss {first} then {second}"
    );
    assert!(
        a.lock().training(),
        "A is still trainer one's policy, in train mode"
    );
}

mod torch_errors {
    use adpo::ffi::error::{adpo_error, adpo_error_free, adpo_error_message};
    use std::ffi::{CStr, CString};

    fn fixtures() -> std::path::PathBuf {
        std::path::PathBuf::from(std::env::var("ADPO_FIXTURES").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/generated").to_string()
        }))
    }

    /// The message of `err`, freed.
    fn take(err: *mut adpo_error) -> String {
        assert!(!err.is_null());
        let msg = unsafe { CStr::from_ptr(adpo_error_message(err)) }
            .to_string_lossy()
            .into_owned();
        adpo_error_free(err);
        msg
    }

    /// libtorch appends its C++ backtrace ("Exception raised from ...", "frame #0: ...") to its
    /// messages; none of it may reach the caller.
    fn assert_clean(msg: &str) {
        assert!(
            !msg.contains("Exception raised from"),
            "backtrace in: {msg}"
        );
        assert!(!msg.contains("frame #"), "stack frames in: {msg}");
        assert!(msg.len() < 1000, "{} bytes: {msg}", msg.len());
    }

    fn load(path: &std::path::Path) -> (adpo::Status, String) {
        let p = CString::new(path.to_str().unwrap()).unwrap();
        let mut model = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        let st =
            adpo::ffi::model::adpo_model_load(p.as_ptr(), std::ptr::null(), &mut model, &mut err);
        assert!(model.is_null());
        (st, take(err))
    }

    #[test]
    fn a_truncated_torchscript_file_gives_libtorchs_message_without_its_backtrace() {
        let bytes = std::fs::read(fixtures().join("tiny_transformer.pt")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cut = dir.path().join("cut.pt");
        // Past the code's constants (so it is sniffed as TorchScript), before the zip directory.
        std::fs::write(&cut, &bytes[..bytes.len() - 200]).unwrap();
        let (st, msg) = load(&cut);
        println!("{st:?} {msg}");
        assert_eq!(st, adpo::Status::Model);
        assert!(msg.contains("cannot load TorchScript module"), "{msg}");
        assert_clean(&msg);
    }

    #[test]
    fn a_torchscript_forward_that_fails_gives_a_short_message() {
        let (st, msg) = load(&fixtures().join("bad_signature.pt"));
        println!("{st:?} {msg}");
        assert_eq!(st, adpo::Status::Model);
        assert!(msg.contains("neither forward"), "{msg}");
        assert_clean(&msg);
    }
}
