//! Native Hugging Face causal LMs (src/model/native/) against transformers itself, on the tiny
//! checkpoints of tests/fixtures/make_hf_models.py (`make fixtures`; `$ADPO_FIXTURES/hf`):
//! logits of right- and left-padded batches, sequence log-probs, the KV-cached forward and
//! greedy generation, bf16 loading, a trainer step, and every refusal (config and checkpoint).

mod common;

use adpo::logprob::{reduce, token_logp, SeqReduce};
use adpo::model::{Dtype, LoadOptions, SharedModel};
use adpo::trainer::Trainer;
use adpo::{Batch, Model, Status};
use common::device;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

const FIXTURES: usize = 12;

fn hf_root() -> PathBuf {
    common::fixtures_dir().join("hf")
}

/// Every checkpoint the fixture script made (all of them, or the test fails).
fn fixtures() -> Vec<PathBuf> {
    let dirs = common::hf_dirs();
    assert_eq!(
        dirs.len(),
        FIXTURES,
        "{}: expected {FIXTURES} checkpoints",
        hf_root().display()
    );
    dirs
}

fn fixture(name: &str) -> PathBuf {
    let p = hf_root().join(name);
    assert!(
        p.join("config.json").is_file(),
        "{} missing: run `make fixtures`",
        p.display()
    );
    p
}

