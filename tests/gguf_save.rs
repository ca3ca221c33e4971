//! GGUF writing (src/model/gguf/{writer,export,adapter,quant,vocab}.rs): adpo's files read back
//! by adpo's own loader (f32 bit for bit, f16/bf16 as torch rounds, q8_0 within half a step of
//! each block), LoRA models written merged without changing the model, checkpoint directories
//! written as GGUF, the atomic write and its refusals, and (tests/gguf_save_check.py) the real
//! consumers: transformers' GGUF loader reads adpo's files to adpo's logits, its GGUF tokenizer
//! to the same ids, the `gguf` package reads the adapter files as llama.cpp's converter writes
//! them, and, where scripts/setup-llama-cpp built it, llama.cpp itself generates adpo's tokens.

mod common;

use adpo::model::{GgufDtype, GgufSaveOptions, LoadOptions, LoraOptions};
use adpo::{Model, Status, Tokenizer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const ARCHS: [&str; 4] = ["llama", "qwen2", "qwen3", "mistral_style"];
const ALL: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

fn arch(name: &str) -> PathBuf {
    common::fixtures_dir()
        .join("gguf/arch")
        .join(format!("{name}.gguf"))
}

fn load(path: &Path) -> Model {
    Model::load_with(path, &LoadOptions::on(Device::Cpu))
        .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
}

fn load_lora(path: &Path) -> Model {
    let options = LoadOptions {
        lora: Some(LoraOptions {
            r: 4,
            alpha: 8.0,
            target_modules: ALL.iter().map(|s| s.to_string()).collect(),
            ..LoraOptions::default()
        }),
        ..LoadOptions::on(Device::Cpu)
    };
    Model::load_with(path, &options).unwrap()
}

/// A fresh directory under the system's temp dir.
fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adpo-gguf-save-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn options(dtype: GgufDtype) -> GgufSaveOptions {
    GgufSaveOptions { dtype }
}

fn ids() -> Tensor {
    Tensor::from_slice(&[1i64, 5, 9, 200, 17, 3, 44, 90, 7, 2, 250, 31]).reshape([2, 6])
}

fn logits(model: &Model, ids: &Tensor) -> Tensor {
    model.logits(ids, &ids.ones_like()).unwrap()
}

fn params(model: &Model) -> HashMap<String, Tensor> {
    model.lm().named_parameters().into_iter().collect()
}

/// Gives every adapter's B random values (B starts at zero, which would merge to the base).
fn perturb_adapters(model: &Model) {
    tch::manual_seed(3);
    tch::no_grad(|| {
        for (name, t) in model.params() {
            if name.ends_with("lora_B.weight") {
                let _ = t.shallow_clone().copy_(&(t.randn_like() * 0.05));
            }
        }
    });
}

#[test]
fn f32_files_read_back_bit_for_bit() {
    let dir = scratch("f32");
    for name in ARCHS {
        let model = load(&arch(name));
        let out = dir.join(format!("{name}.gguf"));
        model.save_gguf(&out, &options(GgufDtype::F32)).unwrap();
        let back = load(&out);
        let (a, b) = (params(&model), params(&back));
        assert_eq!(a.len(), b.len(), "{name}");
        for (n, t) in &a {
            assert!(t.equal(&b[n]), "{name}: {n} differs after the round trip");
        }
        let ids = ids();
        assert!(logits(&model, &ids).equal(&logits(&back, &ids)), "{name}");
        assert_eq!(back.lm().eos_ids(), model.lm().eos_ids(), "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Each matrix as `dtype` stores it, read back: f16/bf16 exactly torch's rounding; q8_0 within
/// half a quantization step (the block's max |x| / 127 / 2) of each value; vectors exact.
fn assert_rounded(name: &str, want: &Tensor, got: &Tensor, dtype: GgufDtype) {
    if want.dim() < 2 {
        assert!(want.equal(got), "{name}: a vector is not stored f32");
        return;
    }
    match dtype {
        GgufDtype::F16 | GgufDtype::Bf16 => {
            let kind = if dtype == GgufDtype::F16 {
                Kind::Half
            } else {
                Kind::BFloat16
            };
            let rounded = want.to_kind(kind).to_kind(Kind::Float);
            assert!(rounded.equal(got), "{name}: not {kind:?}'s rounding");
        }
        GgufDtype::Q8_0 => {
            let rows = want.size()[0];
            let blocks = want.reshape([rows, -1, 32]);
            let step = blocks.abs().amax([2], true) / 127.0;
            let err = (got.reshape([rows, -1, 32]) - &blocks).abs();
            // Half a step, plus the step's own float16 rounding (2^-11 relative) times |q| <= 127.
            let excess = (err - step * (0.5 + 127.0 / 2048.0) - 1e-7)
                .max()
                .double_value(&[]);
            assert!(
                excess <= 0.0,
                "{name}: q8_0 error beyond half a step by {excess}"
            );
        }
        GgufDtype::F32 => assert!(want.equal(got), "{name}"),
    }
}

#[test]
fn f16_bf16_and_q8_0_files_read_back_within_their_rounding() {
    let dir = scratch("dtypes");
    // Two GGUF sources and a checkpoint directory of random float32 weights.
    let hf = common::fixtures_dir().join("hf/qwen2_gqa2_tied");
    for (name, path) in [
        ("llama", arch("llama")),
        ("qwen3", arch("qwen3")),
        ("qwen2-hf", hf),
    ] {
        let model = load(&path);
        let want = params(&model);
        for (dtype, tol) in [
            (GgufDtype::F16, 2e-3),
            (GgufDtype::Bf16, 2e-2),
            // q8_0's element bound is checked above; on tiny random models the logits move more.
            (GgufDtype::Q8_0, 6e-2),
        ] {
            let out = dir.join(format!("{name}-{dtype:?}.gguf"));
            model.save_gguf(&out, &options(dtype)).unwrap();
            let back = load(&out);
            for (n, t) in params(&back) {
                assert_rounded(&format!("{name} {dtype:?} {n}"), &want[&n], &t, dtype);
            }
            let ids = ids().remainder(model.vocab());
            let d = common::max_rel_diff(&[logits(&model, &ids)], &[logits(&back, &ids)]);
            assert!(d < tol, "{name} {dtype:?}: logits differ by {d}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_lora_model_is_written_merged_and_left_as_it_was() {
    let dir = scratch("merged");
    for name in ["llama", "qwen2"] {
        let model = load_lora(&arch(name));
        perturb_adapters(&model);
        let before: Vec<Tensor> = model.params().iter().map(|(_, t)| t.copy()).collect();
        let out = dir.join(format!("{name}.gguf"));
        model.save_gguf(&out, &options(GgufDtype::F32)).unwrap();
        assert!(model.has_adapters());
        for ((n, t), b) in model.params().iter().zip(&before) {
            assert!(t.equal(b), "{name}: {n} changed by the save");
        }
        let back = load(&out);
        assert!(!back.has_adapters());
        let ids = ids();
        let d = common::max_rel_diff(&[logits(&model, &ids)], &[logits(&back, &ids)]);
        assert!(
            d < 1e-5,
            "{name}: merged file differs from the adapted model by {d}"
        );
        let base = load(&arch(name));
        let moved = common::max_rel_diff(&[logits(&base, &ids)], &[logits(&back, &ids)]);
        assert!(
            moved > 1e-3,
            "{name}: the merge did not change the model ({moved})"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn checkpoint_directories_are_written_as_gguf() {
    let dir = scratch("hf");
    for name in [
        "llama_gqa2_untied_v97",
        "qwen2_gqa2_tied",
        "qwen3_sharded_tied",
        "mistral_gqa2_untied",
    ] {
        let src = common::fixtures_dir().join("hf").join(name);
        let model = load(&src);
        let out = dir.join(format!("{name}.gguf"));
        model.save_gguf(&out, &options(GgufDtype::F32)).unwrap();
        let back = load(&out);
        let ids = ids().remainder(model.vocab());
        let d = common::max_rel_diff(&[logits(&model, &ids)], &[logits(&back, &ids)]);
        assert!(d < 1e-6, "{name}: the GGUF computes other logits ({d})");
    }
    // Linear RoPE scaling travels as llama.cpp's rope.scaling.type / .factor.
    let model = load(&common::fixtures_dir().join("hf/llama_mha_linear_bias"));
    let scaled = dir.join("scaled.gguf");
    model.save_gguf(&scaled, &options(GgufDtype::F32)).unwrap();
    let ids = ids().remainder(model.vocab());
    let d = common::max_rel_diff(&[logits(&model, &ids)], &[logits(&load(&scaled), &ids)]);
    assert!(
        d < 1e-6,
        "linear RoPE scaling: the GGUF computes other logits ({d})"
    );
    // Other scalings in the metadata are refused by name, not computed as plain RoPE.
    let yarn = dir.join("yarn.gguf");
    let bytes = std::fs::read(&scaled).unwrap();
    // The value string: its u64 length, then the bytes (general.name holds "linear" too).
    let value = [&6u64.to_le_bytes()[..], b"linear"].concat();
    let at = 8 + bytes
        .windows(14)
        .position(|w| w == &value[..])
        .expect("the scaling type");
    let mut patched = bytes.clone();
    patched[at..at + 6].copy_from_slice(b"yarn__");
    std::fs::write(&yarn, patched).unwrap();
    let e = Model::load(&yarn, Device::Cpu).err().expect("refused");
    assert_eq!(e.status, Status::Unsupported, "{}", e.message);
    assert!(e.message.contains("yarn__"), "{}", e.message);
    // llama.cpp's qwen3 has no attention biases.
    let model = load(&common::fixtures_dir().join("hf/qwen3_mqa_bias_untied_v97"));
    let e = model
        .save_gguf(&dir.join("bias.gguf"), &options(GgufDtype::F32))
        .unwrap_err();
    assert_eq!(e.status, Status::Unsupported, "{}", e.message);
    // A word-level tokenizer has no GGUF form: refused by name rather than left out.
    let model = load(&common::fixtures_dir().join("hf/qwen3_gqa2_headdim16_tied"));
    let e = model
        .save_gguf(&dir.join("wordlevel.gguf"), &options(GgufDtype::F32))
        .unwrap_err();
    assert_eq!(e.status, Status::Unsupported, "{}", e.message);
    assert!(e.message.contains("byte-level BPE"), "{}", e.message);
    assert!(!dir.join("wordlevel.gguf").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Llama 3.1 RoPE scaling travels as llama.cpp's converter writes it, per-frequency factors in
/// `rope_freqs.weight`: the file computes the checkpoint's logits, and reads back as a model
/// that saves to GGUF again but not to a config.json (which has no form for the factors).
#[test]
fn llama3_rope_scaling_travels_as_rope_freqs() {
    let dir = scratch("llama3");
    let model = load(&common::fixtures_dir().join("hf/llama_mqa_tied_llama3"));
    let gguf = dir.join("llama3.gguf");
    model.save_gguf(&gguf, &options(GgufDtype::F32)).unwrap();
    let back = load(&gguf);
    let ids = ids().remainder(model.vocab());
    let want = logits(&model, &ids);
    let d = common::max_rel_diff(&[logits(&back, &ids)], &[want.shallow_clone()]);
    assert!(d < 1e-6, "the GGUF computes other logits ({d})");
    let again = dir.join("again.gguf");
    back.save_gguf(&again, &options(GgufDtype::F32)).unwrap();
    let d = common::max_rel_diff(&[logits(&load(&again), &ids)], &[want]);
    assert!(d < 1e-6, "written again: {d}");
    let e = back.save_pretrained(&dir.join("hf")).unwrap_err();
    assert_eq!(e.status, Status::Unsupported, "{}", e.message);
    assert!(e.message.contains("rope_freqs"), "{}", e.message);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn existing_paths_are_replaced_only_when_they_are_gguf() {
    let dir = scratch("paths");
    let model = load(&arch("qwen2"));
    let o = options(GgufDtype::F32);
    let text = dir.join("notes.txt");
    std::fs::write(&text, "keep me").unwrap();
    let e = model.save_gguf(&text, &o).unwrap_err();
    assert_eq!(e.status, Status::InvalidArgument, "{}", e.message);
    assert_eq!(std::fs::read_to_string(&text).unwrap(), "keep me");
    let e = model.save_gguf(&dir, &o).unwrap_err();
    assert_eq!(e.status, Status::InvalidArgument, "{}", e.message);
    let out = dir.join("m.gguf");
    model.save_gguf(&out, &options(GgufDtype::F16)).unwrap();
    let f16_len = std::fs::metadata(&out).unwrap().len();
    model.save_gguf(&out, &o).unwrap();
    assert!(
        std::fs::metadata(&out).unwrap().len() > f16_len,
        "not replaced"
    );
    let e = model
        .save_gguf(&dir.join("missing/m.gguf"), &o)
        .unwrap_err();
    assert_eq!(e.status, Status::Io, "{}", e.message);
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["m.gguf", "notes.txt"], "temporaries left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn adapters_need_a_model_with_adapters() {
    let dir = scratch("noadapter");
    let model = load(&arch("llama"));
    let e = model
        .save_adapter_gguf(&dir.join("a.gguf"), &options(GgufDtype::F32))
        .unwrap_err();
    assert_eq!(e.status, Status::Unsupported, "{}", e.message);
    assert!(e.message.contains("no LoRA adapters"), "{}", e.message);
    assert!(!dir.join("a.gguf").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn python() -> PathBuf {
    let venv = std::env::var("VIRTUAL_ENV")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv").to_string());
    Path::new(&venv).join("bin/python")
}

fn smollm2() -> Option<PathBuf> {
    let venv = std::env::var("VIRTUAL_ENV")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv").to_string());
    let path = Path::new(&venv).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    path.is_file().then_some(path)
}

/// One file for the Python checker: the GGUF, and adpo's logits on `ids` (and its greedy
/// tokens after each row of `prompt`, for llama.cpp).
struct Case {
    name: String,
    gguf: PathBuf,
    /// The base GGUF an adapter file goes on (None: a whole model).
    base: Option<PathBuf>,
    /// The GGUF the tokenizer came from (its tokenizer must read the same).
    tokenizer_of: Option<PathBuf>,
    tol: f64,
    /// Whether llama.cpp runs it too (the float32 files: its kernels round 16-bit and q8_0
    /// activations their own way).
    llama_cpp: bool,
    /// Whether transformers' GGUF loader reads it too (not a file without a tokenizer).
    transformers: bool,
}

fn write_case(dir: &Path, case: &Case, model: &Model, ids: &Tensor) -> serde_json::Value {
    let l = logits(model, ids);
    let greedy = greedy(model, ids, 6);
    let file = dir.join(format!("{}.safetensors", case.name));
    Tensor::write_safetensors(&[("ids", ids), ("logits", &l), ("greedy", &greedy)], &file).unwrap();
    serde_json::json!({
        "name": case.name,
        "gguf": case.gguf,
        "base": case.base,
        "tokenizer_of": case.tokenizer_of,
        "tol": case.tol,
        "llama_cpp": case.llama_cpp,
        "transformers": case.transformers,
        "reference": file,
    })
}

/// `steps` greedy tokens after each row of `ids` (argmax of the logits, no cache).
fn greedy(model: &Model, ids: &Tensor, steps: i64) -> Tensor {
    let mut seq = ids.shallow_clone();
    for _ in 0..steps {
        let next = logits(model, &seq).select(1, -1).argmax(-1, true);
        seq = Tensor::cat(&[&seq, &next], 1);
    }
    seq.narrow(1, ids.size()[1], steps).contiguous()
}

/// A checkpoint directory at `path`: the tiny llama_v759 model with the Mistral-layout
/// SentencePiece-style tokenizer of the tokenizer fixtures.
fn sentencepiece_directory(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    let fixtures = common::fixtures_dir();
    for (from, file) in [
        ("hf/llama_v759", "config.json"),
        ("hf/llama_v759", "model.safetensors"),
        ("tokenizers/mistral", "tokenizer.json"),
        ("tokenizers/mistral", "tokenizer_config.json"),
    ] {
        std::fs::copy(fixtures.join(from).join(file), path.join(file)).unwrap();
    }
    path.to_path_buf()
}

#[test]
fn transformers_and_llama_cpp_read_adpo_gguf() {
    let dir = scratch("consumers");
    let mut cases = Vec::new();
    for name in ["llama", "qwen2", "qwen3"] {
        let model = load(&arch(name));
        let gguf = dir.join(format!("{name}.gguf"));
        model.save_gguf(&gguf, &options(GgufDtype::F32)).unwrap();
        let case = Case {
            name: name.into(),
            gguf: gguf.clone(),
            base: None,
            tokenizer_of: None,
            tol: 1e-5,
            llama_cpp: true,
            transformers: true,
        };
        cases.push(write_case(&dir, &case, &model, &ids()));
        let lora = load_lora(&arch(name));
        perturb_adapters(&lora);
        let adapter = dir.join(format!("{name}-lora.gguf"));
        lora.save_adapter_gguf(&adapter, &options(GgufDtype::F32))
            .unwrap();
        lora.save_adapter(&dir.join(format!("{name}-peft")))
            .unwrap();
        let case = Case {
            name: format!("{name}-lora"),
            gguf: adapter,
            base: Some(gguf),
            tokenizer_of: None,
            tol: 1e-5,
            llama_cpp: true,
            transformers: true,
        };
        cases.push(write_case(&dir, &case, &lora, &ids()));
    }
    // 16-bit and q8_0 files: transformers dequantizes them to what adpo's loader reads.
    let model = load(&arch("llama"));
    for dtype in [GgufDtype::F16, GgufDtype::Bf16, GgufDtype::Q8_0] {
        let gguf = dir.join(format!("llama-{dtype:?}.gguf"));
        model.save_gguf(&gguf, &options(dtype)).unwrap();
        let case = Case {
            name: format!("llama-{dtype:?}"),
            gguf: gguf.clone(),
            base: None,
            tokenizer_of: None,
            tol: 1e-5,
            llama_cpp: false,
            transformers: true,
        };
        cases.push(write_case(&dir, &case, &load(&gguf), &ids()));
    }
    if let Some(src) = smollm2() {
        let model = load(&src);
        let gguf = dir.join("smollm2.gguf");
        model.save_gguf(&gguf, &options(GgufDtype::F32)).unwrap();
        let ids =
            Tensor::from_slice(&[1i64, 9690, 42, 2684, 314, 253, 3873, 30, 2]).reshape([1, 9]);
        let case = Case {
            name: "smollm2".into(),
            gguf,
            base: None,
            tokenizer_of: Some(src.clone()),
            tol: 1e-4,
            llama_cpp: true,
            transformers: true,
        };
        cases.push(write_case(&dir, &case, &model, &ids));
        // The demo's output: LoRA trained on the GGUF itself, its adapter served on that base.
        let lora = load_lora(&src);
        perturb_adapters(&lora);
        let adapter = dir.join("smollm2-lora.gguf");
        lora.save_adapter_gguf(&adapter, &options(GgufDtype::F32))
            .unwrap();
        lora.save_adapter(&dir.join("smollm2-lora-peft")).unwrap();
        let case = Case {
            name: "smollm2-lora".into(),
            gguf: adapter,
            base: Some(dir.join("smollm2.gguf")),
            tokenizer_of: None,
            tol: 1e-4,
            llama_cpp: true,
            transformers: true,
        };
        cases.push(write_case(&dir, &case, &lora, &ids));
    }
    // A checkpoint directory's byte-level BPE tokenizer.json, converted (the same model as HF).
    let hf = smollm2().map(|p| p.with_file_name("SmolLM2-135M-Instruct"));
    if let Some(src) = hf.filter(|d| d.join("tokenizer.json").is_file()) {
        let model = load(&src);
        let gguf = dir.join("smollm2-hf.gguf");
        model.save_gguf(&gguf, &options(GgufDtype::F32)).unwrap();
        let ids =
            Tensor::from_slice(&[1i64, 9690, 42, 2684, 314, 253, 3873, 30, 2]).reshape([1, 9]);
        let case = Case {
            name: "smollm2-hf".into(),
            gguf,
            base: None,
            tokenizer_of: Some(src),
            tol: 1e-4,
            llama_cpp: true,
            transformers: true,
        };
        cases.push(write_case(&dir, &case, &model, &ids));
    }
    // A SentencePiece-style tokenizer.json (Mistral layout: byte fallback, U+2581 spaces), written
    // as a "llama" vocabulary: adpo, transformers and llama.cpp read the directory's ids back.
    let spm = sentencepiece_directory(&dir.join("spm-dir"));
    let model = load(&spm);
    let gguf = dir.join("spm.gguf");
    model.save_gguf(&gguf, &options(GgufDtype::F32)).unwrap();
    let (ours, theirs) = (
        Tokenizer::load(&gguf).unwrap(),
        Tokenizer::load(&spm).unwrap(),
    );
    for text in [
        "Hello, world!",
        " leading space",
        "émoji 🙂 日本語\tand\nlines",
    ] {
        assert_eq!(
            ours.encode(text, true).unwrap(),
            theirs.encode(text, true).unwrap(),
            "{text:?}: adpo reads the written SentencePiece vocabulary to other ids"
        );
    }
    let case = Case {
        name: "spm-dir".into(),
        gguf,
        base: None,
        tokenizer_of: Some(spm),
        tol: 1e-5,
        llama_cpp: true,
        transformers: true,
    };
    cases.push(write_case(
        &dir,
        &case,
        &model,
        &ids().remainder(model.vocab()),
    ));
    // Linear RoPE scaling (with llama's attention and MLP biases): llama.cpp interpolates the
    // positions as adpo does. Llama 3.1 RoPE scaling as rope_freqs: llama.cpp applies the
    // factors as adpo does. (These fixtures have no tokenizer, which transformers' GGUF loader
    // needs.)
    for (fixture, name) in [
        ("llama_mha_linear_bias", "llama-linear-rope"),
        ("llama_mqa_tied_llama3", "llama3-rope"),
    ] {
        let model = load(&common::fixtures_dir().join("hf").join(fixture));
        let gguf = dir.join(format!("{name}.gguf"));
        model.save_gguf(&gguf, &options(GgufDtype::F32)).unwrap();
        let case = Case {
            name: name.into(),
            gguf,
            base: None,
            tokenizer_of: None,
            tol: 1e-5,
            llama_cpp: true,
            transformers: false,
        };
        let ids = ids().remainder(model.vocab());
        cases.push(write_case(&dir, &case, &model, &ids));
    }
    let list = dir.join("cases.json");
    std::fs::write(&list, serde_json::Value::Array(cases).to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gguf_save_check.py");
    let status = std::process::Command::new(python())
        .arg(script)
        .arg(&list)
        .status()
        .expect("run tests/gguf_save_check.py");
    assert!(status.success(), "tests/gguf_save_check.py failed");
    std::fs::remove_dir_all(&dir).unwrap();
}
