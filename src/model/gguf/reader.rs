//! The GGUF container (llama.cpp's `gguf.h`, versions 2 and 3): a header, typed metadata
//! key/values, tensor descriptions, then aligned tensor data. Written by hand over a read-only
//! memory map because every count and length in the file comes from a stranger: each is checked
//! against the bytes that remain before anything is allocated for it, array elements and tensors
//! have fixed caps, and every offset is checked to lie inside the file. Errors are
//! ADPO_STATUS_CHECKPOINT and name the byte offset and what was being read.
//!
//! Only the layout is read here; what the metadata means is names.rs's business, and the tensor
//! types dequant.rs's.

use super::dequant::GgmlType;
use crate::error::{Error, Result};
use crate::regular_file;
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 4] = b"GGUF";
/// Array elements of all metadata arrays together: the largest real vocabularies (262k tokens
/// with scores, types and merges) use about a million; each element costs ~32 bytes decoded.
const MAX_ARRAY_ELEMENTS: u64 = 1 << 22;
/// Tensors in one file: the largest models have a few thousand.
const MAX_TENSORS: u64 = 1 << 20;
/// ggml tensors have at most 4 dimensions (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are allowed by the format; deeper nesting than this is refused.
const MAX_NESTING: u32 = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    /// uint64 values above i64::MAX.
    BigUint(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

/// One tensor's description: its name, ggml dimensions (innermost first) and type.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ne[0], ne[1], ...: ne[0] is the row length (torch's last dimension).
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// From the start of the data section.
    pub offset: u64,
}

/// An opened GGUF file: its metadata and tensor list, and the mapped bytes.
pub struct Gguf {
    pub path: PathBuf,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
    map: Mmap,
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::checkpoint(format!(
        "{}: not a readable GGUF file: {what}",
        path.display()
    ))
}

/// Reads fields from the mapped bytes, never past their end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Array elements decoded so far (against MAX_ARRAY_ELEMENTS).
    elements: u64,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(corrupt(
                self.path,
                format!(
                    "truncated: {what} needs {n} bytes at offset {}, and the file ends at {}",
                    self.pos,
                    self.bytes.len()
                ),
            ));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().expect("N bytes"))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed string; `what` names it in messages.
    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            corrupt(
                self.path,
                format!(
                    "{what} (at offset {at}) is not UTF-8 (invalid byte at {})",
                    e.utf8_error().valid_up_to()
                ),
            )
        })
    }

    /// A count of items that each take at least `min_size` bytes: more than the rest of the
    /// file could hold is refused before anything is allocated for them.
    fn count(&mut self, what: &str, min_size: u64, cap: u64) -> Result<u64> {
        let at = self.pos;
        let n = self.u64(what)?;
        let fits = n
            .checked_mul(min_size)
            .is_some_and(|b| b <= self.remaining());
        if !fits || n > cap {
            return Err(corrupt(
                self.path,
                format!(
                    "{what} = {n} (at offset {at}) is more than the file can hold ({} bytes \
                     remain) or than adpo's limit {cap}",
                    self.remaining()
                ),
            ));
        }
        Ok(n)
    }
}

/// Size in the file of a scalar metadata type (None: string or array, of variable size).
fn scalar_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

