//! C ABI of causal LMs (src/model/): Hugging Face checkpoint directories and TorchScript files.

// Section of include/adpo.h: Models
// Causal LMs as opaque handles: the trainable policy, or a frozen reference. Loading a
// TorchScript file runs its code: load only files you trust.

use super::args::{c_str, require_out, write_out};
use super::boundary::{call, call_on};
use super::error::adpo_error;
use super::handle::{free, handle, Guarded, Handle};
use crate::echo::echo_path;
use crate::error::{catch_torch, Error, Result, Status};
use crate::model::{parse_device, GgufSaveOptions, LoadOptions, Model, SharedModel};
use parking_lot::Mutex;
use std::ffi::c_char;
use std::path::Path;
use std::sync::Arc;

/// A causal LM (a Hugging Face checkpoint or a TorchScript module). A trainer keeps its own
/// reference to the models it was created with: freeing the handle after adpo_trainer_new is
/// fine.
pub struct adpo_model(Guarded<SharedModel>);
handle!(adpo_model, SharedModel);

/// Loads a causal LM. `path` is a Hugging Face checkpoint directory (config.json plus
/// model.safetensors, or model.safetensors.index.json and its shards; model_type llama,
/// mistral, qwen2 or qwen3), loaded in config.json's dtype; a GGUF file (architecture llama,
/// qwen2 or qwen3; tensors F32, F16, BF16, F64, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K,
/// dequantized to float32 as ggml does; README "GGUF files"), where a truncated or malformed
/// file (magic, version, counts, lengths, offsets, non-UTF-8 strings, shapes that do not match
/// the metadata) is ADPO_STATUS_CHECKPOINT and another tensor type ADPO_STATUS_UNSUPPORTED; or a
/// TorchScript file
/// (`torch.jit.script(model).save(path)`) whose forward is `forward(input_ids int64 [B, T],
/// attention_mask int64 [B, T]) -> logits [B, T, V]` or `forward(input_ids)`. `device`: "cpu"
/// (NULL), "cuda" or "cuda:N". A missing path, a config.json adpo cannot honour (unknown
/// model_type, an activation other than silu, a sliding window shorter than
/// max_position_embeddings, ...) or a TorchScript forward with another signature or output
/// shape (tried on a 1 x 2 input) is an ADPO_STATUS_MODEL error; weights that do not match the
/// config (a missing, unexpected or misshapen tensor, a missing or truncated shard) are
/// ADPO_STATUS_CHECKPOINT errors. The message names the field, tensor or file.
///
/// Security: loading a TorchScript file runs the code it holds (its forward, and whatever that
/// calls), with the host's rights: load only TorchScript files you trust. A checkpoint
/// directory holds data only (JSON and safetensors, no code): prefer it for files from
/// elsewhere.
#[no_mangle]
pub extern "C" fn adpo_model_load(
    path: *const c_char,
    device: *const c_char,
    out: *mut *mut adpo_model,
    err: *mut *mut adpo_error,
) -> Status {
    call(err, || {
        require_out(out, "out")?;
        let path = c_str(path, "path")?;
        let device = if device.is_null() {
            tch::Device::Cpu
        } else {
            parse_device(c_str(device, "device")?)?
        };
        load_into(out, path, &LoadOptions::on(device))
    })
}

/// Loads `path` and hands the new handle to the caller.
fn load_into(out: *mut *mut adpo_model, path: &str, options: &LoadOptions) -> Result<()> {
    let model = echo_path(path, Model::load_with(Path::new(path), options))?;
    write_out(
        out,
        "out",
        adpo_model::into_raw(Arc::new(Mutex::new(model))),
    )
}

