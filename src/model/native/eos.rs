//! The EOS ids a checkpoint was trained with: `eos_token_id` (one id or a list) of
//! generation_config.json, else of config.json. Sampling ends rows there unless told otherwise.

use serde_json::Value;
use std::path::Path;

fn ids_of(value: &Value) -> Option<Vec<i64>> {
    match value.get("eos_token_id")? {
        Value::Number(n) => n.as_i64().map(|id| vec![id]),
        Value::Array(items) => items.iter().map(Value::as_i64).collect(),
        _ => None,
    }
}

fn read(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// The EOS ids of the checkpoint directory `dir` (none when neither file names one).
pub fn eos_ids(dir: &Path) -> Vec<i64> {
    ["generation_config.json", "config.json"]
        .iter()
        .filter_map(|f| read(&dir.join(f)).as_ref().and_then(ids_of))
        .next()
        .unwrap_or_default()
}