impl Cursor<'_> {
    /// One value of metadata type `kind` (gguf_type: 0 uint8 ... 12 float64).
    fn value(&mut self, kind: u32, key: &str, depth: u32) -> Result<Value> {
        let int = |b: &[u8]| -> i64 {
            match (kind, b.len()) {
                (0, _) => b[0] as i64,
                (1, _) => b[0] as i8 as i64,
                (2, _) => u16::from_le_bytes([b[0], b[1]]) as i64,
                (3, _) => i16::from_le_bytes([b[0], b[1]]) as i64,
                (4, _) => u32::from_le_bytes(b.try_into().expect("4")) as i64,
                (5, _) => i32::from_le_bytes(b.try_into().expect("4")) as i64,
                _ => i64::from_le_bytes(b.try_into().expect("8")),
            }
        };
        Ok(match kind {
            8 => Value::Str(self.string(&format!("metadata string {key:?}"))?),
            9 => self.array_value(key, depth)?,
            6 => Value::Float(f32::from_le_bytes(self.array(key)?) as f64),
            12 => Value::Float(f64::from_le_bytes(self.array(key)?)),
            7 => match self.take(1, key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(corrupt(self.path, format!("{key:?}: bool byte {b}"))),
            },
            10 => match self.u64(key)? {
                v if v > i64::MAX as u64 => Value::BigUint(v),
                v => Value::Int(v as i64),
            },
            k => match scalar_size(k) {
                Some(n) => Value::Int(int(self.take(n, key)?)),
                None => {
                    let at = self.pos.saturating_sub(4);
                    return Err(corrupt(
                        self.path,
                        format!("metadata {key:?} has unknown value type {k} (at offset {at})"),
                    ));
                }
            },
        })
    }

    fn array_value(&mut self, key: &str, depth: u32) -> Result<Value> {
        if depth >= MAX_NESTING {
            return Err(corrupt(
                self.path,
                format!("metadata {key:?}: arrays nested deeper than {MAX_NESTING}"),
            ));
        }
        let kind = self.u32(key)?;
        // Strings take at least their 8-byte length; arrays their type and count.
        let min_size = scalar_size(kind).unwrap_or(if kind == 8 { 8 } else { 12 });
        let left = MAX_ARRAY_ELEMENTS - self.elements;
        let n = self.count(&format!("length of metadata array {key:?}"), min_size, left)?;
        self.elements += n;
        let items = (0..n)
            .map(|_| self.value(kind, key, depth + 1))
            .collect::<Result<Vec<_>>>()?;
        Ok(Value::Array(items))
    }

    fn tensor_info(&mut self, index: u64) -> Result<TensorInfo> {
        let name = self.string(&format!("name of tensor {index}"))?;
        let n_dims = self.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(corrupt(
                self.path,
                format!("tensor {name} has {n_dims} dimensions (ggml allows 1 to {MAX_DIMS})"),
            ));
        }
        let dims = (0..n_dims)
            .map(|_| self.u64(&name))
            .collect::<Result<Vec<_>>>()?;
        Ok(TensorInfo {
            ggml_type: self.u32(&name)?,
            offset: self.u64(&name)?,
            name,
            dims,
        })
    }
}

/// Whether the first bytes are a GGUF file's.
pub fn is_gguf(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

impl Gguf {
    /// Maps `path` and reads its header, metadata and tensor descriptions (no tensor data).
    pub fn open(path: &Path) -> Result<Gguf> {
        let file = regular_file::open(path)
            .map_err(|e| Error::io(format!("cannot read {}: {e}", path.display())))?;
        // SAFETY: a read-only private mapping; as with every memory-mapped model reader
        // (safetensors', llama.cpp's), the file must not be truncated while it loads.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| Error::io(format!("cannot map {}: {e}", path.display())))?;
        let mut c = Cursor {
            bytes: &map,
            pos: 0,
            path,
            elements: 0,
        };
        let magic = c.array::<4>("the magic")?;
        if &magic != MAGIC {
            return Err(corrupt(
                path,
                format!("magic \"{}\", expected \"GGUF\"", magic.escape_ascii()),
            ));
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(corrupt(
                path,
                format!("GGUF version {version}; adpo reads versions 2 and 3"),
            ));
        }
        // A tensor description takes at least 32 bytes, a key/value at least 13.
        let n_tensors = c.count("tensor count", 32, MAX_TENSORS)?;
        let n_kv = c.count("metadata count", 13, MAX_ARRAY_ELEMENTS)?;
        let metadata = read_metadata(&mut c, n_kv)?;
        let tensors = read_tensor_infos(&mut c, n_tensors)?;
        let alignment = alignment(path, &metadata)?;
        let mut data_start = c.pos.div_ceil(alignment) * alignment;
        if data_start > map.len() {
            // Writers may leave out the padding of an empty data section (no tensors).
            if !tensors.is_empty() {
                return Err(corrupt(path, "truncated before its tensor data"));
            }
            data_start = map.len();
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            metadata,
            tensors,
            data_start,
            map,
        })
    }

    /// The `nbytes` of tensor `info`'s data, checked to lie inside the file and aligned.
    pub fn tensor_data(&self, info: &TensorInfo, nbytes: u64) -> Result<&[u8]> {
        let alignment = alignment(&self.path, &self.metadata)? as u64;
        let data_len = (self.map.len() - self.data_start) as u64;
        let end = info.offset.checked_add(nbytes);
        if info.offset % alignment != 0 || end.is_none_or(|e| e > data_len) {
            return Err(corrupt(
                &self.path,
                format!(
                    "tensor {} lies at data offset {} with {nbytes} bytes, outside the {data_len} \
                     bytes of tensor data (or not aligned to {alignment})",
                    info.name, info.offset
                ),
            ));
        }
        let start = self.data_start + info.offset as usize;
        Ok(&self.map[start..start + nbytes as usize])
    }
}