/// adpo_model_load with options, a JSON object (NULL or "" = defaults; unknown keys are an
/// ADPO_STATUS_INVALID_CONFIG error): `{"device": "cpu" | "cuda" | "cuda:N", "dtype": "auto" |
/// "float32" | "bfloat16" | "float16" | "float64", "lora": {...}, "adapter": "DIR"}`. `dtype`
/// (default "auto": config.json's `dtype`/`torch_dtype`, else the stored weights' dtype; for a
/// GGUF file float32) converts a checkpoint directory's or GGUF file's weights at load; a TorchScript file keeps its own dtype
/// (anything but "auto" is ADPO_STATUS_UNSUPPORTED).
///
/// LoRA (checkpoint directories and GGUF files), with PEFT's semantics: `"lora": {"r": 8, "alpha": 8,
/// "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "init": "default" | "gaussian",
/// "seed": 0}` (the defaults) puts y = W x + (alpha / r) B A x on every projection whose module
/// name equals an entry or ends with "." + entry (q_proj, k_proj, v_proj, o_proj, gate_proj,
/// up_proj, down_proj); B starts at 0 and A as PEFT's init (default: uniform(-1/sqrt(in),
/// 1/sqrt(in))) from adpo's generator seeded by `seed` and the module name. `"adapter": DIR`
/// loads a PEFT adapter directory instead (adapter_config.json + adapter_model.safetensors) to
/// continue training it. The base weights are frozen: only the adapters train (float32, or
/// float64 on a float64 base), and a trainer with anchor "fixed" and no reference uses the base
/// (the adapters switched off) as the reference. An entry that matches no module or a module
/// other than those projections, r < 1, dropout > 0 (not implemented), or both "lora" and
/// "adapter" are refused (INVALID_CONFIG / UNSUPPORTED); an adapter tensor of another shape
/// or for a module the base lacks is ADPO_STATUS_CHECKPOINT, naming the tensor.
#[no_mangle]
pub extern "C" fn adpo_model_load_options(
    path: *const c_char,
    options_json: *const c_char,
    out: *mut *mut adpo_model,
    err: *mut *mut adpo_error,
) -> Status {
    call(err, || {
        require_out(out, "out")?;
        let path = c_str(path, "path")?;
        let options = if options_json.is_null() {
            LoadOptions::default()
        } else {
            LoadOptions::from_json(c_str(options_json, "options_json")?)?
        };
        load_into(out, path, &options)
    })
}

/// Writes the model, with its current weights (a policy's as trained so far), as a Hugging Face
/// checkpoint directory that `transformers.AutoModelForCausalLM.from_pretrained(dir)` and
/// adpo_model_load read: config.json (the loaded one, its dtype set to the weights' dtype),
/// model.safetensors (every parameter under its checkpoint name, a tied head once) and the
/// source directory's tokenizer*, special_tokens_map.json and generation_config.json files.
/// The directory is written under a temporary name beside `dir`, flushed to disk and swapped
/// into place in one step: `dir` is always the old checkpoint or the new one, whole. An
/// existing `dir` is replaced only when it is a checkpoint (it holds config.json) or empty;
/// any other directory is refused with ADPO_STATUS_INVALID_ARGUMENT and left untouched.
/// Temporaries that a killed process left beside `dir` are removed by the next save there.
/// A model with LoRA adapters is written merged (W + (alpha / r) B A): a plain
/// checkpoint of the adapted model. Only models loaded from a checkpoint directory can be saved
/// (ADPO_STATUS_UNSUPPORTED otherwise); a write failure is ADPO_STATUS_IO.
#[no_mangle]
pub extern "C" fn adpo_model_save(
    model: *const adpo_model,
    dir: *const c_char,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, model, "model", |m| {
        let dir = c_str(dir, "dir")?;
        echo_path(
            dir,
            catch_torch(|| m.inner.lock().save_pretrained(Path::new(dir))),
        )
    })
}

/// Writes the model's LoRA adapters, with their current weights, as a PEFT adapter directory:
/// adapter_config.json and adapter_model.safetensors (tensors
/// `base_model.model.MODULE.lora_A.weight` / `lora_B.weight`), which
/// `peft.PeftModel.from_pretrained(base, dir)` and the load option `"adapter": dir` read.
/// Published as adpo_model_save publishes (an existing `dir` is replaced only when it holds
/// adapter_config.json or is empty). A model
/// without adapters is ADPO_STATUS_UNSUPPORTED; a write failure is ADPO_STATUS_IO.
#[no_mangle]
pub extern "C" fn adpo_model_save_adapter(
    model: *const adpo_model,
    dir: *const c_char,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, model, "model", |m| {
        let dir = c_str(dir, "dir")?;
        echo_path(
            dir,
            catch_torch(|| m.inner.lock().save_adapter(Path::new(dir))),
        )
    })
}

/// The GGUF save options of `options_json` (NULL or "" = defaults).
fn gguf_options(options_json: *const c_char) -> Result<GgufSaveOptions> {
    if options_json.is_null() {
        return Ok(GgufSaveOptions::default());
    }
    GgufSaveOptions::from_json(c_str(options_json, "options_json")?)
}

