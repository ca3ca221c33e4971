//! The `tokenizer.*` metadata of a written GGUF file, from the model's source:
//!
//! - a GGUF file: its `tokenizer.*` keys, copied with the gguf types llama.cpp reads them as
//!   (ids uint32, token types int32, scores float32), and an empty `tokenizer.ggml.merges` for a
//!   "gpt2" vocabulary without one (llama.cpp requires the key; gguf-py drops empty arrays);
//! - a checkpoint directory with a byte-level BPE tokenizer.json (GPT-2, SmolLM2, Llama 3,
//!   Qwen2/3): `tokenizer.ggml.model` "gpt2", the tokens by id (padded to the model's vocabulary
//!   with `[PADn]`, type unused, as llama.cpp's converter does), the merges, token types (special
//!   added tokens control, other added tokens user-defined), `tokenizer.ggml.pre` from the
//!   pre-tokenizer (llama-bpe, qwen2, smollm or gpt-2), the bos/eos/unk/pad ids and
//!   `add_bos_token` of tokenizer_config.json (false when absent) and its chat template (or
//!   chat_template.jinja);
//! - a checkpoint directory with a SentencePiece-style BPE tokenizer.json (Llama 2, Mistral:
//!   byte fallback, U+2581 for spaces): `tokenizer.ggml.model` "llama" (vocab_sentencepiece.rs);
//! - a directory without tokenizer.json: `tokenizer.ggml.model` "none" (llama.cpp's vocabulary
//!   type for models that take token ids only).
//!
//! Another tokenizer.json (WordPiece, Unigram, word-level) is refused by name.

use super::reader::{Gguf, Value};
use super::writer::Meta;
use crate::error::{Error, Result};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::Path;

pub(super) const NORMAL: i32 = 1;
pub(super) const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The tokenizer metadata for a model loaded from `source` with `vocab` embedding rows.
pub fn metadata(source: &Path, vocab: i64) -> Result<Vec<(String, Meta)>> {
    if source.is_file() {
        return from_gguf(&Gguf::open(source)?);
    }
    let file = source.join("tokenizer.json");
    if !file.is_file() {
        return Ok(vec![(
            "tokenizer.ggml.model".into(),
            Meta::Str("none".into()),
        )]);
    }
    from_directory(source, vocab)
}

fn from_gguf(g: &Gguf) -> Result<Vec<(String, Meta)>> {
    let mut out = Vec::new();
    for (key, v) in g
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
    {
        let meta = convert(key, v).ok_or_else(|| {
            Error::model(format!(
                "{}: metadata {key} = {} cannot be written back",
                g.path.display(),
                short(v)
            ))
        })?;
        out.push((key.clone(), meta));
    }
    // llama.cpp refuses a BPE vocabulary without the merges key; gguf-py leaves out an empty one.
    let bpe = g.string("tokenizer.ggml.model")? == Some("gpt2");
    if bpe && g.get("tokenizer.ggml.merges").is_none() {
        out.push(("tokenizer.ggml.merges".into(), Meta::Strs(Vec::new())));
    }
    Ok(out)
}

fn short(v: &Value) -> String {
    let s = format!("{v:?}");
    s.chars().take(80).collect()
}

/// A read metadata value as llama.cpp's type for `key`.
fn convert(key: &str, v: &Value) -> Option<Meta> {
    Some(match v {
        Value::Str(s) => Meta::Str(s.clone()),
        Value::Bool(b) => Meta::Bool(*b),
        Value::Float(x) => Meta::F32(*x as f32),
        Value::Int(n) if *n >= 0 && *n <= u32::MAX as i64 => Meta::U32(*n as u32),
        Value::Int(n) => Meta::I32(i32::try_from(*n).ok()?),
        Value::BigUint(_) => return None,
        Value::Array(items) if key.ends_with("scores") => Meta::F32s(
            items
                .iter()
                .map(|i| match i {
                    Value::Float(x) => Some(*x as f32),
                    Value::Int(n) => Some(*n as f32),
                    _ => None,
                })
                .collect::<Option<_>>()?,
        ),
        // An empty array keeps the element type llama.cpp reads for its key (merges: strings).
        Value::Array(items) if items.is_empty() && !key.ends_with("token_type") => {
            Meta::Strs(Vec::new())
        }
        Value::Array(items) if items.iter().all(|i| matches!(i, Value::Int(_))) => Meta::I32s(
            items
                .iter()
                .map(|i| match i {
                    Value::Int(n) => i32::try_from(*n).ok(),
                    _ => None,
                })
                .collect::<Option<_>>()?,
        ),
        Value::Array(items) => Meta::Strs(
            items
                .iter()
                .map(|i| match i {
                    Value::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect::<Option<_>>()?,
        ),
    })
}

pub(super) fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::model(format!("{}: {e}", path.display())))
}

pub(super) fn refuse(path: &Path, what: &str) -> Error {
    Error::unsupported(format!(
        "{}: {what}; adpo writes byte-level BPE and SentencePiece-style BPE tokenizers into \
         GGUF (or copies a GGUF source's)",
        path.display()
    ))
}

