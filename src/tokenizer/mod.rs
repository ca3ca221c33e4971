//! Text in, text out: a checkpoint's tokenizer (Hugging Face's `tokenizers` library reading
//! tokenizer.json) and its chat templates, loaded from the files transformers reads.
//!
//! Ids are `i64` as everywhere in adpo (token tensors are int64). A `Tokenizer` is immutable
//! after `load`: it may be used from many threads at once.

mod chat_template;
mod files;
pub(crate) mod gguf;
mod gguf_sentencepiece;
mod json_checks;
mod messages;
mod panic_guard;
mod py_json;
mod template_budget;

pub use chat_template::ChatOptions;
pub use files::{SpecialToken, SPECIAL_TOKEN_NAMES};

use crate::error::{Error, Result, Status};
use crate::regular_file;
use chat_template::ChatTemplates;
use std::collections::BTreeMap;
use std::path::Path;
use tokenizers::AddedToken;

/// The bound on tokenizer.json (src/regular_file.rs): the largest hub tokenizers, with
/// vocabularies of a few hundred thousand entries, are tens of MB.
const TOKENIZER_JSON_LIMIT: u64 = 512 << 20;

/// A loaded tokenizer with its special tokens, chat templates and EOS ids.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: BTreeMap<String, SpecialToken>,
    templates: ChatTemplates,
    eos_ids: Vec<i64>,
}

fn model_error(what: impl std::fmt::Display) -> Error {
    Error::model(format!("tokenizer: {what}"))
}

impl Tokenizer {
    /// Loads `path`: a tokenizer.json, or a checkpoint directory holding one. The files beside
    /// it (tokenizer_config.json, chat_template.jinja, generation_config.json, config.json) are
    /// read when present; src/tokenizer/files.rs says what each gives and the errors.
    ///
    /// A GGUF file (told by its first bytes) gives the tokenizer its `tokenizer.ggml.*`
    /// metadata describes, and its chat template (src/tokenizer/gguf.rs).
    pub fn load(path: &Path) -> Result<Tokenizer> {
        if path.is_file() && starts_like_gguf(path) {
            let (bytes, text) = gguf::read(path)?;
            return Tokenizer::build(bytes, text);
        }
        let text = files::read(path)?;
        let file = &text.tokenizer_json;
        let bytes = regular_file::read(file, TOKENIZER_JSON_LIMIT)
            .map_err(|e| Error::io(format!("cannot read {}: {e}", file.display())))?;
        Tokenizer::build(bytes, text)
    }

    /// The tokenizer of tokenizer.json `bytes` with the checkpoint's `text`.
    fn build(bytes: Vec<u8>, text: files::CheckpointText) -> Result<Tokenizer> {
        let file = &text.tokenizer_json;
        let not_readable = format!(
            "{} is not a tokenizer.json this library reads",
            file.display()
        );
        // Unparsable JSON is left to tokenizers, whose message says where.
        let added_ids = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(json) => json_checks::check(file, &json)?,
            Err(_) => Vec::new(),
        };
        let mut inner = panic_guard::guarded(Status::Model, &not_readable, || {
            tokenizers::Tokenizer::from_bytes(&bytes)
        })?
        .map_err(|e| Error::new(Status::Model, format!("{not_readable}: {e}")))?;
        check_ids_in_vocabulary(file, &inner, &added_ids)?;
        // transformers encodes without the truncation and padding a tokenizer.json may carry
        // (its call defaults are no truncation, no padding); so does adpo.
        inner.with_truncation(None).map_err(model_error)?;
        inner.with_padding(None);
        // Adding tokens normalizes them: a hostile normalizer may panic there.
        panic_guard::guarded(Status::Model, &not_readable, || {
            add_missing_special_tokens(&mut inner, &text.special)
        })??;