fn read_metadata(c: &mut Cursor, n_kv: u64) -> Result<BTreeMap<String, Value>> {
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key {i}"))?;
        let kind = c.u32(&key)?;
        let value = c.value(kind, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(corrupt(
                c.path,
                format!("metadata key {key:?} appears twice"),
            ));
        }
    }
    Ok(metadata)
}

fn read_tensor_infos(c: &mut Cursor, n: u64) -> Result<Vec<TensorInfo>> {
    let mut names = std::collections::HashSet::new();
    let mut tensors = Vec::with_capacity(n as usize);
    for i in 0..n {
        let info = c.tensor_info(i)?;
        if !names.insert(info.name.clone()) {
            return Err(corrupt(
                c.path,
                format!("tensor {} appears twice", info.name),
            ));
        }
        tensors.push(info);
    }
    Ok(tensors)
}

/// `general.alignment` (default 32): a power of two.
fn alignment(path: &Path, metadata: &BTreeMap<String, Value>) -> Result<usize> {
    match metadata.get("general.alignment") {
        None => Ok(32),
        Some(Value::Int(a)) if *a > 0 && *a <= 1 << 20 && (*a as u64).is_power_of_two() => {
            Ok(*a as usize)
        }
        Some(other) => Err(corrupt(
            path,
            format!("general.alignment = {other:?}; it must be a power of two up to 2^20"),
        )),
    }
}

/// Typed access to metadata, with messages that name the key.
impl Gguf {
    fn wrong(&self, key: &str, v: &Value, expected: &str) -> Error {
        Error::model(format!(
            "{}: metadata {key} = {v:?}; expected {expected}",
            self.path.display()
        ))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A non-negative integer.
    pub fn uint(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Int(v)) if *v >= 0 => Ok(Some(*v as u64)),
            Some(v) => Err(self.wrong(key, v, "a non-negative integer")),
        }
    }

    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Float(v)) => Ok(Some(*v)),
            Some(v) => Err(self.wrong(key, v, "a number")),
        }
    }

    pub fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong(key, v, "a string")),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(key, v, "true or false")),
        }
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let items = match v {
            Value::Array(items) => items,
            _ => return Err(self.wrong(key, v, "an array of strings")),
        };
        items
            .iter()
            .map(|i| match i {
                Value::Str(s) => Ok(s.as_str()),
                _ => Err(self.wrong(key, i, "a string (array element)")),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An array of numbers.
    pub fn floats(&self, key: &str) -> Result<Option<Vec<f64>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let items = match v {
            Value::Array(items) => items,
            _ => return Err(self.wrong(key, v, "an array of numbers")),
        };
        items
            .iter()
            .map(|i| match i {
                Value::Float(x) => Ok(*x),
                Value::Int(n) => Ok(*n as f64),
                _ => Err(self.wrong(key, i, "a number (array element)")),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An array of integers.
    pub fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let items = match v {
            Value::Array(items) => items,
            _ => return Err(self.wrong(key, v, "an array of integers")),
        };
        items
            .iter()
            .map(|i| match i {
                Value::Int(n) => Ok(*n),
                _ => Err(self.wrong(key, i, "an integer (array element)")),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// The type of a described tensor, or an error naming it.
pub fn tensor_type(g: &Gguf, info: &TensorInfo) -> Result<GgmlType> {
    GgmlType::from_id(info.ggml_type).map_err(|what| {
        Error::unsupported(format!(
            "{}: tensor {} has {what}",
            g.path.display(),
            info.name
        ))
    })
}

impl Gguf {
    /// Drops the pages of `data` (a slice of the mapping, already copied out) from memory: a
    /// load then holds the weights, not the weights and the file.
    pub fn release(&self, data: &[u8]) {
        let offset = data.as_ptr() as usize - self.map.as_ptr() as usize;
        // SAFETY: DontNeed on a read-only private file mapping only discards clean pages, which
        // read back from the file; no reference into them is used after this.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, data.len())
        };
    }
}
