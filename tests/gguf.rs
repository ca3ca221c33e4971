//! GGUF files loaded as native models (src/model/gguf/): every supported tensor type
//! dequantized bit for bit as the `gguf` package's `dequantize` does, the llama/qwen2/qwen3
//! mappings against transformers' own GGUF load, the real SmolLM2-135M-Instruct Q4_1 file's
//! log-probs against transformers', LoRA on a GGUF base, and each malformed file refused with
//! a message naming the problem. Fixtures: tests/fixtures/make_gguf.py (`make fixtures`).

mod common;

use adpo::logprob::token_logp;
use adpo::model::{Dtype, LoadOptions, LoraOptions};
use adpo::Model;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const TYPES: [&str; 13] = [
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K",
];

fn root() -> PathBuf {
    common::fixtures_dir().join("gguf")
}

fn load(path: &Path) -> Model {
    Model::load_with(path, &LoadOptions::on(Device::Cpu))
        .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
}

fn reference(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make fixtures`", path.display()))
        .into_iter()
        .collect()
}

/// Every parameter of `model` equals the reference's tensor of that name, bit for bit.
fn assert_weights_equal(model: &Model, reference: &HashMap<String, Tensor>, what: &str) {
    let params = model.lm().named_parameters();
    assert!(!params.is_empty());
    for (name, t) in params {
        let r = reference
            .get(&name)
            .unwrap_or_else(|| panic!("{what}: no reference for {name}"));
        assert_eq!(t.kind(), Kind::Float, "{what}: {name}");
        assert_eq!(t.size(), r.size(), "{what}: {name}");
        let differ = t.ne_tensor(r).sum(Kind::Int64).int64_value(&[]);
        assert_eq!(differ, 0, "{what}: {name}: {differ} values differ");
    }
}

#[test]
fn every_tensor_type_dequantizes_as_ggml_does() {
    for ty in TYPES {
        let dir = root().join("types");
        let model = load(&dir.join(format!("{ty}.gguf")));
        let r = reference(&dir.join(format!("{ty}.safetensors")));
        assert_weights_equal(&model, &r, ty);
        assert_eq!(model.vocab(), 256);
    }
}

#[test]
fn architectures_equal_transformers_gguf_load() {
    for arch in ["llama", "qwen2", "qwen3", "mistral_style"] {
        let path = root().join("arch").join(format!("{arch}.gguf"));
        let model = load(&path);
        let r = reference(&path.with_extension("safetensors"));
        let weights: HashMap<String, Tensor> = r
            .iter()
            .filter(|(n, _)| n.starts_with("model.") || n.starts_with("lm_head"))
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        assert_weights_equal(&model, &weights, arch);
        let model_type = arch.replace("mistral_style", "llama");
        assert!(
            model.describe().contains(&model_type),
            "{}",
            model.describe()
        );
        let ids = &r["ids"];
        let logits = model.logits(ids, &ids.ones_like()).unwrap();
        let d = common::max_rel_diff(&[logits], &[r["logits"].shallow_clone()]);
        assert!(
            d < 1e-5,
            "{arch}: logits differ from transformers' by {d} (relative)"
        );
    }
}

/// A bf16 load is the float32 dequantization rounded once.
#[test]
fn dtype_option_converts_the_dequantized_weights() {
    let path = root().join("types").join("Q4_K.gguf");
    let options = LoadOptions {
        dtype: Dtype::Bfloat16,
        ..LoadOptions::on(Device::Cpu)
    };
    let model = Model::load_with(&path, &options).unwrap();
    let r = reference(&path.with_extension("safetensors"));
    for (name, t) in model.lm().named_parameters() {
        assert_eq!(t.kind(), Kind::BFloat16, "{name}");
        assert!(t.equal(&r[&name].to_kind(Kind::BFloat16)), "{name}");
    }
}

#[test]
fn lora_on_a_gguf_base() {
    let path = root().join("arch").join("qwen2.gguf");
    let options = LoadOptions {
        lora: Some(LoraOptions {
            target_modules: vec!["q_proj".into(), "down_proj".into()],
            ..LoraOptions::default()
        }),
        ..LoadOptions::on(Device::Cpu)
    };
    let model = Model::load_with(&path, &options).unwrap();
    assert!(model.has_adapters());
    let names: Vec<&str> = model.params().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().all(|n| n.contains(".lora_")), "{names:?}");
    // B starts at zero: the adapted model computes the base.
    let r = reference(&path.with_extension("safetensors"));
    let ids = &r["ids"];
    let logits = model.logits(ids, &ids.ones_like()).unwrap();
    let d = common::max_rel_diff(&[logits], &[r["logits"].shallow_clone()]);
    assert!(d < 1e-5, "LoRA at init differs from the base by {d}");
}

#[test]
fn a_gguf_model_saves_as_a_checkpoint_directory() {
    let path = root().join("arch").join("qwen3.gguf");
    let model = load(&path);
    let dir = std::env::temp_dir().join(format!("adpo-gguf-save-{}", std::process::id()));
    model.save_pretrained(&dir).unwrap();
    let saved = load(&dir);
    let r = reference(&path.with_extension("safetensors"));
    let ids = &r["ids"];
    let a = model.logits(ids, &ids.ones_like()).unwrap();
    let b = saved.logits(ids, &ids.ones_like()).unwrap();
    assert!(a.equal(&b), "the saved directory computes other logits");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The real file of the demo (scripts/fetch_model.py keeps it beside the converted directory).
fn smollm2() -> Option<PathBuf> {
    let venv = std::env::var("VIRTUAL_ENV")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv").to_string());
    let path = Path::new(&venv).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        return Some(path);
    }
    eprintln!(
        "SKIPPED: {} is absent (scripts/fetch_model.py writes it; make test fetches it)",
        path.display()
    );
    None
}

#[test]
fn smollm2_q4_1_log_probs_equal_transformers() {
    let Some(path) = smollm2() else { return };
    let model = load(&path);
    assert_eq!(model.vocab(), 49152);
    assert_eq!(model.lm().eos_ids(), vec![2]);
    let r = reference(&root().join("smollm2.safetensors"));
    let ids = &r["ids"];
    let ones = ids.ones_like();
    let ours = token_logp(&model, ids, &ones, &ones).unwrap();
    let ours = ours.narrow(1, 1, ids.size()[1] - 1);
    let d = (&ours - &r["logp"]).abs().max().double_value(&[]);
    // Measured: 1.7e-5 (float32 kernels differ in summation order).
    assert!(d < 1e-4, "token log-probs differ from transformers' by {d}");
}

/// adpo's tokenizer of the GGUF file `path` against transformers' (the JSON make_gguf.py wrote).
fn assert_tokenizer_equals(path: &Path, reference: &Path) {
    let text = std::fs::read_to_string(reference)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make fixtures`", reference.display()));
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tok = adpo::Tokenizer::load(path).unwrap();
    let what = path.display();
    assert_eq!(
        tok.vocab_size() as u64,
        r["vocab_size"].as_u64().unwrap(),
        "{what}"
    );
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        let list = v.as_array().unwrap();
        list.iter().map(|x| x.as_i64().unwrap()).collect()
    };
    let cases = r["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let with = ids(&case["ids"]);
        assert_eq!(tok.encode(text, true).unwrap(), with, "{what}: {text:?}");
        let plain = tok.encode(text, false).unwrap();
        assert_eq!(plain, ids(&case["ids_plain"]), "{what}: {text:?}");
        let decoded = tok.decode(&with, false).unwrap();
        assert_eq!(
            decoded,
            case["decode"].as_str().unwrap(),
            "{what}: {text:?}"
        );
        let skipped = tok.decode(&with, true).unwrap();
        assert_eq!(
            skipped,
            case["decode_skip"].as_str().unwrap(),
            "{what}: {text:?}"
        );
    }
    if let Some(chat) = r["chat"].as_str() {
        let messages = r["messages"].to_string();
        assert_eq!(
            tok.apply_chat_template(&messages, true).unwrap(),
            chat,
            "{what}"
        );
    }
    let eos = tok.token_to_id(r["eos_token"].as_str().unwrap()).unwrap();
    assert_eq!(tok.eos_ids(), &[eos], "{what}");
}

