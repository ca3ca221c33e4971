//! llama-style SentencePiece vocabularies of GGUF files (`tokenizer.ggml.model` = "llama"), built
//! as transformers' GGUF conversion builds them (its `LlamaTokenizer` from the file's
//! vocabulary): BPE with byte fallback over the tokens as spelled, a Metaspace pre-tokenizer
//! (U+2581 for spaces, prepended to the first word), and the merges from the file or, when it
//! has none, recovered from the token scores as transformers' `generate_merges` does.

use super::gguf::model_error;
use crate::error::Result;
use crate::model::gguf::reader::Gguf;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The bound on the work of recovering merges (the sum of squared token lengths in bytes): a
/// 256k vocabulary of 32-byte tokens needs 2^28.
const MERGE_WORK_LIMIT: u64 = 1 << 32;

/// The tokenizer.json `model`, `pre_tokenizer` and `decoder` of the vocabulary `tokens`.
pub fn parts(g: &Gguf, tokens: &[&str]) -> Result<(Value, Value, Value)> {
    let mut vocab = Map::new();
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (id, t) in tokens.iter().enumerate() {
        vocab.insert(t.to_string(), json!(id));
        ids.insert(t, id);
    }
    let merges: Vec<Value> = match g.strings("tokenizer.ggml.merges")? {
        Some(list) => list
            .iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) if !b.contains(' ') => Ok(json!([a, b])),
                _ => Err(model_error(g, format!("merge {m:?} is not two tokens"))),
            })
            .collect::<Result<_>>()?,
        None => {
            let scores = g
                .floats("tokenizer.ggml.scores")?
                .ok_or_else(|| model_error(g, "neither tokenizer.ggml.merges nor .scores"))?;
            // Each token of n bytes costs about n^2 to split (n splits, each looked up): bounded,
            // so a file of a few huge tokens cannot keep the load busy for hours. Real
            // vocabularies (tokens of tens of bytes) use a small fraction of it.
            let work = tokens
                .iter()
                .fold(0u64, |w, t| w.saturating_add((t.len() as u64).pow(2)));
            if work > MERGE_WORK_LIMIT {
                return Err(model_error(
                    g,
                    format!(
                        "recovering merges from the scores would cost {work} byte-steps (the \
                         sum of squared token lengths), more than adpo's limit \
                         {MERGE_WORK_LIMIT}; a file with tokenizer.ggml.merges loads"
                    ),
                ));
            }
            if scores.len() != tokens.len() {
                return Err(model_error(
                    g,
                    format!("{} scores for {} tokens", scores.len(), tokens.len()),
                ));
            }
            merges_from_scores(tokens, &scores, &ids)
                .into_iter()
                .map(|(a, b)| json!([a, b]))
                .collect()
        }
    };
    let model = json!({"type": "BPE", "dropout": null, "unk_token": null,
        "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
        "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges});
    let pre = json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first",
        "split": false});
    let decoder = json!({"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]});
    Ok((model, pre, decoder))
}

/// transformers' `generate_merges(vocab, vocab_scores)`: every split of every token into two
/// tokens of the vocabulary, ordered by (left id, right id) within the token, then all of them
/// by (score, left length, right length) descending, ties kept in that order (a stable sort).
fn merges_from_scores<'a>(
    tokens: &[&'a str],
    scores: &[f64],
    ids: &HashMap<&str, usize>,
) -> Vec<(&'a str, &'a str)> {
    // Python's dict(zip(tokens, scores)): a repeated token keeps its first place, last score.
    let mut order: Vec<&str> = Vec::new();
    let mut score: HashMap<&str, f64> = HashMap::new();
    for (t, s) in tokens.iter().zip(scores) {
        if score.insert(t, *s).is_none() {
            order.push(t);
        }
    }
    let mut merges: Vec<(&'a str, &'a str, f64)> = Vec::new();
    for t in order {
        let t: &'a str = tokens[ids[t]];
        let mut local: Vec<(&'a str, &'a str, f64)> = t
            .char_indices()
            .skip(1)
            .map(|(i, _)| (&t[..i], &t[i..]))
            .filter(|(l, r)| ids.contains_key(l) && ids.contains_key(r))
            .map(|(l, r)| (l, r, score[t]))
            .collect();
        local.sort_by_key(|(l, r, _)| (ids[l], ids[r]));
        merges.extend(local);
    }
    let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    merges.sort_by(|a, b| {
        key(b)
            .partial_cmp(&key(a))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    merges.into_iter().map(|(l, r, _)| (l, r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_scores_then_lengths() {
        let tokens = ["a", "b", "ab", "\u{2581}", "\u{2581}ab", "ba"];
        let scores = [0.0, 0.0, -1.0, 0.0, -2.0, -1.0];
        let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
        let m = merges_from_scores(&tokens, &scores, &ids);
        assert_eq!(
            m,
            vec![("a", "b"), ("b", "a"), ("\u{2581}", "ab")],
            "ab and ba tie on score and lengths: file order"
        );
    }
}