fn name(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

fn reference(dir: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("reference.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.to_device(device())))
        .collect()
}

fn load(dir: &Path, dtype: Dtype) -> Model {
    let options = LoadOptions {
        device: device(),
        dtype,
        ..LoadOptions::default()
    };
    Model::load_with(dir, &options).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// max |a - b| over the positions where mask is 1 (a, b [B, T, ...]).
fn masked_max_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    let keep = mask.ne(0);
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs();
    let d = d
        .reshape([d.size()[0], d.size()[1], -1])
        .amax([2i64].as_slice(), false);
    d.masked_select(&keep).max().double_value(&[])
}

fn sides() -> [&'static str; 2] {
    ["right", "left"]
}

#[test]
fn logits_equal_transformers_on_right_and_left_padded_batches() {
    for dir in fixtures() {
        let model = load(&dir, Dtype::Auto);
        assert_eq!(model.kind(), Kind::Float, "{}", name(&dir));
        let r = reference(&dir);
        for side in sides() {
            let (ids, mask) = (
                &r[&format!("{side}_input_ids")],
                &r[&format!("{side}_attention_mask")],
            );
            let logits = model.logits(ids, mask).unwrap();
            let d = masked_max_diff(&logits, &r[&format!("{side}_logits")], mask);
            assert!(
                d < 1e-5,
                "{} {side}-padded: logits differ from transformers by {d}",
                name(&dir)
            );
        }
    }
}

/// Loss mask of a padded batch: every real token with a real predecessor.
fn loss_mask(mask: &Tensor) -> Tensor {
    let t = mask.size()[1];
    let scored = mask.narrow(1, 1, t - 1) * mask.narrow(1, 0, t - 1);
    Tensor::cat(&[mask.narrow(1, 0, 1).zeros_like(), scored], 1)
}

/// Sequence log-probs [B] from logits directly: sum over scored t of log p(ids[t] | logits[t-1]).
fn sequence_logp_from_logits(logits: &Tensor, ids: &Tensor, loss: &Tensor) -> Tensor {
    let t = ids.size()[1];
    let logp = logits.to_kind(Kind::Double).log_softmax(2, Kind::Double);
    let next = ids.narrow(1, 1, t - 1).unsqueeze(2);
    let picked = logp
        .narrow(1, 0, t - 1)
        .gather(2, &next, false)
        .squeeze_dim(2);
    (picked * loss.narrow(1, 1, t - 1).to_kind(Kind::Double)).sum_dim_intlist(
        1,
        false,
        Kind::Double,
    )
}

#[test]
fn sequence_logprobs_equal_those_of_the_reference_logits() {
    for dir in fixtures() {
        let model = load(&dir, Dtype::Auto);
        let r = reference(&dir);
        let mut per_side = Vec::new();
        for side in sides() {
            let (ids, mask) = (
                &r[&format!("{side}_input_ids")],
                &r[&format!("{side}_attention_mask")],
            );
            let loss = loss_mask(mask);
            let tokens = token_logp(&model, ids, mask, &loss).unwrap();
            let ours = reduce(&tokens, &loss, SeqReduce::Sum).to_kind(Kind::Double);
            let theirs = sequence_logp_from_logits(&r[&format!("{side}_logits")], ids, &loss);
            let d = (&ours - &theirs).abs().max().double_value(&[]);
            assert!(
                d < 1e-4,
                "{} {side}: sequence log-probs differ by {d}",
                name(&dir)
            );
            let mean = reduce(&tokens, &loss, SeqReduce::Mean).to_kind(Kind::Double);
            let count = loss.sum_dim_intlist(1, false, Kind::Double);
            let d = (mean * count - &theirs).abs().max().double_value(&[]);
            assert!(
                d < 1e-4,
                "{} {side}: mean log-probs differ by {d}",
                name(&dir)
            );
            per_side.push(ours);
        }
        let d = (&per_side[0] - &per_side[1]).abs().max().double_value(&[]);
        assert!(
            d < 1e-4,
            "{}: left and right padding give other log-probs ({d})",
            name(&dir)
        );
    }
}

/// Logits of the columns [from, to) through the cache, `from` cached already.
fn cached_step(
    model: &Model,
    ids: &Tensor,
    mask: &Tensor,
    cache: &mut adpo::model::KvCache,
    from: i64,
    to: i64,
) -> Tensor {
    let step_ids = ids.narrow(1, from, to - from);
    let step_mask = mask.narrow(1, 0, to);
    let hidden = model
        .lm()
        .forward_cached(&step_ids, &step_mask, cache)
        .unwrap();
    model.head().logits(&hidden).unwrap()
}

#[test]
fn cached_forward_equals_the_uncached_forward_at_every_step() {
    for dir in fixtures() {
        let model = load(&dir, Dtype::Auto);
        let r = reference(&dir);
        for side in sides() {
            let (ids, mask) = (
                &r[&format!("{side}_input_ids")],
                &r[&format!("{side}_attention_mask")],
            );
            let full = tch::no_grad(|| model.logits(ids, mask).unwrap());
            let (b, t) = (ids.size()[0], ids.size()[1]);
            let mut cache = model.lm().new_cache(b, t + 2);
            // Prefill 3 columns, then 2 at once, then one at a time.
            let mut bounds = vec![0, 3, 5];
            bounds.extend(6..=t);
            for w in bounds.windows(2) {
                let (from, to) = (w[0], w[1]);
                let step = cached_step(&model, ids, mask, &mut cache, from, to);
                assert_eq!(cache.len, to);
                let expected = full.narrow(1, from, to - from);
                let d = masked_max_diff(&step, &expected, &mask.narrow(1, from, to - from));
                assert!(
                    d < 1e-5,
                    "{} {side}: columns {from}..{to} differ by {d}",
                    name(&dir)
                );
            }
            let longer = Tensor::cat(&[mask, &mask.narrow(1, 0, 3)], 1);
            let e = model
                .lm()
                .forward_cached(&ids.narrow(1, 0, 3), &longer, &mut cache)
                .unwrap_err();
            assert_eq!(e.status, Status::InvalidArgument, "{e}");
            assert!(e.message.contains("capacity"), "{e}");
        }
    }
}

#[test]
fn greedy_decoding_through_the_cache_follows_transformers_generate() {
    for dir in fixtures() {
        let model = load(&dir, Dtype::Auto);
        let r = reference(&dir);
        for i in 0.. {
            let Some(prompt) = r.get(&format!("gen{i}_prompt")) else {
                assert_eq!(i, 3, "{}: three generations expected", name(&dir));
                break;
            };
            let tokens = &r[&format!("gen{i}_tokens")];
            let ref_logits = &r[&format!("gen{i}_logits")];
            let (p, n) = (prompt.size()[0], tokens.size()[0]);
            let seq = Tensor::cat(&[prompt, tokens], 0).unsqueeze(0);
            let mask = seq.ones_like();
            let mut cache = model.lm().new_cache(1, p + n);
            let mut from = 0;
            for s in 0..n {
                let to = p + s;
                let logits = cached_step(&model, &seq, &mask, &mut cache, from, to);
                let last = logits.select(1, to - from - 1).squeeze_dim(0);
                let expected = ref_logits.get(s);
                let d = (&last - &expected).abs().max().double_value(&[]);
                assert!(
                    d < 1e-5,
                    "{} prompt {i} step {s}: logits differ by {d}",
                    name(&dir)
                );
                // Our greedy choice is transformers' token, unless the top two are a near tie.
                let top = expected.topk(2, 0, true, true).0;
                let gap = (top.double_value(&[0]) - top.double_value(&[1])).abs();
                let chosen = last.argmax(0, false).int64_value(&[]);
                assert!(
                    chosen == tokens.int64_value(&[s]) || gap < 1e-4,
                    "{} prompt {i} step {s}: greedy token {chosen}, transformers {}",
                    name(&dir),
                    tokens.int64_value(&[s])
                );
                from = to;
            }
        }
    }
}

/// sqrt(sum (a - b)^2) over the real positions (a, b [B, T, V]).
fn masked_norm(a: &Tensor, mask: &Tensor) -> f64 {
    let keep = mask.ne(0).unsqueeze(2).expand_as(a);
    a.to_kind(Kind::Double)
        .masked_select(&keep)
        .norm()
        .double_value(&[])
}

#[test]
fn bfloat16_load_is_close_to_float32_and_as_close_as_transformers_bf16() {
    for dir in fixtures() {
        let f32_model = load(&dir, Dtype::Auto);
        let bf16 = load(&dir, Dtype::Bfloat16);
        assert_eq!(bf16.kind(), Kind::BFloat16);
        assert!(bf16
            .params()
            .iter()
            .all(|(_, p)| p.kind() == Kind::BFloat16));
        let r = reference(&dir);
        for side in sides() {
            let (ids, mask) = (
                &r[&format!("{side}_input_ids")],
                &r[&format!("{side}_attention_mask")],
            );
            let exact = f32_model.logits(ids, mask).unwrap();
            let approx = bf16.logits(ids, mask).unwrap();
            assert_eq!(approx.kind(), Kind::BFloat16);
            let error = approx.to_kind(Kind::Float) - &exact;
            let rel = masked_norm(&error, mask) / masked_norm(&exact, mask);
            assert!(
                rel < 2e-2,
                "{} {side}: bf16 logits off by {rel} (relative norm)",
                name(&dir)
            );
            // Worst position: within 1.5x of transformers' own bf16 error (bf16 rounding
            // differs between implementations, its size should not).
            let ours = masked_max_diff(&approx, &exact, mask);
            let theirs = masked_max_diff(&r[&format!("{side}_logits_bf16")], &exact, mask);
            assert!(
                ours < 1.5 * theirs,
                "{} {side}: bf16 max error {ours}, transformers' bf16 {theirs}",
                name(&dir)
            );
        }
    }
}

#[test]
fn parameters_are_the_checkpoint_tensors_under_their_names_tied_once() {
    for dir in fixtures() {
        let model = load(&dir, Dtype::Auto);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let tied = config["tie_word_embeddings"].as_bool().unwrap();
        let mut stored: Vec<(String, Tensor)> = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let file = name(&path);
            if file.starts_with("model") && file.ends_with(".safetensors") {
                stored.extend(Tensor::read_safetensors(&path).unwrap());
            }
        }
        stored.retain(|(n, _)| !(tied && n == "lm_head.weight"));
        let names: Vec<&String> = model.params().iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), stored.len(), "{}", name(&dir));
        assert_eq!(
            names.iter().any(|n| *n == "lm_head.weight"),
            !tied,
            "{}",
            name(&dir)
        );
        for (n, t) in &stored {
            let (_, p) = model
                .params()
                .iter()
                .find(|(m, _)| m == n)
                .unwrap_or_else(|| panic!("{n}"));
            assert!(
                p.to_device(Device::Cpu).equal(t),
                "{}: {n} differs from the file",
                name(&dir)
            );
        }
    }
}