        let eos_ids = match text.eos_ids {
            Some(ids) => ids,
            // Neither generation_config.json nor config.json: the EOS token's own id.
            None => text
                .special
                .get("eos_token")
                .and_then(|t| inner.token_to_id(&t.content))
                .map(|id| vec![id as i64])
                .unwrap_or_default(),
        };
        let variables = text
            .special
            .iter()
            .map(|(name, t)| (name.clone(), t.content.clone()))
            .collect();
        Ok(Tokenizer {
            inner,
            special: text.special,
            templates: ChatTemplates::new(text.templates, variables),
            eos_ids,
        })
    }

    /// The ids of `text`; `add_special_tokens` applies tokenizer.json's post-processor (e.g. a
    /// BOS token). Special-token strings inside the text become their special tokens, as in
    /// Python. For text rendered by a chat template (which writes its own special tokens) pass
    /// false, as transformers' `apply_chat_template(tokenize=True)` does.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let encoding =
            on_input(|| self.inner.encode_fast(text, add_special_tokens))?.map_err(model_error)?;
        Ok(encoding.get_ids().iter().map(|&id| id as i64).collect())
    }

    /// [`Tokenizer::encode`] of each text (in parallel).
    pub fn encode_batch(&self, texts: &[&str], add_special_tokens: bool) -> Result<Vec<Vec<i64>>> {
        let encodings = on_input(|| {
            self.inner
                .encode_batch_fast(texts.to_vec(), add_special_tokens)
        })?
        .map_err(model_error)?;
        Ok(encodings
            .iter()
            .map(|e| e.get_ids().iter().map(|&id| id as i64).collect())
            .collect())
    }

    /// The text of `ids`; `skip_special_tokens` leaves out special tokens. Every id must be in
    /// the vocabulary (Python's tokenizers skips unknown ids silently; adpo names the first).
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids = self.checked_ids(ids, "ids")?;
        on_input(|| self.inner.decode(&ids, skip_special_tokens))?.map_err(model_error)
    }

    /// [`Tokenizer::decode`] of each sequence.
    pub fn decode_batch(&self, seqs: &[&[i64]], skip_special_tokens: bool) -> Result<Vec<String>> {
        let checked = seqs
            .iter()
            .enumerate()
            .map(|(i, ids)| self.checked_ids(ids, &format!("sequence {i}: ids")))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&[u32]> = checked.iter().map(Vec::as_slice).collect();
        on_input(|| self.inner.decode_batch(&refs, skip_special_tokens))?.map_err(model_error)
    }

    fn checked_ids(&self, ids: &[i64], name: &str) -> Result<Vec<u32>> {
        ids.iter()
            .enumerate()
            .map(|(i, &id)| {
                u32::try_from(id)
                    .ok()
                    .filter(|&id| self.inner.id_to_token(id).is_some())
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "{name}[{i}] = {id} is not in the vocabulary ({} tokens)",
                            self.vocab_size()
                        ))
                    })
            })
            .collect()
    }

    /// Renders the chat template for `messages_json` (a JSON list of {"role", "content"}
    /// objects) with the tokenizer's default template.
    pub fn apply_chat_template(
        &self,
        messages_json: &str,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let options = ChatOptions {
            add_generation_prompt,
            ..Default::default()
        };
        self.templates.render(messages_json, &options)
    }

    /// Renders with options (template choice, tools, documents, extra variables).
    pub fn apply_chat_template_with(
        &self,
        messages_json: &str,
        options: &ChatOptions,
    ) -> Result<String> {
        self.templates.render(messages_json, options)
    }

    /// EOS ids: generation_config.json's `eos_token_id`, else config.json's, else the id of
    /// tokenizer_config.json's eos_token; empty when none of them is there.
    pub fn eos_ids(&self) -> &[i64] {
        &self.eos_ids
    }

    /// Number of tokens, added tokens included (Python's `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The named special tokens of tokenizer_config.json (bos_token, eos_token, ...).
    pub fn special_tokens(&self) -> &BTreeMap<String, SpecialToken> {
        &self.special
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }
}

/// Whether the file at `path` begins with GGUF's magic (a file that cannot be read is left to
/// the tokenizer.json path, whose message names the problem).
fn starts_like_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::with_capacity(4);
    regular_file::open(path)
        .and_then(|f| f.take(4).read_to_end(&mut head))
        .is_ok_and(|_| crate::model::gguf::reader::is_gguf(&head))
}

/// Runs a tokenizers call on the caller's text or ids: a panic in it (onig giving up on hard
/// input, a hostile tokenizer.json's tables) is INVALID_ARGUMENT for this call only.
fn on_input<T>(f: impl FnOnce() -> T) -> Result<T> {
    panic_guard::guarded(
        Status::InvalidArgument,
        "tokenizer: this input cannot be tokenized",
        f,
    )
}

/// The post-processor's special-token ids must be tokens of the vocabulary.
fn check_ids_in_vocabulary(
    file: &Path,
    inner: &tokenizers::Tokenizer,
    added: &[json_checks::AddedId],
) -> Result<()> {
    for a in added {
        let known = u32::try_from(a.id).is_ok_and(|id| inner.id_to_token(id).is_some());
        if !known {
            return Err(Error::new(
                Status::Model,
                format!(
                    "{}: {}: id {} is not in the vocabulary",
                    file.display(),
                    a.field,
                    a.id
                ),
            ));
        }
    }
    Ok(())
}

/// As transformers does at load: a named special token of tokenizer_config.json that
/// tokenizer.json does not list among its added tokens is added as a special token (with the
/// vocabulary's id when the model has the string, else a new id at the end).
fn add_missing_special_tokens(
    inner: &mut tokenizers::Tokenizer,
    special: &BTreeMap<String, SpecialToken>,
) -> Result<()> {
    let added: Vec<String> = inner
        .get_added_tokens_decoder()
        .values()
        .map(|t| t.content.clone())
        .collect();
    // transformers adds them in the order of SPECIAL_TOKENS_ATTRIBUTES, skipping repeats.
    let mut missing: Vec<AddedToken> = Vec::new();
    for name in SPECIAL_TOKEN_NAMES {
        let Some(t) = special.get(name) else { continue };
        if added.contains(&t.content) || missing.iter().any(|m| m.content == t.content) {
            continue;
        }
        missing.push(
            AddedToken::from(t.content.clone(), true)
                .lstrip(t.lstrip)
                .rstrip(t.rstrip)
                .single_word(t.single_word)
                .normalized(t.normalized),
        );
    }
    if !missing.is_empty() {
        inner.add_special_tokens(missing).map_err(model_error)?;
    }
    Ok(())
}
