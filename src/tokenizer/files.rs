//! The files of a Hugging Face checkpoint that describe its text side, read as transformers 5
//! reads them: tokenizer.json (the tokenizer itself), tokenizer_config.json (special token
//! strings, chat templates), chat_template.jinja (the newer place of the template, which takes
//! priority), generation_config.json or else config.json (the EOS ids).
//!
//! Errors: a missing path or tokenizer.json is `Status::Io`; a file that is there but cannot be
//! parsed, or holds a value of the wrong type, is `Status::Model` (it is part of the checkpoint).
//! Every message names the file. Files are read through src/regular_file.rs: regular files
//! only, each JSON file or template at most `regular_file::JSON_LIMIT` bytes.
//!
//! `add_bos_token` / `add_eos_token` are not read: with a tokenizer.json, transformers 5 drops
//! them (`PreTrainedTokenizerBase._from_pretrained` pops both) and the post-processor stored in
//! tokenizer.json alone decides which special tokens `encode` adds.

use crate::error::{Error, Result, Status};
use crate::regular_file;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The named special tokens that transformers hands to chat templates (`special_tokens_map`).
pub const SPECIAL_TOKEN_NAMES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A special token from tokenizer_config.json: a string, or an AddedToken object.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecialToken {
    pub content: String,
    pub lstrip: bool,
    pub rstrip: bool,
    pub single_word: bool,
    pub normalized: bool,
}

/// Chat templates: the unnamed/"default" one and any others by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Templates {
    pub default: Option<String>,
    pub named: BTreeMap<String, String>,
}

/// Everything read from a checkpoint's files, besides tokenizer.json itself.
#[derive(Debug, Clone, Default)]
pub struct CheckpointText {
    pub tokenizer_json: PathBuf,
    /// Named special tokens that are set (name from [`SPECIAL_TOKEN_NAMES`]).
    pub special: BTreeMap<String, SpecialToken>,
    pub templates: Templates,
    /// EOS ids from generation_config.json or config.json; None when neither has them.
    pub eos_ids: Option<Vec<i64>>,
}

/// Finds tokenizer.json for `path` (the file itself, or a directory holding one) and reads the
/// files beside it.
pub fn read(path: &Path) -> Result<CheckpointText> {
    if !path.exists() {
        return Err(Error::new(
            Status::Io,
            format!("{} does not exist", path.display()),
        ));
    }
    let (tokenizer_json, dir) = if path.is_dir() {
        let file = path.join("tokenizer.json");
        if !file.is_file() {
            return Err(Error::new(
                Status::Io,
                format!(
                    "no tokenizer.json in {} (adpo reads the fast-tokenizer format; transformers \
                     writes it with AutoTokenizer.from_pretrained(dir).save_pretrained(dir))",
                    path.display()
                ),
            ));
        }
        (file, path.to_path_buf())
    } else if !path.is_file() {
        // A device or a FIFO (/dev/zero) would be read forever.
        return Err(Error::new(
            Status::Io,
            format!(
                "{} is neither a directory nor a regular file",
                path.display()
            ),
        ));
    } else {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        (path.to_path_buf(), dir)
    };

    let config = read_json(&dir.join("tokenizer_config.json"))?;
    let mut text = CheckpointText {
        tokenizer_json,
        ..Default::default()
    };
    if let Some((file, config)) = &config {
        text.special = special_tokens(file, config)?;
        text.templates = templates(file, config.get("chat_template"))?;
    }
    // chat_template.jinja (transformers >= 4.43 saves the template there) wins over the config.
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let source = regular_file::read_text(&jinja, regular_file::JSON_LIMIT)
            .map_err(|e| io_error(&jinja, e))?;
        text.templates.default = Some(source);
    }
    text.eos_ids = eos_ids(&dir)?;
    Ok(text)
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("cannot read {}: {e}", path.display()))
}

fn model_error(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::model(format!("{}: {what}", path.display()))
}

/// The parsed JSON object of an optional file (None when it does not exist).
fn read_json(path: &Path) -> Result<Option<(PathBuf, serde_json::Map<String, Value>)>> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes =
        regular_file::read(path, regular_file::JSON_LIMIT).map_err(|e| io_error(path, e))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(Some((path.to_path_buf(), map))),
        Ok(_) => Err(model_error(path, "expected a JSON object")),
        Err(e) => Err(model_error(path, format!("not valid JSON: {e}"))),
    }
}

fn special_tokens(
    file: &Path,
    config: &serde_json::Map<String, Value>,
) -> Result<BTreeMap<String, SpecialToken>> {
    let mut out = BTreeMap::new();
    for name in SPECIAL_TOKEN_NAMES {
        let token = match config.get(name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => SpecialToken {
                content: s.clone(),
                lstrip: false,
                rstrip: false,
                single_word: false,
                normalized: false,
            },
            Some(Value::Object(o)) => {
                let content = o.get("content").and_then(Value::as_str).ok_or_else(|| {
                    model_error(
                        file,
                        format!("{name} is an object without a string \"content\""),
                    )
                })?;
                let flag = |k: &str| o.get(k).and_then(Value::as_bool).unwrap_or(false);
                SpecialToken {
                    content: content.to_string(),
                    lstrip: flag("lstrip"),
                    rstrip: flag("rstrip"),
                    single_word: flag("single_word"),
                    normalized: flag("normalized"),
                }
            }
            Some(other) => {
                return Err(model_error(
                    file,
                    format!("{name} must be a string or an object with \"content\", not {other}"),
                ))
            }
        };
        out.insert(name.to_string(), token);
    }
    Ok(out)
}

/// `chat_template`: a string, or a list of {"name", "template"} objects.
fn templates(file: &Path, value: Option<&Value>) -> Result<Templates> {
    let mut out = Templates::default();
    match value {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => out.default = Some(s.clone()),
        Some(Value::Array(list)) => {
            for (i, entry) in list.iter().enumerate() {
                let field = |k: &str| entry.get(k).and_then(Value::as_str);
                let (Some(name), Some(template)) = (field("name"), field("template")) else {
                    return Err(model_error(
                        file,
                        format!("chat_template[{i}] must be an object with string \"name\" and \"template\""),
                    ));
                };
                if name == "default" {
                    out.default = Some(template.to_string());
                }
                out.named.insert(name.to_string(), template.to_string());
            }
        }
        Some(other) => {
            return Err(model_error(
                file,
                format!(
                    "chat_template must be a string or a list of named templates, not {}",
                    kind(other)
                ),
            ))
        }
    }
    Ok(out)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// `eos_token_id` (an int or a list of ints) of generation_config.json, else of config.json.
fn eos_ids(dir: &Path) -> Result<Option<Vec<i64>>> {
    for name in ["generation_config.json", "config.json"] {
        let Some((file, config)) = read_json(&dir.join(name))? else {
            continue;
        };
        let ids = match config.get("eos_token_id") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(list)) => list.iter().map(|v| id(&file, v)).collect::<Result<_>>()?,
            Some(v) => vec![id(&file, v)?],
        };
        return Ok(Some(ids));
    }
    Ok(None)
}

fn id(file: &Path, v: &Value) -> Result<i64> {
    v.as_i64().filter(|i| *i >= 0).ok_or_else(|| {
        model_error(
            file,
            format!("eos_token_id must be a non-negative integer or a list of them, found {v}"),
        )
    })
}
