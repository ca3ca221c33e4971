//! DLPack (v1, `DLManagedTensorVersioned`, include/dlpack.h): zero-copy tensors in from any
//! producer on CPU or CUDA, and the gradient out on the same device.
//!
//! Ownership: every non-NULL input passes to adpo at the call; adpo calls its deleter exactly
//! once before returning, on success and on every error. The returned tensor belongs to the
//! caller, who releases it by calling its deleter.

use super::boundary::{call, infallible, require_out, with_handle, write_out};
use super::error::adpo_error;
use super::objective::adpo_objective;
use crate::error::{Error, Result, Status};
use crate::objective::{EvalInputs, Signal};
use std::ffi::c_void;
use tch::{Device, Kind, Tensor};

// Mirrors of dlpack.h (excluded from cbindgen; the header includes dlpack.h instead).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DLPackVersion {
    pub major: u32,
    pub minor: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct DLDevice {
    pub device_type: i32,
    pub device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct DLDataType {
    pub code: u8,
    pub bits: u8,
    pub lanes: u16,
}

#[repr(C)]
pub struct DLTensor {
    pub data: *mut c_void,
    pub device: DLDevice,
    pub ndim: i32,
    pub dtype: DLDataType,
    pub shape: *mut i64,
    pub strides: *mut i64,
    pub byte_offset: u64,
}

#[repr(C)]
pub struct DLManagedTensorVersioned {
    pub version: DLPackVersion,
    pub manager_ctx: *mut c_void,
    pub deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    pub flags: u64,
    pub dl_tensor: DLTensor,
}

const DL_CPU: i32 = 1;
const DL_CUDA: i32 = 2;
const DL_CUDA_HOST: i32 = 3;
const DL_INT: u8 = 0;
const DL_FLOAT: u8 = 2;
const DL_BFLOAT: u8 = 4;
/// The DLPack major version adpo reads and writes.
const DLPACK_MAJOR: u32 = 1;

/// An input whose deleter runs exactly once, when this guard drops.
pub struct Owned(*mut DLManagedTensorVersioned);

impl Owned {
    pub fn take(ptr: *mut DLManagedTensorVersioned) -> Self {
        Owned(ptr)
    }

    fn get(&self) -> Option<&DLManagedTensorVersioned> {
        // SAFETY: a non-NULL pointer is a live DLManagedTensorVersioned until its deleter runs.
        unsafe { self.0.as_ref() }
    }

    /// A tch view (no copy) of the tensor; it must be dropped before this guard.
    pub fn view(&self, name: &str) -> Result<Option<Tensor>> {
        let Some(m) = self.get() else { return Ok(None) };
        if m.version.major != DLPACK_MAJOR {
            return Err(Error::unsupported(format!(
                "{name}: DLPack major version {} is not supported (adpo reads version {DLPACK_MAJOR}.x)",
                m.version.major
            )));
        }
        let t = &m.dl_tensor;
        let kind = match (t.dtype.code, t.dtype.bits, t.dtype.lanes) {
            (DL_FLOAT, 64, 1) => Kind::Double,
            (DL_FLOAT, 32, 1) => Kind::Float,
            (DL_FLOAT, 16, 1) => Kind::Half,
            (DL_BFLOAT, 16, 1) => Kind::BFloat16,
            (DL_INT, 64, 1) => Kind::Int64,
            (code, bits, lanes) => {
                return Err(Error::unsupported(format!(
                    "{name}: DLPack dtype code {code}, {bits} bits, {lanes} lanes is not supported \
                     (float64, float32, float16, bfloat16, or int64 for group ids)"
                )))
            }
        };
        let device = match t.device.device_type {
            DL_CPU | DL_CUDA_HOST => Device::Cpu,
            DL_CUDA => Device::Cuda(t.device.device_id.max(0) as usize),
            other => {
                return Err(Error::unsupported(format!(
                    "{name}: DLPack device type {other} is not supported (CPU, CUDA or CUDA host)"
                )))
            }
        };
        if !(0..=8).contains(&t.ndim) || t.shape.is_null() && t.ndim > 0 {
            return Err(Error::shape(format!(
                "{name}: invalid DLPack ndim {} or NULL shape",
                t.ndim
            )));
        }
        let ndim = t.ndim as usize;
        // SAFETY: shape (and strides if non-NULL) hold ndim entries (DLPack contract).
        let shape = if ndim == 0 {
            vec![]
        } else {
            unsafe { std::slice::from_raw_parts(t.shape, ndim) }.to_vec()
        };
        let strides = if t.strides.is_null() || ndim == 0 {
            vec![]
        } else {
            unsafe { std::slice::from_raw_parts(t.strides, ndim) }.to_vec()
        };
        if shape.iter().any(|&d| d < 0) {
            return Err(Error::shape(format!(
                "{name}: negative DLPack shape {shape:?}"
            )));
        }
        // libtorch aborts the process on strides it cannot describe: check them here.
        if strides.iter().any(|&s| s < 0) {
            return Err(Error::unsupported(format!(
                "{name}: negative DLPack strides {strides:?} are not supported; pass a copy with non-negative strides"
            )));
        }
        let extent = shape
            .iter()
            .zip(&strides)
            .try_fold(0i64, |acc, (&d, &s)| match d {
                0 => Some(acc),
                _ => (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x)),
            });
        let bytes = extent
            .and_then(|e| e.checked_add(1))
            .and_then(|e| e.checked_mul(kind.elt_size_in_bytes() as i64));
        if bytes.is_none() {
            return Err(Error::shape(format!(
                "{name}: DLPack shape {shape:?} with strides {strides:?} overflows"
            )));
        }
        if t.data.is_null() && shape.iter().product::<i64>() > 0 {
            return Err(Error::null(&format!("{name}->dl_tensor.data")));
        }
        let data = (t.data as *const u8).wrapping_add(t.byte_offset as usize);
        // SAFETY: data, shape and strides describe memory valid until the deleter runs.
        let view = unsafe { Tensor::f_from_blob(data, &shape, &strides, kind, device) }?;
        Ok(Some(view))
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(m) = self.get() {
            if let Some(deleter) = m.deleter {
                // SAFETY: called once, on the pointer the producer handed us.
                unsafe { deleter(self.0) };
            }
        }
    }
}

