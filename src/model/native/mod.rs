//! Hugging Face causal LMs built natively on libtorch (no Python at run time): a checkpoint
//! directory (config.json + model.safetensors, or model.safetensors.index.json + shards) of
//! a model_type listed in `arch.rs`. `forward` gives the final hidden states and `head`
//! the logits (so log-probs can be computed a chunk of positions at a time); a key/value cache
//! gives the incremental forward for sampling. Parameter names are the checkpoint's.
//!
//! Files: arch.rs (what distinguishes architectures) and one file per architecture;
//! config.rs (config.json, validated); layout.rs (parameter names and shapes); weights.rs
//! (safetensors reading); rope.rs, mask.rs, attention.rs, decoder.rs (the network); save.rs
//! (writing a checkpoint directory back); generation.rs (EOS ids). LoRA: lora.rs (one
//! adapter), lora_targets.rs (PEFT's target_modules matching), adapters.rs (attaching and
//! copying them), peft.rs (PEFT adapter directories).
//!
//! With adapters, the base tensors are frozen (`CausalLm::frozen`): only the adapters train.

mod adapters;
mod arch;
mod attention;
mod config;
mod decoder;
pub(crate) mod fused;
mod generation;
mod joint;
mod layout;
mod llama;
mod lora;
mod lora_targets;
mod mask;
mod mistral;
mod peft;
mod qwen2;
mod qwen3;
mod rope;
mod save;
mod weights;

use super::options::{LoadOptions, LoraOptions};
use super::{CausalLm, Head, KvCache, SharedPrefix};
use crate::error::{Error, Result};
pub use config::{parse_dtype, Config};
use decoder::Decoder;
pub(crate) use rope::RopeScaling;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Kind, Tensor};

/// Every parameter of a model with `config`, by checkpoint name, with its shape (the tied
/// output head absent).
pub(crate) fn parameter_shapes(config: &Config) -> Vec<(String, Vec<i64>)> {
    layout::parameters(config)
}

/// A causal LM of one of the architectures of `arch.rs`, loaded from a checkpoint directory.
pub struct NativeLm {
    dir: PathBuf,
    config: Config,
    /// config.json as loaded (written back, dtype updated, by `save_pretrained`).
    config_json: String,
    eos_ids: Vec<i64>,
    decoder: Decoder,
    device: Device,
    /// The LoRA adapters' options (r, alpha, targets), when the model has adapters.
    lora: Option<LoraOptions>,
    /// Off while the base model runs (the fixed anchor of a LoRA policy).
    adapters_on: AtomicBool,
}

impl NativeLm {
    /// Loads `dir` as `kind` (None: config.json's dtype, else the checkpoint's stored dtype) on
    /// `device`. A config adpo cannot honour is an ADPO_STATUS_MODEL error; weights that do not
    /// match it (missing, unexpected, misshapen tensors; missing or truncated shards) are
    /// ADPO_STATUS_CHECKPOINT errors.
    pub fn load(dir: &Path, kind: Option<Kind>, device: Device) -> Result<NativeLm> {
        let (config, config_json) = Config::read(dir)?;
        layout::check_layers(&config, dir, weights::count(dir)?)?;
        let shapes = layout::parameters(&config);
        let tolerated = |name: &str| layout::tolerated(&config, name);
        let expected = weights::Expected {
            shapes: &shapes,
            tolerated: &tolerated,
            source: "this model's config.json",
        };
        let (tensors, _) =
            tch::no_grad(|| weights::read(dir, &expected, kind.or(config.dtype), device))?;
        let decoder = Decoder::new(&config, tensors, true)?;
        Ok(NativeLm {
            dir: dir.to_path_buf(),
            eos_ids: generation::eos_ids(dir, &config_json)?,
            config,
            config_json,
            decoder,
            device,
            lora: None,
            adapters_on: AtomicBool::new(true),
        })
    }

