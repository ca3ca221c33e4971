//! A tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata, as transformers' GGUF
//! conversion builds it (integrations/gguf/gguf_tokenizer_mapping.py), written as the
//! tokenizer.json that conversion would save, so the same loader and checks run on it.
//!
//! gpt2-style byte-level BPE (`tokenizer.ggml.model` = "gpt2": SmolLM2, Llama 3, Qwen2/3):
//! tokens as the vocabulary (respelled in the byte alphabet when a token is not), the merges,
//! a byte-level pre-tokenizer (or the split regex of `tokenizer.ggml.pre` for the families
//! transformers knows), control tokens (token type 3) as special added tokens, user-defined
//! ones (type 4) as plain added tokens, and BOS/EOS added by `encode` only when
//! `tokenizer.ggml.add_bos_token` / `add_eos_token` say so. llama-style SentencePiece
//! vocabularies (`tokenizer.ggml.model` = "llama") are gguf_sentencepiece.rs's; they add BOS
//! unless `add_bos_token` is false. Other models are refused by name.
//!
//! The chat template is `tokenizer.chat_template`; the named special tokens and EOS id are those
//! the `tokenizer.ggml.*_token_id` keys name.

use super::files::{CheckpointText, SpecialToken};
use crate::error::{Error, Result};
use crate::model::gguf::reader::Gguf;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

pub(crate) const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values whose split regex transformers sets (its
/// GGUF_PRE_TOKENIZER_SPLITS, the llama3 and qwen2 families); others keep GPT-2's ByteLevel split.
const SPLITS: &[(&str, &str)] = &[
    ("llama3", LLAMA3_SPLIT),
    ("llama-v3", LLAMA3_SPLIT),
    ("llama-bpe", LLAMA3_SPLIT),
    ("falcon3", LLAMA3_SPLIT),
    ("smaug-bpe", LLAMA3_SPLIT),
    ("dbrx", LLAMA3_SPLIT),
    ("qwen2", QWEN2_SPLIT),
    ("deepseek-r1-qwen", QWEN2_SPLIT),
    ("megrez", QWEN2_SPLIT),
];

pub(super) fn model_error(g: &Gguf, what: impl std::fmt::Display) -> Error {
    Error::model(format!("{}: tokenizer: {what}", g.path.display()))
}

/// The tokenizer.json text and the checkpoint text (special tokens, template, EOS ids) of the
/// GGUF file at `path`.
pub fn read(path: &Path) -> Result<(Vec<u8>, CheckpointText)> {
    let g = Gguf::open(path)?;
    let kind = g.string("tokenizer.ggml.model")?;
    let sentencepiece = match kind {
        Some("gpt2") => false,
        Some("llama") => true,
        _ => {
            return Err(Error::unsupported(format!(
                "{}: tokenizer.ggml.model = {kind:?}; adpo builds GGUF tokenizers of models \
                 \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece BPE)",
                path.display()
            )))
        }
    };
    let tokens = g
        .strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| model_error(&g, "no tokenizer.ggml.tokens"))?;
    let types = g.ints("tokenizer.ggml.token_type")?.unwrap_or_default();
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(model_error(
            &g,
            format!("{} token types for {} tokens", types.len(), tokens.len()),
        ));
    }
    let special = special_tokens(&g, &tokens)?;
    let json = tokenizer_json(&g, sentencepiece, &tokens, &types, &special)?;
    let eos = g.uint("tokenizer.ggml.eos_token_id")?;
    let text = CheckpointText {
        tokenizer_json: path.to_path_buf(),
        special,
        templates: super::files::Templates {
            default: g.string("tokenizer.chat_template")?.map(str::to_string),
            named: BTreeMap::new(),
        },
        eos_ids: eos.map(|id| vec![id as i64]),
    };
    Ok((json.to_string().into_bytes(), text))
}