/// Writes the model, with its current weights, as a GGUF file that llama.cpp (`llama-cli -m`),
/// Ollama (`FROM`), transformers (`gguf_file=`) and adpo_model_load read: architecture llama
/// (llama and mistral models), qwen2 or qwen3, its `{arch}.*` metadata from the config, the
/// LLaMA q/k row permutation llama.cpp expects, and the tokenizer and chat template of the
/// source (a GGUF source's `tokenizer.*` metadata copied; a checkpoint directory's byte-level
/// BPE tokenizer.json converted; none: `tokenizer.ggml.model` "none"). A model with LoRA
/// adapters is written merged (W + (alpha / r) B A); the model itself is not changed.
/// `options_json` (NULL or "" = defaults; unknown keys are ADPO_STATUS_INVALID_CONFIG):
/// `{"dtype": "f32" | "f16" | "bf16" | "q8_0"}`, default "f32" (lossless); vectors (norms,
/// biases) stay f32 and q8_0 matrices whose rows are not whole 32-value blocks are written f16,
/// as llama.cpp's converter does. The file is written under a temporary name beside `path`,
/// flushed and renamed into place: `path` is the old file or the new one, whole. An existing
/// `path` is replaced only when it is a GGUF file; a directory or another file is refused with
/// ADPO_STATUS_INVALID_ARGUMENT and left untouched. Only models loaded from a checkpoint
/// directory or GGUF file can be saved (ADPO_STATUS_UNSUPPORTED otherwise, and for RoPE
/// scaling or a tokenizer that is not byte-level BPE); a write failure is ADPO_STATUS_IO.
#[no_mangle]
pub extern "C" fn adpo_model_save_gguf(
    model: *const adpo_model,
    path: *const c_char,
    options_json: *const c_char,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, model, "model", |m| {
        let path = c_str(path, "path")?;
        let options = gguf_options(options_json)?;
        echo_path(
            path,
            catch_torch(|| m.inner.lock().save_gguf(Path::new(path), &options)),
        )
    })
}

/// Writes the model's LoRA adapters, with their current weights, as a llama.cpp LoRA adapter
/// GGUF (`general.type` "adapter", `adapter.type` "lora", `adapter.lora.alpha`; tensors
/// `blk.N.attn_q.weight.lora_a` / `.lora_b`, B's rows permuted on LLaMA q/k projections as
/// llama.cpp's `convert_lora_to_gguf.py` does), which `llama-cli -m base.gguf --lora FILE` and
/// Ollama's `ADAPTER` load on the base model (adpo_model_save_gguf of the model loaded without
/// adapters, or the GGUF it was loaded from). Options, atomic write and existing paths as
/// adpo_model_save_gguf. A model without adapters is ADPO_STATUS_UNSUPPORTED; a write failure
/// is ADPO_STATUS_IO.
#[no_mangle]
pub extern "C" fn adpo_model_save_adapter_gguf(
    model: *const adpo_model,
    path: *const c_char,
    options_json: *const c_char,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, model, "model", |m| {
        let path = c_str(path, "path")?;
        let options = gguf_options(options_json)?;
        echo_path(
            path,
            catch_torch(|| m.inner.lock().save_adapter_gguf(Path::new(path), &options)),
        )
    })
}

/// Vocabulary size V of the model's logits.
#[no_mangle]
pub extern "C" fn adpo_model_vocab_size(
    model: *const adpo_model,
    out: *mut i64,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, model, "model", |m| {
        write_out(out, "out", m.inner.lock().vocab())
    })
}

/// Number of trainable parameter values of the model, all tensors together (under LoRA
/// adapters: the adapters' only).
#[no_mangle]
pub extern "C" fn adpo_model_num_params(
    model: *const adpo_model,
    out: *mut usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, model, "model", |m| {
        write_out(out, "out", m.inner.lock().num_params())
    })
}

/// Copies the model's current trainable parameters (a policy's as trained so far; under LoRA
/// the adapters) into out[0 .. n), as doubles, every tensor flattened in the module's
/// parameter order; n must equal
/// adpo_model_num_params(). For checks such as "every replica holds the same weights".
#[no_mangle]
pub extern "C" fn adpo_model_get_params(
    model: *const adpo_model,
    out: *mut f64,
    n: usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, model, "model", |m| {
        let values = catch_torch(|| m.inner.lock().flat_params())?;
        if n != values.len() {
            return Err(Error::new(
                Status::ShapeMismatch,
                format!(
                    "n = {n}, but the model has {} parameter values",
                    values.len()
                ),
            ));
        }
        if out.is_null() {
            return Err(Error::null("out"));
        }
        // SAFETY: non-NULL and valid for n writes (caller contract); n == values.len().
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), out, n) };
        Ok(())
    })
}

/// Frees a model handle. NULL is a no-op.
#[no_mangle]
pub extern "C" fn adpo_model_free(model: *mut adpo_model) {
    free(model)
}