    /// A model from tensors read elsewhere (a GGUF file, model/gguf/), named and shaped as
    /// [`parameter_shapes`] says, then the LoRA adapters the options ask for. `source` is the
    /// file the model came from (for messages, and as the adapters' base).
    pub(crate) fn from_tensors(
        source: &Path,
        config: Config,
        config_json: String,
        tensors: HashMap<String, Tensor>,
        eos_ids: Vec<i64>,
        options: &LoadOptions,
    ) -> Result<NativeLm> {
        let mut lm = NativeLm {
            dir: source.to_path_buf(),
            eos_ids,
            decoder: Decoder::new(&config, tensors, options.fused_ops)?,
            config,
            config_json,
            device: options.device,
            lora: None,
            adapters_on: AtomicBool::new(true),
        };
        lm.lora = adapters::attach(&mut lm.decoder, &lm.config, options)?;
        Ok(lm)
    }

    /// [`NativeLm::load`] with the options' dtype and device, then the LoRA adapters they ask
    /// for (fresh, or a PEFT adapter directory's).
    pub fn open(dir: &Path, options: &LoadOptions) -> Result<NativeLm> {
        let mut lm = NativeLm::load(dir, options.dtype.kind(), options.device)?;
        lm.decoder.fused_ops = options.fused_ops;
        lm.lora = adapters::attach(&mut lm.decoder, &lm.config, options)?;
        Ok(lm)
    }

    /// The LoRA options of the model's adapters (None: no adapters).
    pub fn lora(&self) -> Option<&LoraOptions> {
        self.lora.as_ref()
    }

    fn adapters_on(&self) -> bool {
        self.adapters_on.load(Ordering::Relaxed)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The EOS ids the checkpoint generates with (generation_config.json, else config.json).
    pub fn eos_ids(&self) -> &[i64] {
        &self.eos_ids
    }

    /// max_position_embeddings of config.json.
    pub fn max_positions(&self) -> i64 {
        self.config.max_position_embeddings
    }

    /// The checkpoint directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every parameter, adapted projections merged (W + s B A); the model is unchanged.
    pub(crate) fn merged_params(&self) -> Result<Vec<(String, Tensor)>> {
        self.decoder.merged_params()
    }

    /// The adapters' A and B (`MODULE.lora_A.weight`, ...), sharing storage.
    pub(crate) fn adapter_params(&self) -> Vec<(String, Tensor)> {
        self.decoder.adapter_params()
    }

    fn check_inputs(&self, ids: &Tensor, mask: &Tensor, past: i64) -> Result<()> {
        let (is, ms) = (ids.size(), mask.size());
        if is.len() != 2 || ms.len() != 2 || is[0] != ms[0] || ms[1] != past + is[1] {
            return Err(Error::shape(format!(
                "{}: input_ids {is:?} and attention_mask {ms:?} do not agree (the mask must be \
                 [B, {past} + T] for ids [B, T] after {past} cached positions)",
                self.describe()
            )));
        }
        Ok(())
    }
}

impl CausalLm for NativeLm {
    fn describe(&self) -> String {
        format!("{} ({})", self.dir.display(), self.config.arch.model_type)
    }

    fn vocab(&self) -> i64 {
        self.config.vocab_size
    }

    fn device(&self) -> Device {
        self.device
    }

    /// The checkpoint's parameters, then the adapters' (`MODULE.lora_A.weight`, ...).
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let params = self.decoder.params().iter();
        let mut all: Vec<(String, Tensor)> = params
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        all.extend(self.decoder.adapter_params());
        all
    }

