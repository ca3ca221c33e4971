//! The weights of a checkpoint directory: `model.safetensors`, or `model.safetensors.index.json`
//! and the shards its `weight_map` names. Each shard is memory-mapped and read a tensor at a
//! time: once a tensor is copied out, its pages are dropped from memory, so a load holds the
//! weights and one tensor of the file, not the whole file beside the weights. Each tensor is
//! checked against the expected layout (name and shape) before it is converted to the requested
//! dtype and device. A missing, unexpected or misshapen tensor, a missing, truncated or corrupt
//! shard is an ADPO_STATUS_CHECKPOINT error that names the tensor or the file.

use crate::error::{torch_message, Error, Result};
use crate::regular_file;
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub const SINGLE: &str = "model.safetensors";
pub const INDEX: &str = "model.safetensors.index.json";

/// The bound on model.safetensors.index.json: one line per tensor, so it grows with the tensor
/// count; the largest hub indexes (tens of thousands of tensors) are under 10 MB.
const INDEX_LIMIT: u64 = 64 << 20;

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// The safetensors files of a checkpoint, and for a sharded one the file each tensor is in.
struct Files {
    /// Each shard's name as the index gives it (the file name when there is no index), and path.
    shards: Vec<(String, PathBuf)>,
    index: Option<BTreeMap<String, String>>,
}

fn files(dir: &Path) -> Result<Files> {
    let index_path = dir.join(INDEX);
    if index_path.exists() {
        let text = regular_file::read_text(&index_path, INDEX_LIMIT)
            .map_err(|e| Error::checkpoint(format!("cannot read {}: {e}", index_path.display())))?;
        let index: Index = serde_json::from_str(&text).map_err(|e| {
            Error::checkpoint(format!(
                "{} is not a shard index: {e}",
                index_path.display()
            ))
        })?;
        let names: BTreeSet<&String> = index.weight_map.values().collect();
        let shards = names
            .into_iter()
            .map(|n| Ok((n.clone(), dir.join(inside(&index_path, n)?))))
            .collect::<Result<_>>()?;
        return Ok(Files {
            shards,
            index: Some(index.weight_map),
        });
    }
    let single = dir.join(SINGLE);
    if single.exists() {
        return Ok(Files {
            shards: vec![(SINGLE.to_string(), single)],
            index: None,
        });
    }
    Err(Error::checkpoint(format!(
        "{} has neither {SINGLE} nor {INDEX}",
        dir.display()
    )))
}

/// A shard name of the index, refused unless it is a relative path that stays in the
/// checkpoint directory (no root, no `..`). Only the text is judged, before any file is
/// touched, so the message is the same whether an outside file exists or not. Symbolic links
/// inside the directory are followed like any file of it: the directory's owner placed them
/// (the Hugging Face cache links every snapshot file to its blobs).
fn inside<'a>(index: &Path, name: &'a str) -> Result<&'a Path> {
    let path = Path::new(name);
    let normal = |c: Component| matches!(c, Component::Normal(_) | Component::CurDir);
    if path.components().all(normal) && path.components().any(|c| c != Component::CurDir) {
        return Ok(path);
    }
    Err(Error::checkpoint(format!(
        "{}: shard {name:?} is not a relative path inside the checkpoint directory \
         (absolute paths and .. are refused)",
        index.display()
    )))
}

/// How many tensors the checkpoint in `dir` holds, from the safetensors headers (no tensor
/// data is read): what bounds the sizes config.json may ask for.
pub fn count(dir: &Path) -> Result<usize> {
    let files = files(dir)?;
    let mut total = 0usize;
    for (_, shard) in &files.shards {
        let bytes = map_shard(shard, files.index.is_some())?;
        total += parse(shard, &bytes)?.len();
    }
    Ok(total)
}

/// What the model expects: each tensor's shape by checkpoint name, which other names a
/// checkpoint may carry without them being used (a tied `lm_head.weight`, RoPE buffers), and
/// what the shapes come from, for messages ("this model's config.json").
pub struct Expected<'a> {
    pub shapes: &'a [(String, Vec<i64>)],
    pub tolerated: &'a dyn Fn(&str) -> bool,
    pub source: &'a str,
}

