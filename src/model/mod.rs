//! Causal LMs behind one trait. Everything above the model (log-probs, anchors, sampling, the
//! trainer) talks to [`Model`], which holds a [`CausalLm`] implementation and does what is the
//! same for every kind of model: the parameter list (each tensor once, even when tied), train
//! and eval mode, gradients on or off, frozen copies for anchors, EMA and hard copies.
//!
//! Every model gives final hidden states, an output head (`head.rs`), so that log-probs are
//! computed a chunk of positions at a time, and a key/value-cached forward for sampling.
//! Implementations: `native/` (Hugging Face checkpoint directories of the architectures in
//! `native/arch.rs`, with optional LoRA adapters; `gguf/` reads GGUF files into the same native
//! models) and, in a build with the `torchscript` feature, `torchscript.rs` (a legacy
//! TorchScript module, whose logits stand for its hidden states). `format.rs` tells the formats
//! apart; `options.rs`: device, dtype and adapters at load; `shared_prefix.rs`: running each
//! group's shared prompt once.
//!
//! Trainable and frozen: [`Model::params`] lists what trains (every parameter, or only the
//! LoRA adapters of a model that has them); the optimizer, clipping, checkpoints, anchor
//! copies and the data-parallel reduction see only that list. The frozen rest (the base under
//! adapters) never requires grad.

mod device;
mod format;
pub(crate) mod gguf;
mod head;
mod masters;
pub mod native;
mod options;
pub mod shared_prefix;
#[cfg(feature = "torchscript")]
mod torchscript;
mod trainable;

use crate::error::{Error, Result};
pub use device::parse_device;
pub use gguf::{GgufDtype, GgufSaveOptions};
pub use head::Head;
use masters::Masters;
pub use native::NativeLm;
#[cfg(test)]
pub(crate) use options::LoadConfig;
pub use options::{Dtype, LoadOptions, LoraInit, LoraOptions};
use parking_lot::{Mutex, MutexGuard};
pub use shared_prefix::SharedPrefix;
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};
#[cfg(feature = "torchscript")]
pub use torchscript::TorchScriptLm;

/// A model shared between its C handle and the trainers that use it.
pub type SharedModel = Arc<Mutex<Model>>;

/// Locks a policy and its reference (if any) in one global order, by address: two trainers
/// whose models are each other's reference (policy A with reference B, policy B with
/// reference A) stepping in two threads would otherwise each hold one lock and wait for the
/// other forever.
pub fn lock_in_order<'a>(
    policy: &'a SharedModel,
    reference: Option<&'a SharedModel>,
) -> (MutexGuard<'a, Model>, Option<MutexGuard<'a, Model>>) {
    match reference {
        Some(r) if (Arc::as_ptr(r) as usize) < (Arc::as_ptr(policy) as usize) => {
            let r = r.lock();
            (policy.lock(), Some(r))
        }
        Some(r) => {
            let p = policy.lock();
            (p, Some(r.lock()))
        }
        None => (policy.lock(), None),
    }
}

/// Per-layer key/value buffers of an incremental forward, preallocated for `capacity`
/// positions. `len` positions are filled; the model that made it knows the layout, except
/// that dimension 0 of every buffer is the row (so rows can be selected or dropped).
pub struct KvCache {
    pub keys: Vec<Tensor>,
    pub values: Vec<Tensor>,
    pub len: i64,
    pub capacity: i64,
}