    /// Under adapters, everything but the adapters.
    fn frozen(&self, name: &str) -> bool {
        self.lora.is_some()
            && !(name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight"))
    }

    fn has_adapters(&self) -> bool {
        self.lora.is_some()
    }

    fn set_adapters_enabled(&self, enabled: bool) {
        self.adapters_on.store(enabled, Ordering::Relaxed);
    }

    // No set_train_mode: these architectures have no dropout (a config with attention_dropout
    // > 0 is refused at load) and no other train-time behaviour.

    fn forward(&self, ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.check_inputs(ids, attention_mask, 0)?;
        let (ids, mask) = (
            ids.to_device(self.device),
            attention_mask.to_device(self.device),
        );
        let adapters = self.adapters_on();
        self.decoder.hidden(&ids, &mask, None, adapters)
    }

    fn backward_checkpointed(
        &self,
        (ids, attention_mask): (&Tensor, &Tensor),
        shared: Option<&SharedPrefix>,
        head: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        self.check_inputs(ids, attention_mask, 0)?;
        let (ids, mask) = (
            ids.to_device(self.device),
            attention_mask.to_device(self.device),
        );
        let adapters = self.adapters_on();
        self.decoder
            .backward_checkpointed((&ids, &mask), shared, adapters, head)
    }

    /// The prefixes through the layers once, their keys and values (in a cache with room for
    /// the suffixes) copied to the rows that share them, then the suffixes attending to them;
    /// the gather puts every row's hidden states back in place. Differentiable throughout.
    fn forward_shared(&self, ids: &Tensor, mask: &Tensor, plan: &SharedPrefix) -> Result<Tensor> {
        self.check_inputs(ids, mask, 0)?;
        let (g, p) = (plan.prefix_ids.size()[0], plan.prefix_ids.size()[1]);
        let (n, s) = (plan.suffix_ids.size()[0], plan.suffix_ids.size()[1]);
        let adapters = self.adapters_on();
        let mut cache = self.new_cache(g, p + s);
        let prefix = self.decoder.hidden(
            &plan.prefix_ids,
            &plan.prefix_mask,
            Some(&mut cache),
            adapters,
        )?;
        for t in cache.keys.iter_mut().chain(cache.values.iter_mut()) {
            *t = t.f_index_select(0, &plan.prefix_of_row)?;
        }
        let suffix =
            self.decoder
                .hidden(&plan.suffix_ids, &plan.mask, Some(&mut cache), adapters)?;
        let h = suffix.size()[2];
        let all = Tensor::f_cat(&[prefix.reshape([g * p, h]), suffix.reshape([n * s, h])], 0)?;
        Ok(all.f_index_select(0, &plan.gather)?.f_view([n, -1, h])?)
    }

    fn head(&self) -> Head {
        Head::Linear {
            weight: self.decoder.head_weight(),
            fused: self.decoder.fused_ops,
        }
    }

    fn checkpoints_layers(&self) -> bool {
        true
    }

    /// A copy of every parameter tensor in memory (tying kept), the same config. Under
    /// adapters, only the adapters are copied: the frozen base is shared by storage.
    fn duplicate(&self) -> Result<Box<dyn CausalLm>> {
        let decoder = match self.lora {
            Some(_) => adapters::share_base(&self.decoder, &self.config)?,
            None => {
                let tensors: HashMap<String, Tensor> = tch::no_grad(|| {
                    let params = self.decoder.params().iter();
                    params
                        .map(|(n, t)| (n.clone(), t.detach().copy()))
                        .collect()
                });
                Decoder::new(&self.config, tensors, self.decoder.fused_ops)?
            }
        };
        Ok(Box::new(NativeLm {
            dir: self.dir.clone(),
            config: self.config.clone(),
            config_json: self.config_json.clone(),
            eos_ids: self.eos_ids.clone(),
            decoder,
            device: self.device,
            lora: self.lora.clone(),
            adapters_on: AtomicBool::new(true),
        }))
    }

    /// The merged parameters cast to `kind`, in a model of the same config without adapters.
    fn rollout_copy(&self, kind: Kind) -> Result<Box<dyn CausalLm>> {
        let tensors: HashMap<String, Tensor> = tch::no_grad(|| {
            let merged = self.decoder.merged_params()?;
            Ok::<_, crate::error::Error>(
                merged
                    .into_iter()
                    .map(|(n, t)| (n, t.detach().to_kind(kind)))
                    .collect(),
            )
        })?;
        let decoder = Decoder::new(&self.config, tensors, self.decoder.fused_ops)?;
        Ok(Box::new(NativeLm {
            dir: self.dir.clone(),
            config: self.config.clone(),
            config_json: self.config_json.clone(),
            eos_ids: self.eos_ids.clone(),
            decoder,
            device: self.device,
            lora: None,
            adapters_on: AtomicBool::new(true),
        }))
    }

    fn merged_parameters(&self) -> Result<Vec<(String, Tensor)>> {
        self.decoder.merged_params()
    }

    /// Under adapters, the merged model (W + scaling B A on every adapted projection).
    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        if let RopeScaling::Factors(_) = self.config.rope.scaling {
            return Err(Error::unsupported(format!(
                "{}: its RoPE frequency factors (the GGUF file's rope_freqs) have no config.json                  form; save it as GGUF (adpo_model_save_gguf)",
                self.describe()
            )));
        }
        let kind = self.decoder.embedding().kind();
        let config = save::config_json(&self.config_json, kind)?;
        match self.lora {
            Some(_) => save::save(dir, &config, &self.decoder.merged_params()?, &self.dir),
            None => save::save(dir, &config, self.decoder.params(), &self.dir),
        }
    }