#[test]
fn duplicate_is_an_independent_copy_made_in_memory() {
    let dir = fixture("qwen3_gqa2_headdim16_tied");
    let model = load(&dir, Dtype::Auto);
    let r = reference(&dir);
    let (ids, mask) = (&r["right_input_ids"], &r["right_attention_mask"]);
    let before = model.logits(ids, mask).unwrap();
    let copy = model.frozen_copy().unwrap();
    assert!(copy.logits(ids, mask).unwrap().equal(&before));
    tch::no_grad(|| {
        let _ = copy.params()[0].1.shallow_clone().g_add_scalar_(1.0);
    });
    assert!(
        model.logits(ids, mask).unwrap().equal(&before),
        "the copy shares storage"
    );
    assert!(
        !copy.logits(ids, mask).unwrap().equal(&before),
        "the copy's weights are unused"
    );
    // The tied head follows the embedding in the copy too.
    let e = &copy.params()[0];
    assert_eq!(e.0, "model.embed_tokens.weight");
}

fn shared(model: Model) -> SharedModel {
    Arc::new(Mutex::new(model))
}

/// 2 groups x 3 candidates, T = 7, ids below 90 (every fixture's vocabulary is larger).
fn batch() -> Batch {
    let (n, t) = (6usize, 7usize);
    let ids: Vec<i64> = (0..n * t).map(|i| (i as i64 * 37 + 11) % 90).collect();
    let mut loss = vec![0u8; n * t];
    for r in 0..n {
        for j in (2 + r % 3)..t {
            loss[r * t + j] = 1;
        }
    }
    let groups: Vec<i64> = (0..n).map(|r| (r / 3) as i64).collect();
    let mut b = Batch::new(n, t, &ids, None, &loss, &groups).unwrap();
    b.set_rewards(&[1.0, 0.0, 0.5, -1.0, 2.0, 0.3]).unwrap();
    b
}

