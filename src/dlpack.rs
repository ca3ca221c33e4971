//! DLPack (v1, `DLManagedTensorVersioned`, include/dlpack.h): the struct mirrors, the
//! dtype/device mapping, zero-copy views of tensors handed in (CPU or CUDA), and tensors
//! handed out. Used by the C ABI (src/ffi/dlpack.rs) and by the host all-reduce callback.
//!
//! Ownership: an input guarded by [`Owned`] has its deleter called exactly once, when the
//! guard drops. An exported tensor belongs to the consumer, who calls its deleter.

use crate::error::{Error, Result};
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

/// Called by the consumer (C code): a panic must not unwind out of it.
unsafe extern "C" fn delete_exported(m: *mut DLManagedTensorVersioned) {
    let _ = std::panic::catch_unwind(|| {
        if !m.is_null() {
            // SAFETY: m and its manager_ctx were created by export() and are freed once.
            let m = unsafe { Box::from_raw(m) };
            drop(unsafe { Box::from_raw(m.manager_ctx as *mut Exported) });
        }
    });
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