    fn save_adapter(&self, dir: &Path) -> Result<()> {
        match &self.lora {
            Some(lora) => peft::write(dir, lora, &self.dir, &self.decoder.adapter_params()),
            None => Err(Error::unsupported(format!(
                "{} has no LoRA adapters to save (load it with the \"lora\" or \"adapter\" \
                 option)",
                self.describe()
            ))),
        }
    }

    fn save_gguf(&self, path: &Path, options: &crate::model::GgufSaveOptions) -> Result<()> {
        crate::model::gguf::save(self, path, options)
    }

    fn save_adapter_gguf(
        &self,
        path: &Path,
        options: &crate::model::GgufSaveOptions,
    ) -> Result<()> {
        crate::model::gguf::save_adapter(self, path, options)
    }

    /// Per layer, keys and values [rows, num_key_value_heads, capacity, head_dim] (the KV
    /// heads, not the expanded query heads) in the weights' dtype.
    fn new_cache(&self, rows: i64, capacity: i64) -> KvCache {
        let c = &self.config;
        let shape = [rows, c.num_kv_heads, capacity, c.head_dim];
        let options = (self.decoder.embedding().kind(), self.device);
        let buffers = || {
            (0..c.num_layers)
                .map(|_| Tensor::zeros(shape, options))
                .collect()
        };
        KvCache {
            keys: buffers(),
            values: buffers(),
            len: 0,
            capacity,
        }
    }

    fn forward_cached(
        &self,
        ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        self.check_inputs(ids, attention_mask, cache.len)?;
        let (rows, t) = (ids.size()[0], ids.size()[1]);
        let layers = self.config.num_layers as usize;
        let cache_rows = cache.keys.first().map(|k| k.size()[0]);
        if cache.keys.len() != layers || cache.values.len() != layers || cache_rows != Some(rows) {
            return Err(Error::shape(format!(
                "{}: the cache was not made by this model for {rows} rows",
                self.describe()
            )));
        }
        if cache.len + t > cache.capacity {
            return Err(Error::invalid(format!(
                "{}: {} cached + {t} new positions exceed the cache capacity {}",
                self.describe(),
                cache.len,
                cache.capacity
            )));
        }
        let (ids, mask) = (
            ids.to_device(self.device),
            attention_mask.to_device(self.device),
        );
        let adapters = self.adapters_on();
        tch::no_grad(|| self.decoder.hidden(&ids, &mask, Some(cache), adapters))
    }

    fn eos_ids(&self) -> Vec<i64> {
        self.eos_ids.clone()
    }

    fn max_positions(&self) -> Option<i64> {
        Some(self.config.max_position_embeddings)
    }
}