#[test]
fn smollm2_tokenizer_equals_transformers_gguf_conversion() {
    if smollm2().is_none() {
        return;
    }
    let path = smollm2().unwrap();
    assert_tokenizer_equals(&path, &root().join("smollm2_tokenizer.json"));
    // Its vocabulary with Qwen2's split regex and BOS added (written by make_gguf.py).
    let variant = root().join("bpe_qwen2_bos.gguf");
    assert_tokenizer_equals(&variant, &root().join("bpe_qwen2_bos_tokenizer.json"));
}

#[test]
fn sentencepiece_tokenizer_equals_transformers_gguf_conversion() {
    let path = root().join("sentencepiece.gguf");
    assert_tokenizer_equals(&path, &root().join("sentencepiece_tokenizer.json"));
}

/// A GGUF v3 file with string metadata and string/float arrays only, no tensors.
fn write_gguf(path: &Path, strings: &[(&str, &str)], arrays: &[(&str, Vec<String>)]) {
    let mut b: Vec<u8> = b"GGUF".to_vec();
    let text = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(((strings.len() + 2 * arrays.len()) as u64).to_le_bytes());
    for (k, v) in strings {
        text(&mut b, k);
        b.extend(8u32.to_le_bytes());
        text(&mut b, v);
    }
    for (k, items) in arrays {
        text(&mut b, k);
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend((items.len() as u64).to_le_bytes());
        for s in items {
            text(&mut b, s);
        }
        // Their scores, all 0.0.
        text(&mut b, "tokenizer.ggml.scores");
        b.extend(9u32.to_le_bytes());
        b.extend(6u32.to_le_bytes());
        b.extend((items.len() as u64).to_le_bytes());
        b.extend(std::iter::repeat_n(0u8, 4 * items.len()));
    }
    std::fs::write(path, b).unwrap();
}

/// A SentencePiece vocabulary without merges whose tokens are too long to split in bounded
/// time is refused by name (transformers would spend hours on it).
#[test]
fn merges_are_recovered_only_within_a_work_bound() {
    let dir = std::env::temp_dir().join(format!("adpo-gguf-spm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("long_tokens.gguf");
    let meta = [
        ("general.architecture", "llama"),
        ("tokenizer.ggml.model", "llama"),
    ];
    let long = vec!["a".repeat(70_000), "b".into()];
    write_gguf(&path, &meta, &[("tokenizer.ggml.tokens", long)]);
    let e = adpo::Tokenizer::load(&path).err().expect("refused");
    assert_eq!(e.status, adpo::Status::Model, "{}", e.message);
    assert!(
        e.message.contains("more than adpo's limit"),
        "{}",
        e.message
    );
    // The same vocabulary with short tokens loads.
    let short = vec!["\u{2581}a".into(), "\u{2581}".into(), "a".into()];
    write_gguf(&path, &meta, &[("tokenizer.ggml.tokens", short)]);
    let tok = adpo::Tokenizer::load(&path).unwrap();
    assert_eq!(tok.encode("a", false).unwrap(), vec![0]);
    std::fs::remove_dir_all(&dir).unwrap();
}