fn from_directory(dir: &Path, vocab: i64) -> Result<Vec<(String, Meta)>> {
    let path = dir.join("tokenizer.json");
    let json = read_json(&path)?;
    let model = &json["model"];
    let text = json.to_string();
    let config = read_json(&dir.join("tokenizer_config.json")).unwrap_or(Json::Null);
    if model["type"] == "BPE" && !text.contains("\"ByteLevel\"") {
        return super::vocab_sentencepiece::from_directory(dir, &path, &json, &config, vocab);
    }
    if model["type"] != "BPE" {
        return Err(refuse(&path, "not a BPE tokenizer"));
    }
    let (tokens, types) = tokens(&json, vocab, &path)?;
    let merges = merges(&model["merges"]).ok_or_else(|| refuse(&path, "unreadable merges"))?;
    let mut out = vec![
        ("tokenizer.ggml.model".into(), Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Meta::Str(pre(&json).into())),
    ];
    out.extend(special_ids_and_template(dir, &config, &tokens));
    out.push(("tokenizer.ggml.tokens".into(), Meta::Strs(tokens)));
    out.push(("tokenizer.ggml.token_type".into(), Meta::I32s(types)));
    out.push(("tokenizer.ggml.merges".into(), Meta::Strs(merges)));
    Ok(out)
}

/// The bos/eos/unk/pad ids of tokenizer_config.json's tokens, `add_bos_token` (false when
/// absent) and the chat template.
pub(super) fn special_ids_and_template(
    dir: &Path,
    config: &Json,
    tokens: &[String],
) -> Vec<(String, Meta)> {
    let mut out = Vec::new();
    let ids: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();
    for (name, key) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        let content = match &config[name] {
            Json::String(s) => Some(s.as_str()),
            other => other["content"].as_str(),
        };
        if let Some(id) = content.and_then(|c| ids.get(c)) {
            out.push((format!("tokenizer.ggml.{key}"), Meta::U32(*id)));
        }
    }
    let add_bos = config["add_bos_token"].as_bool().unwrap_or(false);
    out.push(("tokenizer.ggml.add_bos_token".into(), Meta::Bool(add_bos)));
    if let Some(template) = chat_template(dir, config) {
        out.push(("tokenizer.chat_template".into(), Meta::Str(template)));
    }
    out
}

/// Tokens by id (the model's vocabulary plus added tokens, padded to `vocab` rows) and types.
pub(super) fn tokens(json: &Json, vocab: i64, path: &Path) -> Result<(Vec<String>, Vec<i32>)> {
    let mut by_id: HashMap<u64, (String, i32)> = HashMap::new();
    if let Some(map) = json["model"]["vocab"].as_object() {
        for (token, id) in map {
            if let Some(id) = id.as_u64() {
                by_id.insert(id, (token.clone(), NORMAL));
            }
        }
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) {
            let kind = if added["special"] == true {
                CONTROL
            } else {
                USER_DEFINED
            };
            by_id.insert(id, (content.to_string(), kind));
        }
    }
    let n = by_id
        .keys()
        .max()
        .map_or(0, |m| m + 1)
        .max(vocab.max(0) as u64);
    if n > vocab as u64 {
        return Err(Error::model(format!(
            "{}: token id {} is outside the model's {vocab} embedding rows",
            path.display(),
            n - 1
        )));
    }
    Ok((0..n)
        .map(|i| {
            by_id
                .remove(&i)
                .unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED))
        })
        .unzip())
}

/// Merges as "a b" strings (tokenizer.json holds them as strings or as pairs).
pub(super) fn merges(json: &Json) -> Option<Vec<String>> {
    json.as_array()?
        .iter()
        .map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(pair) if pair.len() == 2 => {
                Some(format!("{} {}", pair[0].as_str()?, pair[1].as_str()?))
            }
            _ => None,
        })
        .collect()
}

/// llama.cpp's pre-tokenizer name for the tokenizer.json's pre-tokenizer.
fn pre(json: &Json) -> &'static str {
    use crate::tokenizer::gguf::{LLAMA3_SPLIT, QWEN2_SPLIT};
    let pre = json["pre_tokenizer"].to_string();
    let has = |regex: &str| pre.contains(&Json::String(regex.into()).to_string());
    if has(LLAMA3_SPLIT) {
        "llama-bpe"
    } else if has(QWEN2_SPLIT) {
        "qwen2"
    } else if pre.contains("\"Digits\"") {
        "smollm"
    } else {
        "gpt-2"
    }
}

fn chat_template(dir: &Path, config: &Json) -> Option<String> {
    if let Some(t) = config["chat_template"].as_str() {
        return Some(t.to_string());
    }
    std::fs::read_to_string(dir.join("chat_template.jinja")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_arrays_keep_llama_cpp_types() {
        let empty = Value::Array(Vec::new());
        assert_eq!(
            convert("tokenizer.ggml.merges", &empty),
            Some(Meta::Strs(vec![]))
        );
        assert_eq!(
            convert("tokenizer.ggml.token_type", &empty),
            Some(Meta::I32s(vec![]))
        );
        assert_eq!(
            convert("tokenizer.ggml.scores", &Value::Array(vec![Value::Int(-1)])),
            Some(Meta::F32s(vec![-1.0]))
        );
        assert_eq!(
            convert("tokenizer.ggml.eos_token_id", &Value::Int(2)),
            Some(Meta::U32(2))
        );
    }
}
