//! Checks of a tokenizer.json before the `tokenizers` library reads it: a file from a stranger
//! must not make it reserve gigabytes, multiply text without bound, or panic later. Each error
//! is `Status::Model` naming the file and the field.
//!
//! - A `Precompiled` normalizer's `precompiled_charsmap` must hold the trie its first 4 bytes
//!   announce (tokenizers reserves that size before reading it: 2^31 announced, 4 GB reserved).
//! - A `Replace` normalizer or decoder may not replace the empty string (it matches between
//!   every two characters) and writes at most `REPLACE_CONTENT_LIMIT` bytes per match.
//! - A `TemplateProcessing` post-processor's templates may name only the special tokens it
//!   defines, its single-text template only the sequence $A, and each special token needs as
//!   many token strings as ids; its ids must be in the vocabulary (checked after load).

use crate::error::{Error, Result, Status};
use serde_json::{Map, Value};
use std::path::Path;

/// The most bytes a `Replace` writes per match: real tokenizers replace a character or two
/// ("▁" for a space); the bound keeps a match's text within 64 times its input.
pub(crate) const REPLACE_CONTENT_LIMIT: usize = 64;

/// A special-token id a post-processor adds, with the field that holds it.
pub struct AddedId {
    pub field: String,
    pub id: u64,
}

/// Checks `json` (the parsed tokenizer.json at `file`); returns the post-processors' ids.
pub fn check(file: &Path, json: &Value) -> Result<Vec<AddedId>> {
    let mut ids = Vec::new();
    walk(json, "", &mut ids).map_err(|(field, what)| {
        Error::new(
            Status::Model,
            format!("{}: {field}: {what}", file.display()),
        )
    })?;
    Ok(ids)
}

type Found = std::result::Result<(), (String, String)>;

fn walk(v: &Value, path: &str, ids: &mut Vec<AddedId>) -> Found {
    match v {
        Value::Object(obj) => {
            match obj.get("type").and_then(Value::as_str) {
                Some("Precompiled") => charsmap(obj, path)?,
                Some("Replace") => replace(obj, path)?,
                Some("TemplateProcessing") => template(obj, path, ids)?,
                _ => {}
            }
            for (key, child) in obj {
                walk(child, &join(path, key), ids)?;
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(child, &format!("{path}[{i}]"), ids)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn fail(path: &str, field: &str, what: impl Into<String>) -> Found {
    Err((join(path, field), what.into()))
}

/// The charsmap is base64 of [u32 trie size in bytes, little-endian][trie][normalized text].
fn charsmap(obj: &Map<String, Value>, path: &str) -> Found {
    let Some(text) = obj.get("precompiled_charsmap").and_then(Value::as_str) else {
        return Ok(()); // tokenizers reports a missing or mistyped field itself
    };
    let digits = text.trim_end_matches('=');
    let held = digits.len() / 4 * 3 + (digits.len() % 4).saturating_sub(1);
    let Some(head) = base64_prefix(digits) else {
        return Ok(()); // not base64: tokenizers refuses it
    };
    let trie = u32::from_le_bytes(head) as usize / 4 * 4;
    if held < 4 || trie > held - 4 {
        return fail(
            path,
            "precompiled_charsmap",
            format!(
                "announces a trie of {trie} bytes but holds {} bytes in all",
                held
            ),
        );
    }
    Ok(())
}

/// The first 4 bytes that base64 `digits` (standard alphabet) encode, if it has them.
fn base64_prefix(digits: &str) -> Option<[u8; 4]> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut bits: u64 = 0;
    for &c in digits.as_bytes().get(..6)? {
        bits = bits << 6 | value(c)? as u64;
    }
    // 36 bits: the first 4 bytes are the top 32.
    Some(((bits >> 4) as u32).to_be_bytes())
}

fn replace(obj: &Map<String, Value>, path: &str) -> Found {
    let pattern = obj.get("pattern").and_then(Value::as_object);
    if let Some(s) = pattern
        .and_then(|p| p.get("String"))
        .and_then(Value::as_str)
    {
        if s.is_empty() {
            return fail(
                path,
                "pattern.String",
                "is empty: it would match between every two characters",
            );
        }
    }
    let content = obj.get("content").and_then(Value::as_str).unwrap_or("");
    if content.len() > REPLACE_CONTENT_LIMIT {
        return fail(
            path,
            "content",
            format!(
                "is {} bytes; adpo allows at most {REPLACE_CONTENT_LIMIT} per replacement",
                content.len()
            ),
        );
    }
    Ok(())
}

fn template(obj: &Map<String, Value>, path: &str, ids: &mut Vec<AddedId>) -> Found {
    let empty = Map::new();
    let tokens = obj
        .get("special_tokens")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (name, token) in tokens {
        let field = join(&join(path, "special_tokens"), name);
        let list = |key: &str| token.get(key).and_then(Value::as_array).map(Vec::len);
        if list("ids") != list("tokens") {
            return Err((field, "needs as many tokens as ids".into()));
        }
        for (i, id) in token["ids"].as_array().into_iter().flatten().enumerate() {
            if let Some(id) = id.as_u64() {
                ids.push(AddedId {
                    field: format!("{field}.ids[{i}]"),
                    id,
                });
            }
        }
    }
    for which in ["single", "pair"] {
        let pieces = obj.get(which).and_then(Value::as_array);
        for (i, piece) in pieces.into_iter().flatten().enumerate() {
            let field = format!("{}[{i}]", join(path, which));
            if let Some(name) = piece.pointer("/SpecialToken/id").and_then(Value::as_str) {
                if !tokens.contains_key(name) {
                    return Err((
                        field,
                        format!("names the special token {name:?}, which special_tokens lacks"),
                    ));
                }
            }
            let sequence = piece.pointer("/Sequence/id").and_then(Value::as_str);
            if which == "single" && sequence == Some("B") {
                return Err((field, "the single-text template has no sequence $B".into()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_prefix_reads_the_first_four_bytes() {
        // base64 of [1, 2, 3, 4, 5, 6]
        assert_eq!(base64_prefix("AQIDBAUG"), Some([1, 2, 3, 4]));
        assert_eq!(base64_prefix("AQID"), None);
        assert_eq!(base64_prefix("A!IDBAUG"), None);
    }
}