/// One kind of causal LM: `forward(input_ids int64 [B, T], attention_mask int64 [B, T])`.
pub trait CausalLm: Send {
    /// What the model is, for messages (its file or directory).
    fn describe(&self) -> String;
    fn vocab(&self) -> i64;
    fn device(&self) -> Device;
    /// Every parameter under its checkpoint name, sharing storage with the model. A tensor
    /// that appears under several names (a tied output head) may be listed more than once:
    /// [`Model`] keeps the first name.
    fn named_parameters(&self) -> Vec<(String, Tensor)>;
    /// Whether the parameter `name` of `named_parameters` is frozen: never trained, and absent
    /// from the optimizer, checkpoints and reductions (the base model under LoRA adapters).
    fn frozen(&self, name: &str) -> bool {
        let _ = name;
        false
    }
    /// Whether LoRA adapters sit on the model.
    fn has_adapters(&self) -> bool {
        false
    }
    /// Switches the adapters off (the forward then computes the base model) or back on. A
    /// shared borrow: the trainer's anchor pass holds the policy as `&Model`.
    fn set_adapters_enabled(&self, enabled: bool) {
        let _ = enabled;
    }
    /// Writes the adapters as a PEFT adapter directory (adapter_config.json +
    /// adapter_model.safetensors).
    fn save_adapter(&self, dir: &Path) -> Result<()> {
        let _ = dir;
        Err(Error::unsupported(format!(
            "{} has no LoRA adapters to save (only checkpoint directories loaded with the \
             \"lora\" or \"adapter\" option have them)",
            self.describe()
        )))
    }
    /// Train mode (dropout and the like active) or eval mode. The native architectures have
    /// no train-time behaviour.
    fn set_train_mode(&mut self, train: bool) {
        let _ = train;
    }
    /// Final hidden states [B, T, H] for ids [B, T] (in range: [`Model`] checks).
    fn forward(&self, ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor>;
    /// [`CausalLm::forward`] of the same rows, running each shared prefix of `plan` once (see
    /// shared_prefix.rs). A model that cannot share prefixes runs the rows whole.
    fn forward_shared(
        &self,
        ids: &Tensor,
        attention_mask: &Tensor,
        plan: &SharedPrefix,
    ) -> Result<Tensor> {
        let _ = plan;
        self.forward(ids, attention_mask)
    }
    /// What turns hidden states into logits (the chunked log-probs compute its gradient by
    /// hand).
    fn head(&self) -> Head;
    /// Whether [`CausalLm::backward_checkpointed`] can run.
    fn checkpoints_layers(&self) -> bool {
        false
    }
    /// Activation checkpointing: back-propagates into
    /// the parameters the loss whose gradient with respect to the final hidden states is
    /// `head(hidden)`, holding one layer's activations at a time.
    fn backward_checkpointed(
        &self,
        rows: (&Tensor, &Tensor),
        shared: Option<&SharedPrefix>,
        head: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        let _ = (rows, shared, head);
        Err(Error::unsupported(format!(
            "{} cannot recompute its activations a layer at a time (activation_checkpointing \
             needs a checkpoint directory)",
            self.describe()
        )))
    }
    /// The EOS ids the model was trained with (a checkpoint's generation_config.json), used
    /// when sampling options name none.
    fn eos_ids(&self) -> Vec<i64> {
        Vec::new()
    }
    /// The most positions a sequence may have (max_position_embeddings), if the model says.
    fn max_positions(&self) -> Option<i64> {
        None
    }
    /// An independent instance with its own copy of the weights (for anchors), made from
    /// memory: the file the model came from is not read again.
    fn duplicate(&self) -> Result<Box<dyn CausalLm>>;
    /// A copy of the model for sampling in `kind` (adapters merged into their weights, none
    /// kept), which `refresh_rollout_copy` brings up to date; UNSUPPORTED where the model cannot
    /// be rebuilt from its tensors (TorchScript).
    fn rollout_copy(&self, kind: Kind) -> Result<Box<dyn CausalLm>> {
        let _ = kind;
        Err(Error::unsupported(format!(
            "{}: a copy in another precision for sampling (rollout_dtype) needs a checkpoint \
             directory or GGUF model",
            self.describe()
        )))
    }
    /// Every parameter with adapters merged (W + s B A), as `rollout_copy` names them.
    fn merged_parameters(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self.named_parameters())
    }
    /// Writes the model, with its current weights, as a Hugging Face checkpoint directory
    /// (config.json + model.safetensors, plus the source's tokenizer and generation files).
    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        let _ = dir;
        Err(Error::unsupported(format!(
            "{} cannot be saved as a Hugging Face checkpoint directory (only models loaded from \
             one can)",
            self.describe()
        )))
    }
    /// Writes the model (merged when it has adapters) as a GGUF file (model/gguf/export.rs).
    fn save_gguf(&self, path: &Path, options: &GgufSaveOptions) -> Result<()> {
        let _ = (path, options);
        Err(Error::unsupported(format!(
            "{} cannot be saved as GGUF (only checkpoint directories and GGUF files can)",
            self.describe()
        )))
    }
    /// Writes the LoRA adapters as a llama.cpp LoRA adapter GGUF (model/gguf/adapter.rs).
    fn save_adapter_gguf(&self, path: &Path, options: &GgufSaveOptions) -> Result<()> {
        let _ = (path, options);
        Err(Error::unsupported(format!(
            "{} has no LoRA adapters to save (only checkpoint directories and GGUF files loaded \
             with the \"lora\" or \"adapter\" option have them)",
            self.describe()
        )))
    }
    /// A key/value cache for `rows` sequences of up to `capacity` positions.
    fn new_cache(&self, rows: i64, capacity: i64) -> KvCache;
    /// Final hidden states [B, t, H] of `ids` [B, t], the next t positions after the
    /// `cache.len` cached ones; `attention_mask` [B, cache.len + t] covers both. Appends to
    /// the cache. Runs without gradients (for sampling).
    fn forward_cached(
        &self,
        ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor>;
}

