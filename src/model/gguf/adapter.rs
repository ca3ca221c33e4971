//! LoRA adapters as a llama.cpp LoRA adapter GGUF (what `convert_lora_to_gguf.py` writes, which
//! `llama-cli --lora` and Ollama's `ADAPTER` load): `general.type` "adapter", `adapter.type`
//! "lora", `adapter.lora.alpha`, and per adapted projection `blk.N.attn_q.weight.lora_a` (A,
//! [r, in]) and `.lora_b` (B, [out, r]). llama.cpp scales by alpha / r, r being B's column
//! count, as PEFT does. On LLaMA-family q/k projections the base weight's rows are permuted in
//! GGUF, so B's rows are permuted the same way (A, acting on the input, is not).

use super::export::{arch_of, architecture, permute, storage_type};
use super::names;
use super::save_options::GgufDtype;
use super::writer::{GgufOut, Meta, OutTensor};
use crate::error::{Error, Result};
use crate::model::native::NativeLm;

/// The adapter file of `lm`; a model without adapters is ADPO_STATUS_UNSUPPORTED.
pub fn adapter(lm: &NativeLm, dtype: GgufDtype) -> Result<GgufOut> {
    let lora = lm.lora().ok_or_else(|| {
        Error::unsupported(format!(
            "{} has no LoRA adapters to save (load it with the \"lora\" or \"adapter\" option)",
            lm.dir().display()
        ))
    })?;
    let arch = arch_of(lm)?;
    let mut out = GgufOut::default();
    architecture(lm, arch, &mut out)?;
    out.put("general.type", Meta::Str("adapter".into()));
    out.put("adapter.type", Meta::Str("lora".into()));
    out.put("adapter.lora.alpha", Meta::F32(lora.alpha as f32));
    out.put("general.file_type", Meta::U32(dtype.file_type()));
    for (name, t) in lm.adapter_params() {
        let (module, suffix) = if let Some(m) = name.strip_suffix(".lora_A.weight") {
            (m, "lora_a")
        } else if let Some(m) = name.strip_suffix(".lora_B.weight") {
            (m, "lora_b")
        } else {
            continue;
        };
        let base = format!("{module}.weight");
        let gguf = names::gguf_name(&base)
            .ok_or_else(|| Error::unsupported(format!("adapter {name} has no GGUF name")))?;
        let values = match names::permuted(arch, &base) {
            Some(which) if suffix == "lora_b" => tch::no_grad(|| permute(&t, lm.config(), which))?,
            _ => t.detach(),
        };
        let ggml_type = storage_type(&values.size(), dtype);
        out.tensors.push(OutTensor {
            name: format!("{gguf}.{suffix}"),
            values,
            ggml_type,
        });
    }
    Ok(out)
}
