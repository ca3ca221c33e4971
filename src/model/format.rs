//! What a model path holds: a directory is a Hugging Face checkpoint (native/); a file is told
//! from its first bytes before libtorch sees it: a TorchScript archive loads in a build with the
//! `torchscript` feature (a default build says how to get one); a safetensors
//! file, a `torch.save` pickle or anything else is named as such (libtorch would only say
//! "PytorchStreamReader failed locating file constants.pkl").

use super::native::NativeLm;
use super::options::LoadOptions;
use super::CausalLm;
use crate::error::{Error, Result, Status};
use std::path::Path;

/// What the bytes of a file are.
#[derive(Debug, PartialEq)]
enum FileKind {
    TorchScript,
    /// A zip archive without TorchScript code (`torch.save` writes these).
    TorchPickleZip,
    /// A pre-1.6 `torch.save` file (a bare pickle stream).
    Pickle,
    Safetensors,
    Unknown,
}

fn sniff(bytes: &[u8]) -> FileKind {
    if bytes.starts_with(b"PK\x03\x04") {
        // torch.jit.save archives hold the code's constants; torch.save archives do not.
        let has = |name: &[u8]| bytes.windows(name.len()).any(|w| w == name);
        return if has(b"constants.pkl") {
            FileKind::TorchScript
        } else {
            FileKind::TorchPickleZip
        };
    }
    if bytes.first() == Some(&0x80) {
        return FileKind::Pickle;
    }
    // safetensors: an 8-byte little-endian header length, then a JSON object.
    if bytes.len() > 9 && bytes[8] == b'{' {
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        if n >= 2 && n <= bytes.len() as u64 - 8 {
            return FileKind::Safetensors;
        }
    }
    FileKind::Unknown
}

const SUPPORTED: &str =
    "adpo loads Hugging Face checkpoint directories (config.json + safetensors: llama, \
     mistral, qwen2, qwen3), GGUF files (llama, qwen2, qwen3), and TorchScript files \
     (torch.jit.script(model).save(path)) in a build with the torchscript feature";

/// Whether the file begins with GGUF's magic (read without reading the rest: GGUF files are
/// large, and mapped by their reader).
fn starts_like_gguf(path: &Path) -> Result<bool> {
    use std::io::Read;
    let io = |e: std::io::Error| {
        Error::new(
            Status::Io,
            format!("cannot read model file {}: {e}", path.display()),
        )
    };
    let mut head = Vec::with_capacity(4);
    crate::regular_file::open(path)
        .map_err(io)?
        .take(4)
        .read_to_end(&mut head)
        .map_err(io)?;
    Ok(super::gguf::is_gguf(&head))
}

/// Opens the causal LM at `path`.
pub fn open(path: &Path, options: &LoadOptions) -> Result<Box<dyn CausalLm>> {
    if path.is_dir() {
        return Ok(Box::new(NativeLm::open(path, options)?));
    }
    if !path.is_file() {
        return Err(Error::model(format!(
            "model file not found: {}",
            path.display()
        )));
    }
    // By name too: a .gguf file with another magic is then named as a broken GGUF file.
    if starts_like_gguf(path)? || path.extension().is_some_and(|e| e == "gguf") {
        return Ok(Box::new(super::gguf::open(path, options)?));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        Error::new(
            Status::Io,
            format!("cannot read model file {}: {e}", path.display()),
        )
    })?;
    let what = match sniff(&bytes) {
        FileKind::TorchScript => return torchscript(path, bytes, options),
        FileKind::TorchPickleZip | FileKind::Pickle => {
            "a torch.save pickle (weights or a whole module, not TorchScript)"
        }
        FileKind::Safetensors => {
            "a safetensors weights file; pass the checkpoint directory that holds it with its \
             config.json"
        }
        FileKind::Unknown => "neither a TorchScript archive nor a checkpoint",
    };
    Err(Error::model(format!(
        "cannot load {}: it is {what}; {SUPPORTED}",
        path.display()
    )))
}

/// A TorchScript archive, in a build with the `torchscript` feature.
#[cfg(feature = "torchscript")]
fn torchscript(path: &Path, bytes: Vec<u8>, options: &LoadOptions) -> Result<Box<dyn CausalLm>> {
    use super::options::Dtype;
    if options.has_adapters() {
        return Err(Error::unsupported(format!(
            "{}: LoRA adapters (\"lora\", \"adapter\") go on checkpoint directories, not \
             TorchScript modules",
            path.display()
        )));
    }
    if options.dtype != Dtype::Auto {
        return Err(Error::unsupported(format!(
            "{}: a TorchScript module loads in its own dtype; dtype {:?} is for checkpoint \
             directories (use \"auto\")",
            path.display(),
            options.dtype
        )));
    }
    let lm = super::torchscript::TorchScriptLm::from_bytes(path, bytes, options.device)?;
    Ok(Box::new(lm))
}

/// A default build: TorchScript (deprecated in PyTorch 2.11) is an optional feature.
#[cfg(not(feature = "torchscript"))]
fn torchscript(path: &Path, _bytes: Vec<u8>, _options: &LoadOptions) -> Result<Box<dyn CausalLm>> {
    Err(Error::unsupported(format!(
        "{} is a TorchScript file, and this adpo was built without TorchScript support: build \
         it with `cargo build --release --features torchscript` to load TorchScript files, or \
         save the model as a Hugging Face checkpoint directory (save_pretrained)",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_tells_the_formats_apart() {
        assert_eq!(
            sniff(b"PK\x03\x04....archive/constants.pkl...."),
            FileKind::TorchScript
        );
        assert_eq!(
            sniff(b"PK\x03\x04....archive/data.pkl...."),
            FileKind::TorchPickleZip
        );
        assert_eq!(sniff(b"\x80\x02}q\x00."), FileKind::Pickle);
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        assert_eq!(sniff(&st), FileKind::Safetensors);
        assert_eq!(sniff(b"hello world, not a model"), FileKind::Unknown);
        assert_eq!(sniff(b""), FileKind::Unknown);
    }
}
