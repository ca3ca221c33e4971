//! A checkpoint directory's SentencePiece-style BPE tokenizer.json (Llama 2, Mistral: BPE with
//! byte fallback over pieces that spell spaces U+2581) as the `tokenizer.*` metadata of a
//! "llama" GGUF vocabulary, the kind llama.cpp's converter writes from a tokenizer.model:
//!
//! - tokens by id, types: `<0xNN>` byte tokens BYTE, special added tokens CONTROL, other added
//!   tokens user-defined, the rest normal (padded to the model's rows as the BPE writer does);
//! - scores: llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined piece has
//!   the highest score, where tokenizers' BPE applies the merge of lowest rank. A piece made by
//!   merge r scores -r, so both merge in the same order; bytes, specials and single characters
//!   (never made by a merge) score 0 as in Llama 2's own tokenizer.model, and a longer piece no
//!   merge makes scores below every merge;
//! - the merges themselves too, which transformers' GGUF loader uses as they are;
//! - `add_space_prefix` from the pre-tokenizer (Metaspace's prepend scheme, or the legacy
//!   normalizer's Prepend), and the bos/eos/unk/pad ids, `add_bos_token` and chat template of
//!   tokenizer_config.json.

use super::vocab::{self, refuse, NORMAL};
use super::writer::Meta;
use crate::error::Result;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::Path;

const BYTE: i32 = 6;
/// The piece llama.cpp's "llama" vocabulary spells a space with.
const SPACE: &str = "\u{2581}";

/// The metadata of `json` (read from `path` in `dir`) for a model of `vocab` embedding rows.
pub fn from_directory(
    dir: &Path,
    path: &Path,
    json: &Json,
    config: &Json,
    vocab: i64,
) -> Result<Vec<(String, Meta)>> {
    if json["model"]["byte_fallback"] != true {
        return Err(refuse(
            path,
            "a BPE tokenizer neither byte-level nor with byte fallback",
        ));
    }
    let add_space_prefix = space_prefix(json)
        .ok_or_else(|| refuse(path, "a byte-fallback BPE tokenizer without U+2581 spaces"))?;
    let (tokens, mut types) = vocab::tokens(json, vocab, path)?;
    let merges =
        vocab::merges(&json["model"]["merges"]).ok_or_else(|| refuse(path, "unreadable merges"))?;
    for (t, kind) in tokens.iter().zip(types.iter_mut()) {
        if *kind == NORMAL && is_byte_token(t) {
            *kind = BYTE;
        }
    }
    let scores = scores(&tokens, &types, &merges);
    let mut out = vec![
        ("tokenizer.ggml.model".into(), Meta::Str("llama".into())),
        (
            "tokenizer.ggml.add_space_prefix".into(),
            Meta::Bool(add_space_prefix),
        ),
    ];
    out.extend(vocab::special_ids_and_template(dir, config, &tokens));
    out.push(("tokenizer.ggml.tokens".into(), Meta::Strs(tokens)));
    out.push(("tokenizer.ggml.scores".into(), Meta::F32s(scores)));
    out.push(("tokenizer.ggml.token_type".into(), Meta::I32s(types)));
    out.push(("tokenizer.ggml.merges".into(), Meta::Strs(merges)));
    Ok(out)
}

/// Whether the tokenizer prepends U+2581 to the text (None: it does not spell spaces U+2581).
fn space_prefix(json: &Json) -> Option<bool> {
    let metaspace = |p: &Json| p["type"] == "Metaspace" && p["replacement"] == SPACE;
    let pre = &json["pre_tokenizer"];
    let found = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"]
            .as_array()?
            .iter()
            .find(|p| metaspace(p)),
        _ => Some(pre).filter(|p| metaspace(p)),
    };
    if let Some(m) = found {
        return Some(m["prepend_scheme"] != "never" && m["add_prefix_space"] != false);
    }
    // Llama 2's legacy form: a normalizer that prepends U+2581 and replaces spaces with it.
    let normalizer = json["normalizer"].to_string();
    let replaces = normalizer.contains("\"Replace\"") && normalizer.contains(SPACE);
    replaces.then(|| normalizer.contains("\"Prepend\""))
}

/// `<0x00>` .. `<0xFF>`.
fn is_byte_token(t: &str) -> bool {
    t.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && t[3..5].bytes().all(|b| b.is_ascii_hexdigit())
}

/// -rank of the first merge making each piece; 0 for pieces no merge makes that are a single
/// character, bytes or added tokens; below every merge for longer ones.
fn scores(tokens: &[String], types: &[i32], merges: &[String]) -> Vec<f32> {
    let mut rank: HashMap<String, usize> = HashMap::new();
    for (r, m) in merges.iter().enumerate() {
        rank.entry(m.replacen(' ', "", 1)).or_insert(r);
    }
    let lowest = -(merges.len() as f32) - 1.0;
    tokens
        .iter()
        .zip(types)
        .map(|(t, &kind)| match rank.get(t) {
            Some(&r) => -(r as f32),
            None if kind != NORMAL || t.chars().count() <= 1 => 0.0,
            None => lowest,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_score_minus_the_rank_of_the_merge_that_makes_them() {
        let tokens: Vec<String> = ["<unk>", "<0x41>", "a", "b", "ab", "\u{2581}ab", "xyz"]
            .map(String::from)
            .into();
        let types = [3, BYTE, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL];
        let merges: Vec<String> = ["a b", "\u{2581} ab", "a b"].map(String::from).into();
        assert_eq!(
            scores(&tokens, &types, &merges),
            vec![0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -4.0]
        );
        assert!(is_byte_token("<0xfF>") && !is_byte_token("<0xZZ>") && !is_byte_token("<0x4>"));
    }

    #[test]
    fn the_space_prefix_follows_the_pre_tokenizer_or_the_legacy_normalizer() {
        let meta = |scheme: &str| {
            serde_json::json!({"pre_tokenizer": {"type": "Metaspace", "replacement": SPACE,
                "prepend_scheme": scheme}})
        };
        assert_eq!(space_prefix(&meta("first")), Some(true));
        assert_eq!(space_prefix(&meta("never")), Some(false));
        let legacy = serde_json::json!({"normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPACE},
            {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]}});
        assert_eq!(space_prefix(&legacy), Some(true));
        assert_eq!(
            space_prefix(&serde_json::json!({"pre_tokenizer": null})),
            None
        );
    }
}