/// Context of an exported tensor: keeps the tch tensor and the shape/strides arrays alive.
struct Exported {
    _tensor: Tensor,
    _shape: Vec<i64>,
    _strides: Vec<i64>,
}

unsafe extern "C" fn delete_exported(m: *mut DLManagedTensorVersioned) {
    infallible((), || {
        if !m.is_null() {
            // SAFETY: m and its manager_ctx were created by export() and are freed once.
            let m = unsafe { Box::from_raw(m) };
            drop(unsafe { Box::from_raw(m.manager_ctx as *mut Exported) });
        }
    })
}

/// The DLPack dtype of a libtorch dtype adpo hands out.
pub fn dl_dtype(kind: Kind) -> Result<DLDataType> {
    let (code, bits) = match kind {
        Kind::Double => (DL_FLOAT, 64),
        Kind::Float => (DL_FLOAT, 32),
        Kind::Half => (DL_FLOAT, 16),
        Kind::BFloat16 => (DL_BFLOAT, 16),
        Kind::Int64 => (DL_INT, 64),
        k => {
            return Err(Error::unsupported(format!(
                "cannot export dtype {k:?} as DLPack"
            )))
        }
    };
    Ok(DLDataType {
        code,
        bits,
        lanes: 1,
    })
}

/// The DLPack device of a libtorch device (CPU or CUDA).
pub fn dl_device(device: Device) -> Result<DLDevice> {
    match device {
        Device::Cpu => Ok(DLDevice {
            device_type: DL_CPU,
            device_id: 0,
        }),
        Device::Cuda(i) => Ok(DLDevice {
            device_type: DL_CUDA,
            device_id: i as i32,
        }),
        d => Err(Error::unsupported(format!(
            "cannot export a tensor on {d:?} as DLPack"
        ))),
    }
}

/// Hands a tensor to the caller as DLPack; the caller calls the deleter.
pub fn export(t: Tensor) -> Result<*mut DLManagedTensorVersioned> {
    let t = t.f_contiguous()?;
    let dtype = dl_dtype(t.kind())?;
    let device = dl_device(t.device())?;
    let mut shape = t.size();
    let mut strides = t.stride();
    let data = t.data_ptr();
    let dl_tensor = DLTensor {
        data,
        device,
        ndim: shape.len() as i32,
        dtype,
        shape: shape.as_mut_ptr(),
        strides: strides.as_mut_ptr(),
        byte_offset: 0,
    };
    let ctx = Box::new(Exported {
        _tensor: t,
        _shape: shape,
        _strides: strides,
    });
    let managed = Box::new(DLManagedTensorVersioned {
        version: DLPackVersion {
            major: DLPACK_MAJOR,
            minor: 0,
        },
        manager_ctx: Box::into_raw(ctx) as *mut c_void,
        deleter: Some(delete_exported),
        flags: 0,
        dl_tensor,
    });
    Ok(Box::into_raw(managed))
}