#[test]
fn a_trainer_step_changes_a_native_policy() {
    for fixture_name in [
        "qwen3_gqa2_headdim16_tied",
        "llama_mha_linear_bias",
        "mistral_gqa2_untied",
    ] {
        let dir = fixture(fixture_name);
        let policy = shared(load(&dir, Dtype::Auto));
        let before: Vec<Tensor> = policy
            .lock()
            .params()
            .iter()
            .map(|(_, p)| p.detach().copy())
            .collect();
        let mut t = Trainer::new(
            policy.clone(),
            None,
            r#"{"optimizer": {"name": "sgd", "lr": 0.1}}"#,
        )
        .unwrap();
        let m = t.step(&batch()).unwrap();
        assert!(
            m.objective.loss.is_finite() && m.grad_norm > 0.0,
            "{fixture_name}: {m:?}"
        );
        let p = policy.lock();
        let changed = p
            .params()
            .iter()
            .zip(&before)
            .filter(|((_, a), b)| !a.detach().equal(b))
            .count();
        assert_eq!(
            changed,
            before.len(),
            "{fixture_name}: only {changed} of {} tensors moved",
            before.len()
        );
    }
}

/// The weights after two Adam steps of the policy loaded with `fused_ops` as given, float64.
fn weights_after_steps(dir: &Path, fused_ops: bool) -> Vec<Tensor> {
    let options = LoadOptions {
        device: device(),
        dtype: Dtype::Float64,
        fused_ops,
        ..LoadOptions::default()
    };
    let policy = shared(Model::load_with(dir, &options).unwrap());
    let mut t = Trainer::new(
        policy.clone(),
        None,
        r#"{"optimizer": {"name": "adamw", "lr": 0.01}}"#,
    )
    .unwrap();
    for _ in 0..2 {
        t.step(&batch()).unwrap();
    }
    let p = policy.lock();
    p.params().iter().map(|(_, w)| w.detach().copy()).collect()
}

