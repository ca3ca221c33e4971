//! TorchScript causal LMs (legacy: TorchScript is deprecated in PyTorch 2.11):
//! `forward(input_ids int64 [B, T], attention_mask int64 [B, T]) -> logits [B, T, V]`, or
//! `forward(input_ids)`. Loading runs the module's code (the probe below calls forward): load
//! only files you trust. The file's bytes are kept, so anchor copies load from memory.
//!
//! To the rest of adpo it is a model like the native ones: its logits stand for its hidden
//! states, behind an identity head, and its "key/value cache" holds the ids so far, all of which
//! run again at every sampling step (a TorchScript module has no incremental forward).

use super::{CausalLm, Head, KvCache};
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

impl TorchScriptLm {
    /// Logits [rows, t, V] of the last t positions of `seen` [rows, end], each row run on its
    /// real (mask 1, left-padded) positions only; positions before a row's start are 0.
    fn rerun_by_length(&self, seen: &Tensor, mask: &Tensor, t: i64) -> Result<Tensor> {
        let end = seen.size()[1];
        let lengths = Vec::<i64>::try_from(mask.sum_dim_intlist(1, false, Kind::Int64))?;
        let mut distinct = lengths.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let mut out: Option<Tensor> = None;
        for len in distinct {
            let members: Vec<i64> = (0..lengths.len() as i64)
                .filter(|&r| lengths[r as usize] == len)
                .collect();
            let members = Tensor::from_slice(&members).to_device(self.device);
            let real = mask.index_select(0, &members).narrow(1, end - len, len);
            if len == 0 || !bool::try_from(real.eq(1).all())? {
                return Err(Error::invalid(format!(
                    "{}: sampling takes left-padded rows with at least one position",
                    self.path.display()
                )));
            }
            let ids = seen.index_select(0, &members).narrow(1, end - len, len);
            let logits = self.forward(&ids, &ids.ones_like())?;
            let out = out.get_or_insert_with(|| {
                Tensor::zeros(
                    [seen.size()[0], t, self.vocab],
                    (logits.kind(), self.device),
                )
            });
            let kept = t.min(len);
            let shape = [members.size()[0], t, self.vocab];
            let part = Tensor::zeros(shape, (logits.kind(), self.device));
            part.narrow(1, t - kept, kept)
                .copy_(&logits.narrow(1, len - kept, kept));
            let _ = out.f_index_copy_(0, &members, &part)?;
        }
        Ok(out.expect("at least one row"))
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

    fn forward(&self, ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
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
        Ok(out)
    }

    fn head(&self) -> Head {
        Head::Identity
    }

    /// The ids so far, [rows, capacity] int64 (keys[0]).
    fn new_cache(&self, rows: i64, capacity: i64) -> KvCache {
        let ids = Tensor::zeros([rows, capacity], (Kind::Int64, self.device));
        KvCache {
            keys: vec![ids],
            values: Vec::new(),
            len: 0,
            capacity,
        }
    }

    /// Appends `ids` to the cached ones, then runs each row's real positions again (the rows
    /// are left-padded): rows of one length together, unpadded, so that a module whose
    /// positions do not follow the attention mask sees each row as it would alone.
    fn forward_cached(
        &self,
        ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (rows, t) = (ids.size()[0], ids.size()[1]);
        let end = cache.len + t;
        let fits = cache.keys.len() == 1 && cache.keys[0].size() == [rows, cache.capacity];
        if !fits || end > cache.capacity || attention_mask.size() != [rows, end] {
            return Err(Error::shape(format!(
                "{}: the cache (made for other rows, or full) or the attention mask {:?} does \
                 not fit {rows} rows of {} cached + {t} new positions",
                self.path.display(),
                attention_mask.size(),
                cache.len
            )));
        }
        cache.keys[0].narrow(1, cache.len, t).copy_(ids);
        cache.len = end;
        let seen = cache.keys[0].narrow(1, 0, end);
        tch::no_grad(|| self.rerun_by_length(&seen, attention_mask, t))
    }

    fn set_train_mode(&mut self, train: bool) {
        if train {
            self.module.set_train();
        } else {
            self.module.set_eval();
        }
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