/// A loaded causal LM: the policy (trained in place) or a frozen reference or anchor copy.
pub struct Model {
    lm: Box<dyn CausalLm>,
    /// Each distinct trainable parameter tensor once, under its first name (shared storage
    /// with `lm`).
    params: Vec<(String, Tensor)>,
    /// The frozen ones (the base under LoRA adapters), likewise.
    frozen: Vec<(String, Tensor)>,
    /// The dtype the network computes in (its first parameter's: the embedding).
    kind: Kind,
    /// Train mode with gradients (the policy), or eval mode without (everything else).
    training: bool,
    /// Float32 masters of the 16-bit trainable parameters (bf16-mixed training), if held.
    masters: Option<Masters>,
}

/// The parameters with tied tensors (same storage, shape and strides) listed once: an
/// optimizer that saw both names would step the shared tensor twice.
fn distinct(params: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let mut seen: Vec<(usize, Vec<i64>, Vec<i64>)> = Vec::new();
    params
        .into_iter()
        .filter(|(_, t)| {
            let key = (t.data_ptr() as usize, t.size(), t.stride());
            let new = !seen.contains(&key);
            if new {
                seen.push(key);
            }
            new
        })
        .collect()
}

impl Model {
    /// Loads a Hugging Face checkpoint directory (native/, dtype "auto") or a TorchScript file
    /// (see `torchscript.rs`); other formats are named as such.
    pub fn load(path: &Path, device: Device) -> Result<Model> {
        Model::load_with(path, &LoadOptions::on(device))
    }

    /// [`Model::load`] with a dtype (checkpoint directories only) and a device.
    pub fn load_with(path: &Path, options: &LoadOptions) -> Result<Model> {
        let lm = format::open(path, options)?;
        Model::from_lm(lm)
    }

    /// Wraps an implementation: eval mode, no gradients.
    pub fn from_lm(lm: Box<dyn CausalLm>) -> Result<Model> {
        let Some(kind) = lm.named_parameters().first().map(|(_, t)| t.kind()) else {
            return Err(Error::model(format!("{} has no parameters", lm.describe())));
        };
        let mut model = Model {
            lm,
            params: Vec::new(),
            frozen: Vec::new(),
            kind,
            training: false,
            masters: None,
        };
        model.choose_trainable(None)?;
        Ok(model)
    }

    /// Logits [B, T, V] for ids [B, T] (int64, on the model's device).
    pub fn logits(&self, ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.head().logits(&self.forward(ids, attention_mask)?)
    }

    /// Final hidden states (then [`Model::head`] gives logits a slice at a time).
    pub fn forward(&self, ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.forward_rows(ids, attention_mask, None)
    }

