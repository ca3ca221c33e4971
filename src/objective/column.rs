//! One input or output of an evaluation, N values per candidate: a host float64 buffer, or a
//! tensor on any device in any floating dtype. Both kernels read and write through it, so the
//! checks and conversions between the two forms are written once.

use crate::error::{Error, Result};
use std::borrow::Cow;
use tch::{Device, Kind, Tensor};

pub(crate) enum Column<'a> {
    Host(&'a [f64]),
    Tensor(Tensor),
}

/// What the public input types hold: tensors, or host float64 buffers.
pub(crate) trait AsColumn {
    fn column(&self) -> Column<'_>;
}

impl AsColumn for Tensor {
    fn column(&self) -> Column<'_> {
        Column::Tensor(self.shallow_clone())
    }
}

impl AsColumn for [f64] {
    fn column(&self) -> Column<'_> {
        Column::Host(self)
    }
}

impl Column<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            Column::Host(_) => Kind::Double,
            Column::Tensor(t) => t.kind(),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Column::Host(_) => Device::Cpu,
            Column::Tensor(t) => t.device(),
        }
    }

    /// N values on `device`, all finite.
    pub fn check(&self, name: &str, n: usize, device: Device) -> Result<()> {
        match self {
            Column::Host(v) if v.len() != n => Err(Error::shape(format!(
                "{name} has {} entries, expected {n}",
                v.len()
            ))),
            Column::Host(v) if !all_finite_host(v) => Err(Error::non_finite(name)),
            Column::Host(_) => Ok(()),
            Column::Tensor(t) => check_tensor(name, t, &[n as i64], device),
        }
    }

    pub fn all_finite(&self) -> bool {
        match self {
            Column::Host(v) => all_finite_host(v),
            Column::Tensor(t) => all_finite(t),
        }
    }

    /// In the compute dtype `kind`. CPU float64 tensors are made contiguous, so that the host
    /// kernel can read them in place.
    pub fn to_kind(&self, kind: Kind) -> Self {
        match self {
            Column::Host(v) => Column::Host(v),
            Column::Tensor(t) => {
                let t = t.to_kind(kind);
                let host = t.device() == Device::Cpu && kind == Kind::Double;
                Column::Tensor(if host { t.contiguous() } else { t })
            }
        }
    }

    /// The values in place, when they are contiguous float64 on the CPU.
    pub fn host(&self) -> Option<&[f64]> {
        match self {
            Column::Host(v) => Some(v),
            Column::Tensor(t) => host_slice(t),
        }
    }

    /// The values as a tensor (host buffers are copied).
    pub fn tensor(&self) -> Tensor {
        match self {
            Column::Host(v) => Tensor::from_slice(v),
            Column::Tensor(t) => t.shallow_clone(),
        }
    }

    /// The values as float64 on the host: in place, or one transfer of N values.
    pub fn on_host(&self) -> Result<Cow<'_, [f64]>> {
        if let Some(v) = self.host() {
            return Ok(Cow::Borrowed(v));
        }
        let t = self.tensor().to_kind(Kind::Double).to_device(Device::Cpu);
        Ok(Cow::Owned(Vec::<f64>::try_from(t.contiguous())?))
    }

    /// Copies the values into a host buffer of the same length.
    pub fn copy_to(&self, out: &mut [f64]) -> Result<()> {
        match self {
            Column::Host(v) => out.copy_from_slice(v),
            Column::Tensor(t) => t.f_copy_data(out, out.len())?,
        }
        Ok(())
    }
}

/// True when no value is NaN or Inf. Integer bit tests with no early exit, so the loop
/// vectorises (a third of a host evaluation's serial time went to `all(is_finite)`): a value
/// is not finite when its exponent bits are all ones, and adding one to such an exponent field
/// carries into the sign bit.
pub(crate) fn all_finite_host(v: &[f64]) -> bool {
    const EXPONENT: u64 = 0x7ff << 52;
    let flag = |x: &f64| (x.to_bits() & EXPONENT) + (1 << 52);
    // Four independent accumulators: the loop vectorises.
    let mut acc = [0u64; 4];
    let chunks = v.chunks_exact(4);
    let tail = chunks.remainder().iter().fold(0, |a, x| a | flag(x));
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a |= flag(x);
        }
    }
    (acc.iter().fold(tail, |a, b| a | b)) >> 63 == 0
}

/// A contiguous float64 CPU tensor's values in place.
fn host_slice(t: &Tensor) -> Option<&[f64]> {
    let host = t.device() == Device::Cpu && t.kind() == Kind::Double && t.is_contiguous();
    // SAFETY: contiguous float64 CPU tensor of numel elements, alive while `t` is borrowed.
    host.then(|| unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f64, t.numel()) })
}

/// NaN/Inf scan: on the host for contiguous CPU float64 data, else as tensor ops.
pub(crate) fn all_finite(t: &Tensor) -> bool {
    match host_slice(t) {
        Some(v) => all_finite_host(v),
        None => t.isfinite().all().int64_value(&[]) != 0,
    }
}

/// A tensor input: its shape, its device (logp's), a floating dtype, finite values.
pub(crate) fn check_tensor(name: &str, t: &Tensor, shape: &[i64], device: Device) -> Result<()> {
    if t.size() != shape {
        return Err(Error::shape(format!(
            "{name} has shape {:?}, expected {:?}",
            t.size(),
            shape
        )));
    }
    if t.device() != device {
        return Err(Error::unsupported(format!(
            "{name} is on {:?} but logp is on {:?}: all inputs must be on one device",
            t.device(),
            device
        )));
    }
    if !t.is_floating_point() {
        return Err(Error::unsupported(format!(
            "{name} has dtype {:?}; expected a floating-point dtype",
            t.kind()
        )));
    }
    if !all_finite(t) {
        return Err(Error::non_finite(name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::all_finite_host;

    #[test]
    fn all_finite_host_finds_every_non_finite_value() {
        let edge = [
            0.0,
            -0.0,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            -1e300,
        ];
        assert!(all_finite_host(&edge));
        assert!(all_finite_host(&[]));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN] {
            for at in [0, 3, 6] {
                let mut v = edge;
                v[at] = bad;
                assert!(!all_finite_host(&v), "{bad} at {at}");
            }
        }
    }
}
