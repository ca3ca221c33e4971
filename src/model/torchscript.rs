//! TorchScript causal LMs (legacy: TorchScript is deprecated in PyTorch 2.11):
//! `forward(input_ids int64 [B, T], attention_mask int64 [B, T]) -> logits [B, T, V]`, or
//! `forward(input_ids)`. Loading runs the module's code (the probe below calls forward): load
//! only files you trust. The file's bytes are kept, so anchor copies load from memory.

use super::{CausalLm, Forward};
use crate::error::{torch_message, Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{CModule, Device, Kind, Tensor};

pub struct TorchScriptLm {
    module: CModule,
    path: PathBuf,
    /// The archive as read, for duplicates.
    bytes: Arc<Vec<u8>>,
    device: Device,
    takes_mask: bool,
    vocab: i64,
}

impl TorchScriptLm {
    /// Loads the archive `bytes` (read from `path`) and checks the forward contract.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>, device: Device) -> Result<TorchScriptLm> {
        let bytes = Arc::new(bytes);
        let module = Self::module(path, &bytes, device)?;
        let mut lm = TorchScriptLm {
            module,
            path: path.to_path_buf(),
            bytes,
            device,
            takes_mask: true,
            vocab: 0,
        };
        lm.probe()?;
        Ok(lm)
    }

    fn module(path: &Path, bytes: &[u8], device: Device) -> Result<CModule> {
        let mut module = CModule::load_data_on_device(&mut &bytes[..], device).map_err(|e| {
            Error::model(format!(
                "cannot load TorchScript module {}: {}",
                path.display(),
                torch_message(&e)
            ))
        })?;
        module.set_eval();
        Ok(module)
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
                    Error::model(format!(
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
            return Err(Error::model(format!(
                "{}: forward must return float logits [B, T, V]; on input [1, 2] it returned {:?} {:?}",
                self.path.display(),
                out.kind(),
                size
            )));
        }
        self.vocab = size[2];
        Ok(())
    }
}

impl CausalLm for TorchScriptLm {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn vocab(&self) -> i64 {
        self.vocab
    }

    fn device(&self) -> Device {
        self.device
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        // Checked at load (the probe ran the module); an error here is a libtorch bug.
        self.module.named_parameters().unwrap_or_default()
    }

    fn set_train_mode(&mut self, train: bool) {
        if train {
            self.module.set_train();
        } else {
            self.module.set_eval();
        }
    }

    fn forward(&self, ids: &Tensor, attention_mask: &Tensor) -> Result<Forward> {
        let out = if self.takes_mask {
            self.module.forward_ts(&[ids, attention_mask])?
        } else {
            self.module.forward_ts(&[ids])?
        };
        let (b, t) = (ids.size()[0], ids.size()[1]);
        if out.size() != [b, t, self.vocab] {
            return Err(Error::model(format!(
                "{}: forward returned {:?} for input [{b}, {t}]; expected [{b}, {t}, {}]",
                self.path.display(),
                out.size(),
                self.vocab
            )));
        }
        Ok(Forward::Logits(out))
    }

    fn duplicate(&self) -> Result<Box<dyn CausalLm>> {
        Ok(Box::new(TorchScriptLm {
            module: Self::module(&self.path, &self.bytes, self.device)?,
            path: self.path.clone(),
            bytes: self.bytes.clone(),
            device: self.device,
            takes_mask: self.takes_mask,
            vocab: self.vocab,
        }))
    }
}