    /// [`Model::forward`], each prefix that `shared` names run once.
    pub fn forward_rows(
        &self,
        ids: &Tensor,
        attention_mask: &Tensor,
        shared: Option<&SharedPrefix>,
    ) -> Result<Tensor> {
        self.check_ids(ids)?;
        match shared {
            Some(plan) => self.lm.forward_shared(ids, attention_mask, plan),
            None => self.lm.forward(ids, attention_mask),
        }
    }

    /// The output head (see [`CausalLm::head`]).
    pub fn head(&self) -> Head {
        self.lm.head()
    }

    /// Back-propagates into the parameters the loss whose gradient with respect to the final
    /// hidden states is `head(hidden)` (given detached hidden states, it may compute anything
    /// from them first), each prefix that `shared` names run once: through the forward's
    /// graph, or, `checkpointed`, by recomputing the layers one at a time (see
    /// [`CausalLm::backward_checkpointed`]).
    pub fn backward_through(
        &self,
        (ids, attention_mask): (&Tensor, &Tensor),
        shared: Option<&SharedPrefix>,
        checkpointed: bool,
        head: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        if checkpointed {
            self.check_ids(ids)?;
            return self
                .lm
                .backward_checkpointed((ids, attention_mask), shared, head);
        }
        let hidden = self.forward_rows(ids, attention_mask, shared)?;
        let grad = head(&hidden.detach())?;
        if hidden.requires_grad() {
            (hidden * grad).sum(Kind::Double).backward();
        }
        Ok(())
    }