/// The tensors of the checkpoint in `dir`, by name, converted to `kind` (None: the stored dtype
/// of the first tensor read) on `device`; and the kind used.
pub fn read(
    dir: &Path,
    expected: &Expected,
    kind: Option<Kind>,
    device: Device,
) -> Result<(HashMap<String, Tensor>, Kind)> {
    read_files(dir, files(dir)?, expected, kind, device)
}

/// [`read`] of one safetensors file (a PEFT adapter's).
pub fn read_file(
    file: &Path,
    expected: &Expected,
    kind: Option<Kind>,
    device: Device,
) -> Result<(HashMap<String, Tensor>, Kind)> {
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    let files = Files {
        shards: vec![(name.into_owned(), file.to_path_buf())],
        index: None,
    };
    read_files(file, files, expected, kind, device)
}

fn read_files(
    dir: &Path,
    files: Files,
    expected: &Expected,
    kind: Option<Kind>,
    device: Device,
) -> Result<(HashMap<String, Tensor>, Kind)> {
    let shapes: HashMap<&str, &Vec<i64>> = expected
        .shapes
        .iter()
        .map(|(n, s)| (n.as_str(), s))
        .collect();
    let mut out = HashMap::new();
    let mut kind = kind;
    for (shard_name, shard) in &files.shards {
        let bytes = map_shard(shard, files.index.is_some())?;
        let st = parse(shard, &bytes)?;
        if let Some(index) = &files.index {
            check_index(index, (shard_name, shard), &st)?;
        }
        for (name, view) in st.tensors() {
            let Some(shape) = shapes.get(name.as_str()) else {
                if (expected.tolerated)(&name) {
                    continue;
                }
                return Err(Error::checkpoint(format!(
                    "{}: unexpected tensor {name} (not a parameter of {})",
                    shard.display(),
                    expected.source
                )));
            };
            if out.contains_key(&name) {
                return Err(Error::checkpoint(format!(
                    "{}: tensor {name} appears in more than one shard",
                    shard.display()
                )));
            }
            let tensor = convert(
                &name,
                (shard, &bytes),
                &view,
                shape,
                expected.source,
                &mut kind,
                device,
            )?;
            out.insert(name, tensor);
        }
    }
    if let Some((name, _)) = expected.shapes.iter().find(|(n, _)| !out.contains_key(n)) {
        let missing = expected.shapes.len() - out.len();
        return Err(Error::checkpoint(format!(
            "{}: tensor {name} is missing ({missing} expected tensor(s) missing)",
            dir.display()
        )));
    }
    Ok((out, kind.unwrap_or(Kind::Float)))
}

fn map_shard(shard: &Path, sharded: bool) -> Result<Mmap> {
    let what = || {
        if sharded {
            format!("shard {} (listed in {INDEX})", shard.display())
        } else {
            shard.display().to_string()
        }
    };
    let file = regular_file::open(shard)
        .map_err(|e| Error::checkpoint(format!("cannot read {}: {e}", what())))?;
    // SAFETY: the mapping is read-only and private; as with every memory-mapped checkpoint
    // reader (safetensors' own, candle's), the file must not be truncated while it loads.
    unsafe { Mmap::map(&file) }
        .map_err(|e| Error::checkpoint(format!("cannot map {}: {e}", what())))
}

/// The safetensors header of a mapped shard (names, shapes, dtypes; checked against the size).
fn parse<'a>(shard: &Path, bytes: &'a Mmap) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|e| {
        Error::checkpoint(format!(
            "{} is truncated or not a safetensors file ({e})",
            shard.display()
        ))
    })
}

/// Drops the pages of `data` (a slice of `map`, already copied into a tensor) from memory: the
/// file stays on disk, and the mapping would read it again if touched.
fn release(map: &Mmap, data: &[u8]) {
    let offset = data.as_ptr() as usize - map.as_ptr() as usize;
    // SAFETY: DontNeed on a read-only private file mapping only discards clean pages, which
    // read back from the file; no reference into them is used after this.
    let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, offset, data.len()) };
}