#[test]
fn fused_and_composed_norms_and_gates_train_alike_in_float64() {
    // Qwen3 has the per-head q/k norms too; every architecture has the SwiGLU gate
    for fixture_name in ["qwen3_gqa2_headdim16_tied", "llama_mha_linear_bias"] {
        let dir = fixture(fixture_name);
        let fused = weights_after_steps(&dir, true);
        let composed = weights_after_steps(&dir, false);
        for (a, b) in fused.iter().zip(&composed) {
            let d = (a - b).abs().max().double_value(&[]);
            assert!(d < 1e-10, "{fixture_name}: weights differ by {d}");
        }
        assert!(
            !fused.iter().zip(&composed).all(|(a, b)| a.equal(b)),
            "{fixture_name}: fused and composed agree bit for bit: is one of them not running?"
        );
    }
    let parsed = LoadOptions::from_json(r#"{"fused_ops": false}"#).unwrap();
    assert!(!parsed.fused_ops && LoadOptions::from_json("").unwrap().fused_ops);
}

// ------------------------------------------------------------------------------- refusals

/// A copy of a fixture checkpoint in a temporary directory, to break.
fn broken_copy(fixture_name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(fixture_name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    tmp
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

fn edit_weights(dir: &Path, file: &str, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let path = dir.join(file);
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, &path).unwrap();
}

/// The load's error, from a thread given a minute: a load that blocks (on a FIFO) fails the
/// test instead of hanging it.
fn refusal(dir: &Path) -> adpo::Error {
    let (send, receive) = std::sync::mpsc::channel();
    let path = dir.to_path_buf();
    std::thread::spawn(move || send.send(Model::load(&path, device()).err()));
    match receive.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(Some(e)) => e,
        Ok(None) => panic!("{} loaded", dir.display()),
        Err(_) => panic!("{}: the load still blocks after 60 s", dir.display()),
    }
}

fn assert_refused(dir: &Path, status: Status, words: &[&str]) {
    let e = refusal(dir);
    assert_eq!(e.status, status, "{e}");
    for w in words {
        assert!(e.message.contains(w), "{w:?} not in: {e}");
    }
}

/// An edit of config.json.
type ConfigEdit = Box<dyn FnOnce(&mut serde_json::Map<String, serde_json::Value>)>;

#[test]
fn config_values_adpo_cannot_honour_are_refused_naming_the_field() {
    let set = |key: &'static str, value: serde_json::Value| {
        move |c: &mut serde_json::Map<String, serde_json::Value>| {
            c.insert(key.to_string(), value);
        }
    };
    let cases: Vec<(&str, ConfigEdit, Vec<&str>)> = vec![
        (
            "llama_gqa2_untied_v97",
            Box::new(set("model_type", "gpt2".into())),
            vec!["model_type", "gpt2", "llama, mistral, qwen2, qwen3"],
        ),
        (
            "llama_gqa2_untied_v97",
            Box::new(set("hidden_act", "gelu".into())),
            vec!["hidden_act", "gelu", "silu"],
        ),
        (
            "qwen2_gqa2_tied",
            Box::new(set("num_key_value_heads", 3.into())),
            vec!["num_key_value_heads = 3"],
        ),
        (
            "llama_gqa2_untied_v97",
            Box::new(set(
                "rope_parameters",
                serde_json::json!({"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}),
            )),
            vec!["rope_type \"yarn\"", "default, linear, llama3"],
        ),
        (
            "llama_gqa2_untied_v97",
            Box::new(set("attention_dropout", 0.1.into())),
            vec!["attention_dropout", "0.1"],
        ),
        (
            "mistral_gqa2_untied",
            Box::new(set("sliding_window", 16.into())),
            vec!["sliding_window = 16", "max_position_embeddings = 128"],
        ),
        (
            "qwen2_mha_untied_window_off",
            Box::new(set("use_sliding_window", true.into())),
            vec!["sliding_window = 16", "use_sliding_window"],
        ),
        (
            "qwen3_gqa2_headdim16_tied",
            Box::new(|c: &mut serde_json::Map<String, serde_json::Value>| {
                c.insert("use_sliding_window".into(), true.into());
                c.insert("sliding_window".into(), 8.into());
                c.insert(
                    "layer_types".into(),
                    serde_json::json!(["full_attention", "sliding_attention"]),
                );
            }),
            vec!["sliding_window = 8"],
        ),
        (
            "qwen3_gqa2_headdim16_tied",
            Box::new(|c: &mut serde_json::Map<String, serde_json::Value>| {
                c.remove("hidden_size");
            }),
            vec!["hidden_size"],
        ),
    ];
    for (fixture_name, edit, words) in cases {
        let tmp = broken_copy(fixture_name);
        edit_config(tmp.path(), edit);
        assert_refused(tmp.path(), Status::Model, &words);
    }
}

#[test]
fn sliding_windows_that_cannot_bind_are_accepted() {
    // qwen2 fixture: sliding_window 16 but use_sliding_window false (hub style).
    load(&fixture("qwen2_mha_untied_window_off"), Dtype::Auto);
    // mistral fixture: sliding_window = max_position_embeddings.
    load(&fixture("mistral_mqa_tied_headdim16"), Dtype::Auto);
    // qwen3 with the window on but every layer full attention (max_window_layers = layers).
    let tmp = broken_copy("qwen3_gqa2_headdim16_tied");
    edit_config(tmp.path(), |c| {
        c.insert("use_sliding_window".into(), true.into());
        c.insert("sliding_window".into(), 8.into());
        c.remove("layer_types");
        c.insert("max_window_layers".into(), 2.into());
    });
    load(tmp.path(), Dtype::Auto);
}

#[test]
fn missing_extra_and_misshapen_tensors_are_refused_naming_the_tensor() {
    let tmp = broken_copy("llama_gqa2_untied_v97");
    edit_weights(tmp.path(), "model.safetensors", |t| {
        t.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight")
    });
    assert_refused(
        tmp.path(),
        Status::Checkpoint,
        &["model.layers.1.mlp.up_proj.weight", "missing"],
    );

    let tmp = broken_copy("llama_gqa2_untied_v97");
    edit_weights(tmp.path(), "model.safetensors", |t| {
        t.push((
            "model.layers.0.mlp.extra.weight".into(),
            Tensor::zeros([3], (Kind::Float, Device::Cpu)),
        ))
    });
    assert_refused(
        tmp.path(),
        Status::Checkpoint,
        &["model.layers.0.mlp.extra.weight", "unexpected"],
    );

    let tmp = broken_copy("qwen3_gqa2_headdim16_tied");
    edit_weights(tmp.path(), "model.safetensors", |t| {
        let i = t
            .iter()
            .position(|(n, _)| n == "model.layers.0.self_attn.k_norm.weight")
            .unwrap();
        t[i].1 = Tensor::ones([8], (Kind::Float, Device::Cpu));
    });
    assert_refused(
        tmp.path(),
        Status::Checkpoint,
        &["model.layers.0.self_attn.k_norm.weight", "[8]", "[16]"],
    );

    // A tied checkpoint may carry lm_head.weight (transformers then uses the embedding).
    let tmp = broken_copy("qwen2_gqa2_tied");
    edit_weights(tmp.path(), "model.safetensors", |t| {
        let e = t
            .iter()
            .find(|(n, _)| n == "model.embed_tokens.weight")
            .unwrap()
            .1
            .copy();
        t.push(("lm_head.weight".into(), e));
    });
    load(tmp.path(), Dtype::Auto);
    // An untied one must (it is missing otherwise).
    let tmp = broken_copy("llama_gqa2_untied_v97");
    edit_weights(tmp.path(), "model.safetensors", |t| {
        t.retain(|(n, _)| n != "lm_head.weight")
    });
    assert_refused(
        tmp.path(),
        Status::Checkpoint,
        &["lm_head.weight", "missing"],
    );
}

fn index_shards(dir: &Path) -> Vec<String> {
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let mut shards: Vec<String> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    shards.sort();
    shards.dedup();
    shards
}

#[test]
fn missing_and_truncated_shards_are_refused_naming_the_file() {
    for fixture_name in ["llama_sharded", "qwen3_sharded_tied"] {
        let shards = index_shards(&fixture(fixture_name));
        assert!(shards.len() > 2, "{fixture_name}: {shards:?}");
        let victim = &shards[shards.len() / 2];

        let tmp = broken_copy(fixture_name);
        std::fs::remove_file(tmp.path().join(victim)).unwrap();
        assert_refused(
            tmp.path(),
            Status::Checkpoint,
            &[victim.as_str(), "model.safetensors.index.json"],
        );

        let tmp = broken_copy(fixture_name);
        let path = tmp.path().join(victim);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        assert_refused(
            tmp.path(),
            Status::Checkpoint,
            &[victim.as_str(), "truncated"],
        );
    }
    let tmp = broken_copy("llama_gqa2_untied_v97");
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_refused(
        tmp.path(),
        Status::Checkpoint,
        &["model.safetensors", "truncated"],
    );

    let tmp = broken_copy("llama_gqa2_untied_v97");
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    assert_refused(tmp.path(), Status::Checkpoint, &["model.safetensors"]);

    let tmp = broken_copy("llama_gqa2_untied_v97");
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    assert_refused(tmp.path(), Status::Model, &["config.json"]);
}

// ------------------------------------------------------------ hostile checkpoint directories

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn fifos_in_a_checkpoint_are_refused_without_blocking() {
    for (file, status) in [
        ("config.json", Status::Model),
        ("generation_config.json", Status::Model),
        ("model.safetensors", Status::Checkpoint),
    ] {
        let tmp = broken_copy("llama_gqa2_untied_v97");
        mkfifo(&tmp.path().join(file));
        assert_refused(tmp.path(), status, &[file, "not a regular file"]);
    }
    let tmp = broken_copy("llama_sharded");
    let victim = &index_shards(tmp.path())[1];
    mkfifo(&tmp.path().join(victim));
    assert_refused(
        tmp.path(),
        Status::Checkpoint,
        &[victim, "not a regular file"],
    );
}

#[test]
fn json_files_are_read_up_to_a_bound() {
    for (file, device) in [
        ("config.json", "/dev/zero"),
        ("generation_config.json", "/dev/urandom"),
        ("model.safetensors.index.json", "/dev/zero"),
    ] {
        let tmp = broken_copy("llama_sharded");
        std::fs::remove_file(tmp.path().join(file)).unwrap();
        std::os::unix::fs::symlink(device, tmp.path().join(file)).unwrap();
        let e = refusal(tmp.path());
        assert!(
            e.message.contains(file) && e.message.contains("not a regular file"),
            "{e}"
        );
    }
    // A regular config.json past 4 MiB (valid JSON, padded) is refused by size, unparsed.
    let tmp = broken_copy("llama_gqa2_untied_v97");
    let path = tmp.path().join("config.json");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&" ".repeat(4 << 20));
    std::fs::write(&path, text).unwrap();
    assert_refused(tmp.path(), Status::Model, &["config.json", "limit"]);
}

#[test]
fn layer_counts_beyond_the_checkpoints_tensors_are_refused_before_allocating() {
    // The fixture holds 21 tensors: 22 layers cannot be there.
    for layers in [22i64, 10_000_000, 1 << 62] {
        let tmp = broken_copy("llama_gqa2_untied_v97");
        edit_config(tmp.path(), |c| {
            c.insert("num_hidden_layers".into(), layers.into());
        });
        let words = ["num_hidden_layers", "tensors"];
        assert_refused(tmp.path(), Status::Model, &words);
    }
}

#[test]
fn head_counts_whose_widths_overflow_are_refused_naming_the_field() {
    // (2^62 + 4) x 8 wraps to 32 = hidden_size: without checked arithmetic this loads.
    let tmp = broken_copy("llama_gqa2_untied_v97");
    edit_config(tmp.path(), |c| {
        c.insert("num_attention_heads".into(), ((1i64 << 62) + 4).into());
    });
    assert_refused(
        tmp.path(),
        Status::Model,
        &[
            "num_attention_heads = 4611686018427387908",
            "head_dim = 8",
            "overflows",
        ],
    );
}

#[test]
fn shard_names_outside_the_directory_are_refused_alike_whether_they_exist_or_not() {
    let outside = tempfile::tempdir().unwrap();
    let src = fixture("llama_sharded");
    let shard = index_shards(&src)[0].clone();
    std::fs::copy(src.join(&shard), outside.path().join(&shard)).unwrap();
    let there = outside.path().join(&shard).to_string_lossy().into_owned();
    let up = format!("../{}/{shard}", name(outside.path()));
    let names = [
        there,
        up,
        "/nonexistent/x.safetensors".into(),
        "../x".into(),
        "".into(),
    ];
    let mut messages = Vec::new();
    for bad in names {
        let tmp = broken_copy("llama_sharded");
        let path = tmp.path().join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace(&format!("\"{shard}\""), &format!("{bad:?}")),
        )
        .unwrap();
        let e = refusal(tmp.path());
        assert_eq!(e.status, Status::Checkpoint, "{e}");
        let dir = tmp.path().display().to_string();
        messages.push(
            e.message
                .replace(&format!("{bad:?}"), "NAME")
                .replace(&dir, "DIR"),
        );
    }
    assert!(
        messages[0].contains("not a relative path inside"),
        "{}",
        messages[0]
    );
    assert!(messages.iter().all(|m| *m == messages[0]), "{messages:?}");
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    for (value, fixture_name) in [
        (f64::NAN, "llama_gqa2_untied_v97"),
        (f64::INFINITY, "qwen2_gqa2_tied"),
    ] {
        let tmp = broken_copy(fixture_name);
        edit_weights(tmp.path(), "model.safetensors", |t| {
            let (_, w) = t
                .iter()
                .find(|(n, _)| n == "model.layers.1.mlp.up_proj.weight")
                .unwrap();
            let _ = w.view([-1]).narrow(0, 70, 1).fill_(value);
        });
        assert_refused(
            tmp.path(),
            Status::Checkpoint,
            &[
                "model.layers.1.mlp.up_proj.weight",
                "NaN or Inf",
                "element 70",
            ],
        );
    }
}