/// Reads int64 group ids from any device into host memory.
fn read_group_ids(t: &Tensor) -> Result<Vec<i64>> {
    if t.kind() != Kind::Int64 {
        return Err(Error::unsupported(format!(
            "group_ids must be int64, got {:?}",
            t.kind()
        )));
    }
    if t.dim() != 1 {
        return Err(Error::shape(format!(
            "group_ids must be 1-D, got shape {:?}",
            t.size()
        )));
    }
    Ok(Vec::<i64>::try_from(
        t.f_to_device(Device::Cpu)?.f_contiguous()?,
    )?)
}

/// adpo_objective_eval on DLPack tensors (CPU or CUDA; float64, float32, float16 or bfloat16;
/// any strides and byte offset). `logp`, `anchor_logp`, `group_ids` (int64, any device) are
/// required; exactly one of `rewards`, `targets` is non-NULL. adpo takes ownership of every
/// non-NULL input and calls its deleter exactly once before returning, whatever the outcome.
/// On success `*out_grad_logp` receives d loss/d logp as a new DLPack tensor on logp's device,
/// in logp's dtype (computed in float32, or float64 for float64 inputs); the caller owns it and
/// releases it with its deleter. CUDA inputs must be ready on libtorch's current stream.
#[no_mangle]
pub extern "C" fn adpo_objective_eval_dlpack(
    obj: *const adpo_objective,
    logp: *mut DLManagedTensorVersioned,
    anchor_logp: *mut DLManagedTensorVersioned,
    rewards: *mut DLManagedTensorVersioned,
    targets: *mut DLManagedTensorVersioned,
    group_ids: *mut DLManagedTensorVersioned,
    out_loss: *mut f64,
    out_grad_logp: *mut *mut DLManagedTensorVersioned,
    err: *mut *mut adpo_error,
) -> Status {
    call(err, || {
        // Ownership passes at the call: take it before anything can fail.
        let owned = [logp, anchor_logp, rewards, targets, group_ids].map(Owned::take);
        with_handle(obj, "obj", |obj| {
            require_out(out_loss, "out_loss")?;
            require_out(out_grad_logp, "out_grad_logp")?;
            let [logp, anchor, rewards, targets, ids] = &owned;
            let logp = logp.view("logp")?.ok_or_else(|| Error::null("logp"))?;
            let anchor = anchor
                .view("anchor_logp")?
                .ok_or_else(|| Error::null("anchor_logp"))?;
            let rewards = rewards.view("rewards")?;
            let targets = targets.view("targets")?;
            let ids = ids
                .view("group_ids")?
                .ok_or_else(|| Error::null("group_ids"))?;
            let signal = match (&rewards, &targets) {
                (Some(r), None) => Signal::Rewards(r),
                (None, Some(t)) => Signal::Targets(t),
                (Some(_), Some(_)) => {
                    return Err(Error::invalid(
                        "give exactly one of rewards and targets; both are non-NULL",
                    ))
                }
                (None, None) => {
                    return Err(Error::null(
                        "rewards and targets (exactly one must be given)",
                    ))
                }
            };
            if logp.dim() != 1 {
                return Err(Error::shape(format!(
                    "logp must be 1-D, got shape {:?}",
                    logp.size()
                )));
            }
            let ids = read_group_ids(&ids)?;
            if ids.len() as i64 != logp.size()[0] {
                return Err(Error::shape(format!(
                    "group_ids has {} entries, logp has {}",
                    ids.len(),
                    logp.size()[0]
                )));
            }
            let groups = obj.inner.groups_of(&ids)?;
            let inputs = EvalInputs {
                logp: &logp,
                anchor_logp: &anchor,
                signal,
                groups: &groups,
                policy_entropy: None,
            };
            let out = obj.inner.eval(&inputs)?;
            let grad = export(out.grad_logp.f_to_kind(logp.kind())?)?;
            write_out(out_grad_logp, "out_grad_logp", grad)?;
            write_out(out_loss, "out_loss", out.loss)
        })
    })
}