/// Every tensor the index places in this shard must be in it.
fn check_index(
    index: &BTreeMap<String, String>,
    (file, shard): (&str, &Path),
    st: &SafeTensors,
) -> Result<()> {
    let names: BTreeSet<&String> = st.names().into_iter().collect();
    for (name, _) in index.iter().filter(|(_, f)| f.as_str() == file) {
        if !names.contains(name) {
            return Err(Error::checkpoint(format!(
                "{INDEX} places tensor {name} in {}, which does not hold it",
                shard.display()
            )));
        }
    }
    Ok(())
}

fn stored_kind(name: &str, shard: &Path, dtype: Dtype) -> Result<Kind> {
    match dtype {
        Dtype::F32 => Ok(Kind::Float),
        Dtype::BF16 => Ok(Kind::BFloat16),
        Dtype::F16 => Ok(Kind::Half),
        Dtype::F64 => Ok(Kind::Double),
        other => Err(Error::checkpoint(format!(
            "{}: tensor {name} is {other:?}; supported: F32, BF16, F16, F64",
            shard.display()
        ))),
    }
}

/// The index of the first NaN or Inf in the flat `piece`, if any. A checkpoint with them loads
/// without a word otherwise, and every log-prob and draw after it is NaN.
fn first_non_finite(piece: &Tensor) -> std::result::Result<Option<i64>, tch::TchError> {
    let bad = piece.f_isfinite()?.f_logical_not()?;
    if bad.f_any()?.f_int64_value(&[])? == 0 {
        return Ok(None);
    }
    Ok(Some(bad.f_nonzero()?.f_int64_value(&[0, 0])?))
}

/// Bytes copied out of the mapping between page releases: a 622 MB embedding is not resident
/// twice (file pages and tensor) at any moment.
const COPY_BYTES: usize = 64 << 20;

/// One stored tensor, shape-checked, as `kind` on `device`; its pages of the mapped `shard`
/// are released as they are copied.
fn convert(
    name: &str,
    (shard, map): (&Path, &Mmap),
    view: &TensorView,
    shape: &[i64],
    source: &str,
    kind: &mut Option<Kind>,
    device: Device,
) -> Result<Tensor> {
    let stored: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    if stored != shape {
        return Err(Error::checkpoint(format!(
            "{}: tensor {name} has shape {stored:?}; {source} needs {shape:?}",
            shard.display()
        )));
    }
    let from = stored_kind(name, shard, view.dtype())?;
    let to = *kind.get_or_insert(from);
    let torch_error = |e: tch::TchError| {
        Error::checkpoint(format!(
            "{}: tensor {name}: {}",
            shard.display(),
            torch_message(&e)
        ))
    };
    let cpu = Tensor::f_empty(shape, (from, Device::Cpu)).map_err(torch_error)?;
    let flat = cpu.f_view([-1]).map_err(torch_error)?;
    let (data, elem) = (view.data(), from.elt_size_in_bytes());
    for start in (0..data.len()).step_by(COPY_BYTES) {
        let bytes = &data[start..data.len().min(start + COPY_BYTES)];
        let count = (bytes.len() / elem) as i64;
        let piece = Tensor::f_from_data_size(bytes, &[count], from).map_err(torch_error)?;
        if let Some(i) = first_non_finite(&piece).map_err(torch_error)? {
            return Err(Error::checkpoint(format!(
                "{}: tensor {name} holds NaN or Inf (element {} of {shape:?}, flattened)",
                shard.display(),
                (start / elem) as i64 + i
            )));
        }
        tch::no_grad(|| flat.narrow(0, (start / elem) as i64, count).f_copy_(&piece))
            .map_err(torch_error)?;
        release(map, bytes);
    }
    cpu.f_to_device_(device, to, false, false)
        .map_err(torch_error)
}