#[test]
fn load_options_reach_the_model() {
    let dir = fixture("llama_gqa2_untied_v97");
    let options = LoadOptions {
        device: device(),
        dtype: Dtype::Float64,
        ..LoadOptions::default()
    };
    let f64_model = Model::load_with(&dir, &options).unwrap();
    assert_eq!(f64_model.kind(), Kind::Double);
    let r = reference(&dir);
    let mask = &r["right_attention_mask"];
    let logits = f64_model.logits(&r["right_input_ids"], mask).unwrap();
    assert_eq!(logits.kind(), Kind::Double);
    let d = masked_max_diff(&logits, &r["right_logits"], mask);
    assert!(
        d < 1e-5,
        "float64 logits differ from transformers' float32 by {d}"
    );
}

#[test]
fn the_c_function_loads_with_options_and_reports_errors() {
    use adpo::ffi::error::{adpo_error, adpo_error_free, adpo_error_message, adpo_error_status};
    use adpo::ffi::model::{
        adpo_model, adpo_model_free, adpo_model_load_options, adpo_model_vocab_size,
    };
    use std::ffi::{CStr, CString};
    let dir = CString::new(fixture("llama_gqa2_untied_v97").to_str().unwrap()).unwrap();
    let load = |options: Option<&str>| -> Result<*mut adpo_model, (Status, String)> {
        let options = options.map(|o| CString::new(o).unwrap());
        let (mut out, mut err): (*mut adpo_model, *mut adpo_error) =
            (std::ptr::null_mut(), std::ptr::null_mut());
        let ptr = options.as_ref().map_or(std::ptr::null(), |o| o.as_ptr());
        let st = adpo_model_load_options(dir.as_ptr(), ptr, &mut out, &mut err);
        if st == Status::Ok {
            assert!(err.is_null() && !out.is_null());
            return Ok(out);
        }
        assert!(out.is_null(), "out written on failure");
        let message = unsafe { CStr::from_ptr(adpo_error_message(err)) }
            .to_string_lossy()
            .into_owned();
        assert_eq!(adpo_error_status(err), st);
        adpo_error_free(err);
        Err((st, message))
    };
    for options in [
        None,
        Some(""),
        Some(r#"{"dtype": "bfloat16", "device": "cpu"}"#),
    ] {
        let m = load(options).unwrap();
        let mut vocab = 0i64;
        assert_eq!(
            adpo_model_vocab_size(m, &mut vocab, std::ptr::null_mut()),
            Status::Ok
        );
        assert_eq!(vocab, 97);
        adpo_model_free(m);
    }
    let (st, message) = load(Some(r#"{"dtype": "float32", "precision": 1}"#)).unwrap_err();
    assert_eq!(st, Status::InvalidConfig);
    assert!(message.contains("precision"), "{message}");
    let (st, message) = load(Some(r#"{"dtype": "fp8"}"#)).unwrap_err();
    assert_eq!(st, Status::InvalidConfig);
    assert!(message.contains("fp8"), "{message}");
    let mut out: *mut adpo_model = std::ptr::null_mut();
    let st = adpo_model_load_options(
        std::ptr::null(),
        std::ptr::null(),
        &mut out,
        std::ptr::null_mut(),
    );
    assert_eq!(st, Status::NullArgument);
    let st = adpo_model_load_options(
        dir.as_ptr(),
        std::ptr::null(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    );
    assert_eq!(st, Status::NullArgument);
}

#[test]
fn a_saved_checkpoint_loads_back_with_the_trained_weights() {
    let src = fixture("qwen3_gqa2_headdim16_tied");
    let policy = shared(load(&src, Dtype::Auto));
    let mut t = Trainer::new(
        policy.clone(),
        None,
        r#"{"optimizer": {"name": "sgd", "lr": 0.1}}"#,
    )
    .unwrap();
    t.step(&batch()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("trained");
    std::fs::create_dir(&dir).unwrap();
    // An earlier checkpoint (config.json) with a file the new one lacks: replaced whole.
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    std::fs::write(dir.join("stale.txt"), "replaced").unwrap();
    policy.lock().save_pretrained(&dir).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| name(&e.unwrap().path()))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    let siblings: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert_eq!(siblings.len(), 1, "temporary directories left behind");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{f}"
        );
    }
    let reloaded = load(&dir, Dtype::Auto);
    let trained = policy.lock();
    assert_eq!(reloaded.params().len(), trained.params().len());
    for ((n, a), (m, b)) in reloaded.params().iter().zip(trained.params()) {
        assert_eq!(n, m);
        assert!(a.equal(&b.detach()), "{n} differs after the round trip");
    }
    let r = reference(&src);
    let (ids, mask) = (&r["left_input_ids"], &r["left_attention_mask"]);
    assert!(reloaded
        .logits(ids, mask)
        .unwrap()
        .equal(&trained.logits(ids, mask).unwrap().detach()));
    let before = masked_max_diff(
        &trained.logits(ids, mask).unwrap().detach(),
        &r["left_logits"],
        mask,
    );
    assert!(
        before > 1e-4,
        "the step did not change the logits ({before})"
    );

    // bf16 weights are saved as bf16, and config.json says so.
    let bf16_dir = out.path().join("bf16");
    load(&src, Dtype::Bfloat16)
        .save_pretrained(&bf16_dir)
        .unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bf16_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    assert_eq!(load(&bf16_dir, Dtype::Auto).kind(), Kind::BFloat16);

    let file = out.path().join("a_file");
    std::fs::write(&file, "x").unwrap();
    assert_eq!(
        reloaded.save_pretrained(&file).unwrap_err().status,
        Status::InvalidArgument
    );
}

#[test]
fn eos_ids_come_from_generation_config_then_config() {
    let lm = |dir: &Path| adpo::model::NativeLm::load(dir, None, Device::Cpu).unwrap();
    assert!(lm(&fixture("llama_gqa2_untied_v97")).eos_ids().is_empty());
    assert_eq!(lm(&fixture("llama_gqa2_untied_v97")).max_positions(), 128);
    let tmp = broken_copy("llama_gqa2_untied_v97");
    edit_config(tmp.path(), |c| {
        c.insert("eos_token_id".into(), 2.into());
    });
    assert_eq!(lm(tmp.path()).eos_ids(), [2]);
    std::fs::write(
        tmp.path().join("generation_config.json"),
        r#"{"eos_token_id": [5, 7]}"#,
    )
    .unwrap();
    assert_eq!(lm(tmp.path()).eos_ids(), [5, 7]);
    std::fs::write(
        tmp.path().join("generation_config.json"),
        r#"{"eos_token_id": "x"}"#,
    )
    .unwrap();
    let e = adpo::model::NativeLm::load(tmp.path(), None, Device::Cpu)
        .err()
        .unwrap();
    assert!(
        e.message.contains("generation_config.json") && e.message.contains("eos_token_id"),
        "{e}"
    );
}
