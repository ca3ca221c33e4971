//! The LoRA adapters of a native model: put on its projections at load (fresh, or a PEFT
//! adapter directory's to continue training), and carried into anchor copies, which share the
//! frozen base tensors by storage and copy only the adapters (one base in memory).

use super::config::Config;
use super::decoder::Decoder;
use super::lora::{adapter_kind, Adapter};
use super::{lora_targets, peft};
use crate::error::{Error, Result};
use crate::model::options::{LoadOptions, LoraOptions};
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

/// Attaches the adapters `options` ask for; returns their options (None: no adapters).
pub fn attach(
    decoder: &mut Decoder,
    c: &Config,
    options: &LoadOptions,
) -> Result<Option<LoraOptions>> {
    options.validate()?;
    let (lora, from, what) = match (&options.lora, &options.adapter) {
        (Some(lora), _) => (lora.clone(), None, "lora".to_string()),
        (None, Some(dir)) => (
            peft::read_config(dir)?,
            Some(dir.as_path()),
            dir.join(peft::CONFIG).display().to_string(),
        ),
        (None, None) => return Ok(None),
    };
    let targets = lora_targets::select(c, &lora.target_modules, &what)?;
    let kind = adapter_kind(decoder.embedding().kind());
    let device = decoder.embedding().device();
    let mut loaded = match from {
        Some(dir) => Some(read(dir, decoder, &targets, lora.r)?),
        None => None,
    };
    for (module, linear) in decoder.projections_mut() {
        if !targets.contains(&module) {
            continue;
        }
        let (out, inp) = (linear.weight.size()[0], linear.weight.size()[1]);
        linear.lora = Some(match loaded.as_mut() {
            Some(tensors) => Adapter {
                a: take(tensors, &format!("{module}.lora_A.weight"))?,
                b: take(tensors, &format!("{module}.lora_B.weight"))?,
                scaling: lora.scaling(),
            },
            None => Adapter::fresh(&lora, &module, (out, inp), kind, device)?,
        });
    }
    Ok(Some(lora))
}

/// The adapter tensors of a PEFT directory for `targets`, in the adapters' dtype.
fn read(
    dir: &Path,
    decoder: &Decoder,
    targets: &[String],
    r: i64,
) -> Result<HashMap<String, Tensor>> {
    let mut shapes = Vec::new();
    for (module, linear) in decoder.projections() {
        if targets.contains(&module) {
            let (out, inp) = (linear.weight.size()[0], linear.weight.size()[1]);
            shapes.push((format!("{module}.lora_A.weight"), vec![r, inp]));
            shapes.push((format!("{module}.lora_B.weight"), vec![out, r]));
        }
    }
    let kind = adapter_kind(decoder.embedding().kind());
    peft::read_tensors(dir, &shapes, kind, decoder.embedding().device())
}

fn take(tensors: &mut HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    tensors
        .remove(name)
        .ok_or_else(|| Error::invalid(format!("adapter tensor {name} was not read")))
}

/// A decoder with `decoder`'s base tensors (shared storage: they are frozen) and copies of
/// its adapters.
pub fn share_base(decoder: &Decoder, c: &Config) -> Result<Decoder> {
    let base: HashMap<String, Tensor> = decoder
        .params()
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let mut copy = Decoder::new(c, base, decoder.fused_ops)?;
    let sources = decoder.projections();
    for ((_, mine), (_, theirs)) in copy.projections_mut().into_iter().zip(sources) {
        mine.lora = theirs.lora.as_ref().map(Adapter::deep_copy);
    }
    Ok(copy)
}