    /// Writes a Hugging Face checkpoint directory (models loaded from one; see native/save.rs);
    /// a model with LoRA adapters is written merged.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        self.lm.save_pretrained(dir)
    }

    /// Writes the LoRA adapters as a PEFT adapter directory.
    pub fn save_adapter(&self, dir: &Path) -> Result<()> {
        self.lm.save_adapter(dir)
    }

    /// Writes a GGUF file llama.cpp loads (see model/gguf/export.rs); a model with LoRA
    /// adapters is written merged.
    pub fn save_gguf(&self, path: &Path, options: &GgufSaveOptions) -> Result<()> {
        self.lm.save_gguf(path, options)
    }

    /// Writes the LoRA adapters as a llama.cpp LoRA adapter GGUF.
    pub fn save_adapter_gguf(&self, path: &Path, options: &GgufSaveOptions) -> Result<()> {
        self.lm.save_adapter_gguf(path, options)
    }

    pub fn has_adapters(&self) -> bool {
        self.lm.has_adapters()
    }

    /// Runs `f` on the base model, the LoRA adapters off for its duration (on again however it
    /// ends): the fixed anchor of a LoRA policy, with no second copy of the weights.
    pub fn with_adapters_off<T>(&self, f: impl FnOnce(&Model) -> Result<T>) -> Result<T> {
        if !self.lm.has_adapters() {
            return Err(Error::invalid(format!(
                "{} has no LoRA adapters to switch off",
                self.describe()
            )));
        }
        struct BackOn<'a>(&'a dyn CausalLm);
        impl Drop for BackOn<'_> {
            fn drop(&mut self) {
                self.0.set_adapters_enabled(true);
            }
        }
        self.lm.set_adapters_enabled(false);
        let _back_on = BackOn(self.lm.as_ref());
        f(self)
    }

    /// An id outside the vocabulary would surface as an opaque libtorch index error.
    pub fn check_ids(&self, ids: &Tensor) -> Result<()> {
        if ids.numel() == 0 {
            return Ok(());
        }
        let (low, top) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
        let bad = if top >= self.vocab() { top } else { low };
        if low < 0 || top >= self.vocab() {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary [0, {}) of {}",
                self.vocab(),
                self.lm.describe()
            )));
        }
        Ok(())
    }

    pub fn lm(&self) -> &dyn CausalLm {
        self.lm.as_ref()
    }
    pub fn device(&self) -> Device {
        self.lm.device()
    }
    pub fn vocab(&self) -> i64 {
        self.lm.vocab()
    }
    pub fn describe(&self) -> String {
        self.lm.describe()
    }
    /// The trainable parameters (under LoRA: the adapters).
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// The frozen parameters (under LoRA: the base model; otherwise none).
    pub fn frozen_params(&self) -> &[(String, Tensor)] {
        &self.frozen
    }

    /// The values that train, under the parameters' names: the parameters themselves, or
    /// under mixed precision their float32 masters. The optimizer, gradient reduction and
    /// clipping, anchor copies and checkpoints work on these.
    pub fn values(&self) -> &[(String, Tensor)] {
        match &self.masters {
            Some(m) => m.values(),
            None => &self.params,
        }
    }

    /// Whether float32 masters are held (bf16-mixed training).
    pub fn holds_masters(&self) -> bool {
        self.masters.is_some()
    }

    /// From now on, train through float32 masters of the 16-bit trainable parameters (see
    /// masters.rs). The model must compute in bfloat16.
    pub fn hold_masters(&mut self) -> Result<()> {
        self.check_bf16()?;
        if self.masters.is_none() {
            self.masters = Some(Masters::new(&self.params, true));
        }
        Ok(())
    }

    /// Whether masters can be held (before anything is changed for them): the model computes
    /// in bfloat16.
    pub fn check_bf16(&self) -> Result<()> {
        if self.kind != Kind::BFloat16 {
            return Err(Error::invalid(format!(
                "precision bf16-mixed trains a model that computes in bfloat16, and {} is {:?}: \
                 load it with {{\"dtype\": \"bfloat16\"}} (adpo_model_load_options); float32 \
                 master weights are then kept for it",
                self.describe(),
                self.kind
            )));
        }
        Ok(())
    }

    /// Mixed precision, after the backward: each master's gradient <- its parameter's.
    pub fn load_master_grads(&self) {
        if let Some(m) = &self.masters {
            m.load_grads(&self.params);
        }
    }

    /// Mixed precision, after an update or a load: each parameter <- its rounded master.
    pub fn store_masters(&self) {
        if let Some(m) = &self.masters {
            m.store(&self.params);
        }
    }

    /// Chooses what trains: every parameter the model does not freeze itself (the base under
    /// LoRA adapters), or of those only what `patterns` select (trainer key `trainable`, see
    /// trainable.rs); the rest is frozen: no gradient, no optimizer state, not in checkpoints.
    /// Drops mixed-precision masters (a trainer makes them after this). Changes nothing on error.
    pub fn choose_trainable(&mut self, patterns: Option<&[String]>) -> Result<()> {
        let all = distinct(self.lm.named_parameters());
        let (frozen, params): (Vec<_>, Vec<_>) =
            all.into_iter().partition(|(n, _)| self.lm.frozen(n));
        let trains = match patterns {
            Some(p) => {
                let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
                trainable::select(&names, p, &self.describe())?
            }
            None => vec![true; params.len()],
        };
        self.masters = None;
        self.params = params;
        self.frozen = frozen
            .into_iter()
            .map(|(n, t)| (n, t.set_requires_grad(false)))
            .collect();
        self.keep_trainable(|i, _| trains[i]);
        self.set_trainable(self.training);
        Ok(())
    }

    /// Moves the trainable parameters for which `keep(index, name)` is false to the frozen.
    fn keep_trainable(&mut self, keep: impl Fn(usize, &str) -> bool) {
        let all = std::mem::take(&mut self.params);
        for (i, (name, t)) in all.into_iter().enumerate() {
            if keep(i, &name) {
                self.params.push((name, t));
            } else {
                self.frozen.push((name, t.set_requires_grad(false)));
            }
        }
    }

    /// The dtype the network computes in (of its first parameter, the embedding; LoRA adapters
    /// on a 16-bit base are float32).
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Number of trainable parameter values, all tensors together (a tied tensor once).
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|(_, p)| p.numel()).sum()
    }

    /// Every trainable value flattened (float32 masters under mixed precision), in the model's
    /// parameter order, as f64 on the host.
    pub fn flat_params(&self) -> Result<Vec<f64>> {
        let flat: Vec<Tensor> = self
            .values()
            .iter()
            .map(|(_, p)| p.detach().reshape([-1]).to_kind(Kind::Double))
            .collect();
        Ok(Vec::<f64>::try_from(
            Tensor::cat(&flat, 0).to_device(Device::Cpu),
        )?)
    }

    /// Train mode with gradients on every trainable parameter (the policy), or eval mode (the
    /// reference).
    pub fn set_trainable(&mut self, trainable: bool) {
        self.training = trainable;
        self.lm.set_train_mode(trainable);
        for (_, p) in &mut self.params {
            *p = p.set_requires_grad(trainable);
        }
    }

    /// Whether the model is in train mode (dropout and the like active).
    pub fn training(&self) -> bool {
        self.training
    }

    /// Runs `f` with the model in eval mode (no dropout), then restores its mode: sampling
    /// and measuring log-probs use the policy as it will be deployed.
    pub fn in_eval_mode<T>(&mut self, f: impl FnOnce(&Model) -> T) -> T {
        let was_training = self.training;
        if was_training {
            self.lm.set_train_mode(false);
        }
        let out = f(self);
        if was_training {
            self.lm.set_train_mode(true);
        }
        out
    }

    /// A frozen instance holding a copy of this model's current weights (the EMA and
    /// KL-triggered anchors), made from memory. Under LoRA only the adapters are copied (the
    /// frozen base is shared): the anchor moves with the adapters alone.
    /// With the policy's trainable set (key `trainable`) and, under mixed precision, float32
    /// masters of its own: an EMA in bfloat16 would round most of its small steps away.
    pub fn frozen_copy(&self) -> Result<Model> {
        let mut copy = Model::from_lm(self.lm.duplicate()?)?;
        let trains: std::collections::HashSet<&str> =
            self.params.iter().map(|(n, _)| n.as_str()).collect();
        copy.keep_trainable(|_, name| trains.contains(name));
        if self.masters.is_some() {
            copy.masters = Some(Masters::new(&copy.params, false));
        }
        copy.copy_weights_from(self);
        Ok(copy)
    }

    /// A copy of this model in `kind` for sampling, adapters merged (no gradients, eval mode).
    pub fn rollout_copy(&self, kind: Kind) -> Result<Model> {
        Model::from_lm(self.lm.rollout_copy(kind)?)
    }

    /// Brings a `rollout_copy` of this model up to date: every parameter, adapters merged,
    /// cast into the copy's dtype.
    pub fn refresh_rollout_copy(&self, copy: &mut Model) -> Result<()> {
        let merged: std::collections::HashMap<String, Tensor> =
            tch::no_grad(|| self.lm.merged_parameters())?
                .into_iter()
                .collect();
        tch::no_grad(|| {
            for (name, mut mine) in copy.lm.named_parameters() {
                let theirs = merged.get(&name).ok_or_else(|| {
                    Error::model(format!("{}: no parameter {name} to copy", self.describe()))
                })?;
                mine.copy_(theirs);
            }
            Ok(())
        })
    }

    /// theta <- other's theta (the trainable values).
    pub fn copy_weights_from(&mut self, other: &Model) {
        tch::no_grad(|| {
            for ((_, mine), (_, theirs)) in self.values().iter().zip(other.values()) {
                mine.shallow_clone().copy_(theirs);
            }
        });
        self.store_masters();
    }

    /// theta <- alpha theta + (1 - alpha) other's theta (the trainable values).
    pub fn ema_towards(&mut self, other: &Model, alpha: f64) {
        tch::no_grad(|| {
            for ((_, mine), (_, theirs)) in self.values().iter().zip(other.values()) {
                let mut mine = mine.shallow_clone();
                let _ = mine.g_mul_scalar_(alpha);
                let _ = mine.g_add_(&(theirs * (1.0 - alpha)));
            }
        });
        self.store_masters();
    }
}
