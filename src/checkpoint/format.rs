//! The bytes of a checkpoint: a safetensors file (8-byte little-endian header length, JSON
//! header, tensor data) whose header's `__metadata__` holds
//!
//! - `"format": "adpo.checkpoint"`, `"format_version": "1"`;
//! - `"crc32.NAME"`: the CRC-32 (IEEE, 8 hex digits) of tensor NAME's data bytes, for every
//!   tensor, so a flipped bit anywhere in the data is found and named.
//!
//! Any safetensors reader reads it (the metadata is strings, as the format requires).

use crate::error::{Error, Result, Status};
use safetensors::tensor::{Dtype, SafeTensors, TensorInfo};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub const FORMAT: &str = "adpo.checkpoint";
pub const FORMAT_VERSION: &str = "1";
const CRC_PREFIX: &str = "crc32.";

fn corrupt(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::new(
        Status::Checkpoint,
        format!("checkpoint {}: {what}", path.display()),
    )
}

/// The data bytes of a contiguous CPU tensor, borrowed.
fn bytes(t: &Tensor) -> &[u8] {
    let len = t.numel() * t.kind().elt_size_in_bytes();
    if len == 0 {
        return &[];
    }
    // SAFETY: a contiguous CPU tensor holds len bytes at data_ptr while `t` lives.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, len) }
}

fn crc(data: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(data))
}

/// Writes `tensors` (any device; copied to the host as needed) as one checkpoint file.
pub fn encode(path: &Path, tensors: &[(String, Tensor)], out: &mut dyn Write) -> Result<()> {
    let host: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(k, t)| {
            Ok((
                k.as_str(),
                t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?,
            ))
        })
        .collect::<Result<_>>()?;
    // Wider elements first: every tensor's data then starts aligned to its element size.
    let mut order: Vec<usize> = (0..host.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(host[i].1.kind().elt_size_in_bytes()));
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("format_version".to_string(), FORMAT_VERSION.to_string());
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for &i in &order {
        let (name, t) = &host[i];
        let dtype = Dtype::try_from(t.kind())
            .map_err(|_| Error::unsupported(format!("cannot save {name}: dtype {:?}", t.kind())))?;
        let data = bytes(t);
        meta.insert(format!("{CRC_PREFIX}{name}"), crc(data));
        let info = serde_json::json!({
            "dtype": dtype,
            "shape": t.size(),
            "data_offsets": [offset, offset + data.len()],
        });
        header.insert(name.to_string(), info);
        offset += data.len();
    }
    header.insert("__metadata__".into(), serde_json::json!(meta));
    let mut json = serde_json::to_vec(&header).map_err(|e| Error::invalid(e.to_string()))?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let io = |e: std::io::Error| Error::io(format!("cannot write {}: {e}", path.display()));
    out.write_all(&(json.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&json).map_err(io)?;
    for &i in &order {
        out.write_all(bytes(&host[i].1)).map_err(io)?;
    }
    Ok(())
}

/// Parses a checkpoint file's bytes; every tensor's checksum is verified. Tensors come in
/// file order.
pub fn decode(path: &Path, file: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let (header_len, metadata) = SafeTensors::read_metadata(file)
        .map_err(|e| corrupt(path, format!("corrupt or not safetensors ({e:?})")))?;
    let empty = Default::default();
    let meta = metadata.metadata().as_ref().unwrap_or(&empty);
    check_format(path, meta)?;
    let data = &file[8 + header_len..];
    let mut infos: Vec<(String, &TensorInfo)> = metadata.tensors().into_iter().collect();
    infos.sort_by_key(|(_, info)| info.data_offsets);
    let checksums = meta.keys().filter(|k| k.starts_with(CRC_PREFIX)).count();
    if checksums != infos.len() {
        return Err(corrupt(
            path,
            format!("has {checksums} checksums for {} tensors", infos.len()),
        ));
    }
    infos
        .into_iter()
        .map(|(name, info)| {
            let bytes = &data[info.data_offsets.0..info.data_offsets.1];
            let stored = meta.get(&format!("{CRC_PREFIX}{name}"));
            if stored.map(String::as_str) != Some(crc(bytes).as_str()) {
                return Err(corrupt(
                    path,
                    format!("tensor {name} fails its checksum: the file is corrupt"),
                ));
            }
            let kind = Kind::try_from(info.dtype)
                .map_err(|_| corrupt(path, format!("tensor {name} has dtype {:?}", info.dtype)))?;
            let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
            Ok((name, Tensor::f_from_data_size(bytes, &shape, kind)?))
        })
        .collect()
}

fn check_format(path: &Path, meta: &std::collections::HashMap<String, String>) -> Result<()> {
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(corrupt(
            path,
            "is a safetensors file but not an adpo checkpoint (no \"format\": \"adpo.checkpoint\" \
             in its metadata)",
        ));
    }
    match meta.get("format_version") {
        Some(v) if v == FORMAT_VERSION => Ok(()),
        v => Err(corrupt(
            path,
            format!(
                "has checkpoint format version {}; this build reads version {FORMAT_VERSION}",
                v.map_or("(none)", String::as_str)
            ),
        )),
    }
}
