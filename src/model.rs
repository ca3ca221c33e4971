//! TorchScript causal LMs: `forward(input_ids int64 [B, T], attention_mask int64 [B, T]) ->
//! logits [B, T, V]`, or `forward(input_ids)`. Loaded once per handle; used as the trainable
//! policy (its own parameters, in place) or as a frozen reference (eval mode, no grad).

use crate::error::{torch_message, Error, Result, Status};
use std::path::{Path, PathBuf};
use tch::{CModule, Device, Kind, Tensor};

pub struct Model {
    module: CModule,
    path: PathBuf,
    device: Device,
    takes_mask: bool,
    vocab: i64,
    /// The module's parameters under its own names (shared storage with the module).
    params: Vec<(String, Tensor)>,
    /// Train mode (the policy) or eval mode (loaded models, references, anchor copies).
    training: bool,
}

fn model_error(message: String) -> Error {
    Error::new(Status::Model, message)
}

/// Parses "cpu", "cuda", "cuda:N".
pub fn parse_device(text: &str) -> Result<Device> {
    let text = text.trim();
    let device = match text {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => match text
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<usize>().ok())
        {
            Some(i) => Device::Cuda(i),
            None => {
                return Err(Error::invalid(format!(
                    "device \"{text}\" is not \"cpu\", \"cuda\" or \"cuda:N\""
                )))
            }
        },
    };
    if let Device::Cuda(i) = device {
        let count = if tch::Cuda::is_available() {
            tch::Cuda::device_count()
        } else {
            0
        };
        if i as i64 >= count {
            return Err(Error::unsupported(format!(
                "device {text}: this machine has {count} CUDA device(s)"
            )));
        }
    }
    Ok(device)
}

impl Model {
    pub fn load(path: &Path, device: Device) -> Result<Model> {
        if !path.is_file() {
            return Err(model_error(format!(
                "model file not found: {}",
                path.display()
            )));
        }
        let mut module = CModule::load_on_device(path, device).map_err(|e| {
            model_error(format!(
                "cannot load TorchScript module {}: {}",
                path.display(),
                torch_message(&e)
            ))
        })?;
        module.set_eval();
        let params = module.named_parameters()?;
        if params.is_empty() {
            return Err(model_error(format!("{} has no parameters", path.display())));
        }
        let mut model = Model {
            module,
            path: path.to_path_buf(),
            device,
            takes_mask: true,
            vocab: 0,
            params,
            training: false,
        };
        model.probe()?;
        Ok(model)
    }

    /// Finds the forward signature and checks the output contract on a 1 x 2 input.
    fn probe(&mut self) -> Result<()> {
        let ids = Tensor::zeros([1, 2], (Kind::Int64, self.device));
        let mask = Tensor::ones([1, 2], (Kind::Int64, self.device));
        let out = tch::no_grad(|| match self.module.forward_ts(&[&ids, &mask]) {
            Ok(out) => Ok(out),
            Err(with_mask) => {
                self.takes_mask = false;
                self.module.forward_ts(&[&ids]).map_err(|without| {
                    model_error(format!(
                        "{}: neither forward(input_ids, attention_mask) nor forward(input_ids) ran: {}; {}",
                        self.path.display(),
                        torch_message(&with_mask),
                        torch_message(&without)
                    ))
                })
            }
        })?;
        let size = out.size();
        if size.len() != 3
            || size[0] != 1
            || size[1] != 2
            || size[2] < 2
            || !out.is_floating_point()
        {
            return Err(model_error(format!(
                "{}: forward must return float logits [B, T, V]; on input [1, 2] it returned {:?} {:?}",
                self.path.display(),
                out.kind(),
                size
            )));
        }
        self.vocab = size[2];
        Ok(())
    }

    /// Logits [B, T, V] for ids [B, T] (int64, on the model's device).
    pub fn logits(&self, ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        // An id outside the vocabulary would surface as an opaque TorchScript traceback.
        let top = ids.max().int64_value(&[]);
        if top >= self.vocab {
            return Err(Error::invalid(format!(
                "token id {top} is outside the vocabulary [0, {}) of {}",
                self.vocab,
                self.path.display()
            )));
        }
        let out = if self.takes_mask {
            self.module.forward_ts(&[ids, attention_mask])?
        } else {
            self.module.forward_ts(&[ids])?
        };
        let (b, t) = (ids.size()[0], ids.size()[1]);
        if out.size() != [b, t, self.vocab] {
            return Err(model_error(format!(
                "{}: forward returned {:?} for input [{b}, {t}]; expected [{b}, {t}, {}]",
                self.path.display(),
                out.size(),
                self.vocab
            )));
        }
        Ok(out)
    }

    pub fn device(&self) -> Device {
        self.device
    }
    pub fn vocab(&self) -> i64 {
        self.vocab
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Number of parameter values, all tensors together.
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|(_, p)| p.numel()).sum()
    }

    /// Every parameter flattened, in the module's parameter order, as f64 on the host.
    pub fn flat_params(&self) -> Result<Vec<f64>> {
        let flat: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, p)| p.detach().reshape([-1]).to_kind(Kind::Double))
            .collect();
        Ok(Vec::<f64>::try_from(
            Tensor::cat(&flat, 0).to_device(Device::Cpu),
        )?)
    }

    /// Train mode with gradients on every parameter (the policy), or eval mode (the reference).
    pub fn set_trainable(&mut self, trainable: bool) {
        self.training = trainable;
        if trainable {
            self.module.set_train();
        } else {
            self.module.set_eval();
        }
        for (_, p) in &mut self.params {
            *p = p.set_requires_grad(trainable);
        }
    }

    /// Whether the module is in train mode (dropout and the like active).
    pub fn training(&self) -> bool {
        self.training
    }

    /// Runs `f` with the module in eval mode (no dropout), then restores its mode: sampling
    /// and measuring log-probs use the policy as it will be deployed.
    pub fn in_eval_mode<T>(&mut self, f: impl FnOnce(&Model) -> T) -> T {
        let was_training = self.training;
        if was_training {
            self.module.set_eval();
        }
        let out = f(self);
        if was_training {
            self.module.set_train();
        }
        out
    }

    /// Another instance of the same module (a fresh load), frozen, holding a copy of this
    /// model's current weights: the EMA and KL-triggered anchors.
    pub fn frozen_copy(&self) -> Result<Model> {
        let mut copy = Model::load(&self.path, self.device)?;
        copy.set_trainable(false);
        copy.copy_weights_from(self);
        Ok(copy)
    }

    /// theta <- other's theta.
    pub fn copy_weights_from(&mut self, other: &Model) {
        tch::no_grad(|| {
            for ((_, mine), (_, theirs)) in self.params.iter_mut().zip(&other.params) {
                mine.copy_(theirs);
            }
        });
    }

    /// theta <- alpha theta + (1 - alpha) other's theta.
    pub fn ema_towards(&mut self, other: &Model, alpha: f64) {
        tch::no_grad(|| {
            for ((_, mine), (_, theirs)) in self.params.iter_mut().zip(&other.params) {
                let _ = mine.g_mul_scalar_(alpha);
                let _ = mine.g_add_(&(theirs * (1.0 - alpha)));
            }
        });
    }
}
