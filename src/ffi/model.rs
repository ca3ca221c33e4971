//! C ABI of TorchScript causal LMs (src/model.rs).

use super::args::{c_str, require_out, write_out};
use super::boundary::{call, call_on};
use super::error::adpo_error;
use super::handle::{free, handle, Guarded, Handle};
use crate::error::{catch_torch, Error, Status};
use crate::model::{parse_device, Model, SharedModel};
use parking_lot::Mutex;
use std::ffi::c_char;
use std::path::Path;
use std::sync::Arc;

/// A TorchScript causal LM. A trainer keeps its own reference to the models it was created
/// with: freeing the handle after adpo_trainer_new is fine.
pub struct adpo_model(Guarded<SharedModel>);
handle!(adpo_model, SharedModel);

/// Loads a TorchScript causal LM (`torch.jit.script(model).save(path)`) whose forward is
/// `forward(input_ids int64 [B, T], attention_mask int64 [B, T]) -> logits [B, T, V]` or
/// `forward(input_ids)`. `device`: "cpu" (NULL), "cuda" or "cuda:N". The forward is tried on a
/// 1 x 2 input at load: a missing file, another signature or output shape is an
/// ADPO_STATUS_MODEL error.
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
        let model = Model::load(Path::new(path), device)?;
        write_out(
            out,
            "out",
            adpo_model::into_raw(Arc::new(Mutex::new(model))),
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

/// Number of parameter values of the model, all tensors together.
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

/// Copies the model's current parameters (a policy's as trained so far) into out[0 .. n), as
/// doubles, every tensor flattened in the module's parameter order; n must equal
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
