//! Writing the GGUF container (version 3, llama.cpp's `gguf.h` / gguf-py's `GGUFWriter`): the
//! header, typed metadata key/values, tensor descriptions, then each tensor's data at an offset
//! aligned to 32 bytes. Tensors are encoded one at a time as they are written (quant.rs), so a
//! write holds the model and one encoded tensor, not the whole file. What the metadata and
//! tensors mean is export.rs's and adapter.rs's business.
//!
//! [`save`] publishes the file atomically (temporary file + rename, `checkpoint::publish`); an
//! existing path is replaced only when it is a GGUF file, anything else is refused untouched.

use super::dequant::GgmlType;
use super::quant;
use super::reader::MAGIC;
use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;
use tch::Tensor;

const VERSION: u32 = 3;
const ALIGNMENT: u64 = 32;

/// A metadata value, with the gguf type llama.cpp expects for its key.
#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

impl Meta {
    /// gguf_type ids: 4 uint32, 5 int32, 6 float32, 7 bool, 8 string, 9 array.
    fn type_id(&self) -> u32 {
        match self {
            Meta::U32(_) => 4,
            Meta::I32(_) => 5,
            Meta::F32(_) => 6,
            Meta::Bool(_) => 7,
            Meta::Str(_) => 8,
            Meta::Strs(_) | Meta::I32s(_) | Meta::F32s(_) => 9,
        }
    }
}

/// One tensor to write: its GGUF name, values (torch layout, outermost dimension first, on any
/// device and of any float dtype) and the ggml type to store them as.
pub struct OutTensor {
    pub name: String,
    pub values: Tensor,
    pub ggml_type: GgmlType,
}

impl OutTensor {
    /// ggml's dimensions: innermost first.
    fn dims(&self) -> Vec<u64> {
        self.values.size().iter().rev().map(|&d| d as u64).collect()
    }

    fn nbytes(&self) -> u64 {
        let (block, size) = self.ggml_type.block();
        self.values.numel() as u64 / block as u64 * size as u64
    }
}

/// A whole file: metadata in order, then tensors in order.
#[derive(Default)]
pub struct GgufOut {
    pub metadata: Vec<(String, Meta)>,
    pub tensors: Vec<OutTensor>,
}

impl GgufOut {
    pub fn put(&mut self, key: impl Into<String>, value: Meta) {
        let key = key.into();
        self.metadata.retain(|(k, _)| *k != key);
        self.metadata.push((key, value));
    }
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("cannot write {}: {e}", path.display()))
}

/// Writes `g` as a GGUF file at `path`, atomically (see the module doc).
pub fn save(path: &Path, g: &GgufOut) -> Result<()> {
    check_target(path)?;
    crate::checkpoint::publish(path, |out| write(out, g).map_err(|e| io(path, e)))
}

/// An existing `path` may be replaced only when it is a GGUF file: a directory or another kind of
/// file is refused (ADPO_STATUS_INVALID_ARGUMENT), so a typo never destroys unrelated data.
fn check_target(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let gguf = meta.is_file()
        && std::fs::File::open(path).is_ok_and(|mut f| {
            let mut magic = [0u8; 4];
            std::io::Read::read_exact(&mut f, &mut magic).is_ok() && &magic == MAGIC
        });
    if gguf {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "{} exists and is not a GGUF file; adpo replaces only a GGUF file there (remove it or \
         choose another path)",
        path.display()
    )))
}

fn string(out: &mut dyn Write, s: &str) -> std::io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

fn value(out: &mut dyn Write, v: &Meta) -> std::io::Result<()> {
    let array = |out: &mut dyn Write, kind: u32, n: usize| -> std::io::Result<()> {
        out.write_all(&kind.to_le_bytes())?;
        out.write_all(&(n as u64).to_le_bytes())
    };
    match v {
        Meta::U32(x) => out.write_all(&x.to_le_bytes()),
        Meta::I32(x) => out.write_all(&x.to_le_bytes()),
        Meta::F32(x) => out.write_all(&x.to_le_bytes()),
        Meta::Bool(b) => out.write_all(&[*b as u8]),
        Meta::Str(s) => string(out, s),
        Meta::Strs(items) => {
            array(out, 8, items.len())?;
            items.iter().try_for_each(|s| string(out, s))
        }
        Meta::I32s(items) => {
            array(out, 5, items.len())?;
            items
                .iter()
                .try_for_each(|x| out.write_all(&x.to_le_bytes()))
        }
        Meta::F32s(items) => {
            array(out, 6, items.len())?;
            items
                .iter()
                .try_for_each(|x| out.write_all(&x.to_le_bytes()))
        }
    }
}

fn padding(out: &mut dyn Write, written: u64) -> std::io::Result<u64> {
    let pad = written.next_multiple_of(ALIGNMENT) - written;
    out.write_all(&vec![0u8; pad as usize])?;
    Ok(pad)
}

/// The header, metadata and tensor descriptions; returns the bytes written.
fn header(out: &mut dyn Write, g: &GgufOut) -> std::io::Result<u64> {
    let mut buf = Vec::new();
    buf.write_all(MAGIC)?;
    buf.write_all(&VERSION.to_le_bytes())?;
    buf.write_all(&(g.tensors.len() as u64).to_le_bytes())?;
    buf.write_all(&(g.metadata.len() as u64).to_le_bytes())?;
    for (key, v) in &g.metadata {
        string(&mut buf, key)?;
        buf.write_all(&v.type_id().to_le_bytes())?;
        value(&mut buf, v)?;
    }
    let mut offset = 0u64;
    for t in &g.tensors {
        string(&mut buf, &t.name)?;
        let dims = t.dims();
        buf.write_all(&(dims.len() as u32).to_le_bytes())?;
        dims.iter()
            .try_for_each(|d| buf.write_all(&d.to_le_bytes()))?;
        buf.write_all(&(t.ggml_type as u32).to_le_bytes())?;
        buf.write_all(&offset.to_le_bytes())?;
        offset = (offset + t.nbytes()).next_multiple_of(ALIGNMENT);
    }
    out.write_all(&buf)?;
    Ok(buf.len() as u64)
}

/// The whole file to `out`.
pub fn write(out: &mut dyn Write, g: &GgufOut) -> std::io::Result<()> {
    let written = header(out, g)?;
    padding(out, written)?;
    for t in &g.tensors {
        let bytes = quant::encode(&t.values, t.ggml_type)
            .map_err(|e| std::io::Error::other(format!("tensor {}: {}", t.name, e.message)))?;
        debug_assert_eq!(bytes.len() as u64, t.nbytes());
        out.write_all(&bytes)?;
        padding(out, bytes.len() as u64)?;
    }
    Ok(())
}
