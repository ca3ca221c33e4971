//! The end-of-sequence ids a checkpoint generates with: generation_config.json's `eos_token_id`
//! (an id or a list of ids), else config.json's; none when neither names one. A
//! generation_config.json that is there but not a regular file, or too large, is an error.

use crate::error::{Error, Result, Status};
use crate::regular_file;
use serde_json::Value;
use std::path::Path;

fn ids(value: Option<&Value>, file: &str) -> Result<Option<Vec<i64>>> {
    let bad = || {
        Error::new(
            Status::Model,
            format!("{file}: eos_token_id must be an id or a list of ids, got {value:?}"),
        )
    };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(Some(vec![n.as_i64().ok_or_else(bad)?])),
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_i64().ok_or_else(bad))
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

/// EOS ids of the checkpoint in `dir` whose config.json text is `config_json`.
pub fn eos_ids(dir: &Path, config_json: &str) -> Result<Vec<i64>> {
    let path = dir.join("generation_config.json");
    if path.exists() {
        let text = regular_file::read_text(&path, regular_file::JSON_LIMIT)
            .map_err(|e| Error::model(format!("cannot read {}: {e}", path.display())))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::model(format!("{}: {e}", path.display())))?;
        if let Some(found) = ids(json.get("eos_token_id"), &path.display().to_string())? {
            return Ok(found);
        }
    }
    let config: Value =
        serde_json::from_str(config_json).map_err(|e| Error::model(format!("config.json: {e}")))?;
    Ok(ids(config.get("eos_token_id"), "config.json")?.unwrap_or_default())
}