/// bos/eos/unk/pad tokens from their `tokenizer.ggml.*_token_id` keys.
fn special_tokens(g: &Gguf, tokens: &[&str]) -> Result<BTreeMap<String, SpecialToken>> {
    let mut out = BTreeMap::new();
    for (name, key) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        let Some(id) = g.uint(&format!("tokenizer.ggml.{key}"))? else {
            continue;
        };
        let content = usize::try_from(id)
            .ok()
            .and_then(|i| tokens.get(i))
            .ok_or_else(|| {
                model_error(g, format!("tokenizer.ggml.{key} = {id} is not a token id"))
            })?;
        let token = SpecialToken {
            content: content.to_string(),
            lstrip: false,
            rstrip: false,
            single_word: false,
            normalized: false,
        };
        out.insert(name.to_string(), token);
    }
    Ok(out)
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`): printable bytes stand for themselves,
/// the others for the characters from U+0100 on.
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        table[b as usize] = if printable {
            b as char
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below U+0200")
        };
    }
    table
}

fn tokenizer_json(
    g: &Gguf,
    sentencepiece: bool,
    tokens: &[&str],
    types: &[i64],
    special: &BTreeMap<String, SpecialToken>,
) -> Result<Value> {
    let (model, pre_tokenizer, decoder) = match sentencepiece {
        true => super::gguf_sentencepiece::parts(g, tokens)?,
        false => byte_level_parts(g, tokens)?,
    };
    let alphabet = byte_alphabet();
    // In a byte-level vocabulary every real token is spelled in the byte alphabet.
    let spelled = |t: &str| sentencepiece || t.chars().all(|c| alphabet.contains(&c));
    let added = added_tokens(tokens, types, &model["vocab"], spelled);
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor(g, special, sentencepiece)?,
        "decoder": decoder, "model": model,
    }))
}

/// The byte-level BPE `model`, `pre_tokenizer` and `decoder` of the vocabulary `tokens`.
fn byte_level_parts(g: &Gguf, tokens: &[&str]) -> Result<(Value, Value, Value)> {
    let alphabet = byte_alphabet();
    let mut vocab = Map::new();
    for (id, t) in tokens.iter().enumerate() {
        let key = match t.chars().all(|c| alphabet.contains(&c)) {
            true => t.to_string(),
            false => t.bytes().map(|b| alphabet[b as usize]).collect(),
        };
        vocab.insert(key, json!(id));
    }
    let merges = g
        .strings("tokenizer.ggml.merges")?
        .unwrap_or_default()
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) if !b.contains(' ') => Ok(json!([a, b])),
            _ => Err(model_error(g, format!("merge {m:?} is not two tokens"))),
        })
        .collect::<Result<Vec<_>>>()?;
    let byte_level = |prefix: bool, regex: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": true,
               "use_regex": regex})
    };
    let pre = g.string("tokenizer.ggml.pre")?;
    let pre_tokenizer = match SPLITS.iter().find(|(p, _)| Some(*p) == pre) {
        Some((_, regex)) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated",
             "invert": false},
            byte_level(false, false)]}),
        None => byte_level(false, true),
    };
    let model = json!({"type": "BPE", "dropout": null, "unk_token": null,
        "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
        "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges});
    Ok((model, pre_tokenizer, byte_level(true, true)))
}

/// Control tokens spelled in the byte alphabet (others are llama.cpp mislabels, which
/// transformers skips) as special; user-defined tokens as plain added tokens.
fn added_tokens(
    tokens: &[&str],
    types: &[i64],
    vocab: &Value,
    spelled: impl Fn(&str) -> bool,
) -> Vec<Value> {
    let entry = |id: usize, t: &str, special: bool| {
        json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": special})
    };
    let mut added = Vec::new();
    for (id, (t, ty)) in tokens.iter().zip(types).enumerate() {
        if *ty == CONTROL && spelled(t) {
            added.push(entry(id, t, true));
        }
    }
    for (id, (t, ty)) in tokens.iter().zip(types).enumerate() {
        if *ty == USER_DEFINED && vocab.get(*t).is_some() {
            added.push(entry(id, t, false));
        }
    }
    added
}

/// BOS and EOS around each sequence as `tokenizer.ggml.add_bos_token` / `add_eos_token` ask
/// (when absent: BOS for SentencePiece vocabularies, as llama.cpp does, none for GPT-2 ones), as
/// transformers' update_post_processor writes it.
fn post_processor(
    g: &Gguf,
    special: &BTreeMap<String, SpecialToken>,
    sentencepiece: bool,
) -> Result<Value> {
    let mut specials = Map::new();
    let mut piece = |flag: &str, name: &str, type_id: u32| -> Result<Option<Value>> {
        let default = sentencepiece && flag == "add_bos_token";
        let explicit = g.bool(&format!("tokenizer.ggml.{flag}"))?;
        if !explicit.unwrap_or(default) {
            return Ok(None);
        }
        let key = format!("tokenizer.ggml.{}_id", name);
        let (Some(t), Some(id)) = (special.get(name), g.uint(&key)?) else {
            // Only a flag the file sets asks for the token; the default asks only if there is one.
            return match explicit {
                Some(_) => Err(model_error(g, format!("{flag} is set, but {key} is not"))),
                None => Ok(None),
            };
        };
        specials.insert(
            t.content.clone(),
            json!({"id": t.content, "ids": [id], "tokens": [t.content]}),
        );
        Ok(Some(
            json!({"SpecialToken": {"id": t.content, "type_id": type_id}}),
        ))
    };
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let (bos0, eos0) = (
        piece("add_bos_token", "bos_token", 0)?,
        piece("add_eos_token", "eos_token", 0)?,
    );
    let (bos1, eos1) = (
        piece("add_bos_token", "bos_token", 1)?,
        piece("add_eos_token", "eos_token", 1)?,
    );
    let single: Vec<Value> = [bos0.clone(), Some(seq("A", 0)), eos0.clone()]
        .into_iter()
        .flatten()
        .collect();
    let pair: Vec<Value> = [bos0, Some(seq("A", 0)), eos0, bos1, Some(seq("B", 1)), eos1]
        .into_iter()
        .flatten()
        .collect();
    Ok(
        json!({"type": "TemplateProcessing", "single": single, "pair": pair,
              "special_tokens": specials}),
    )
}
