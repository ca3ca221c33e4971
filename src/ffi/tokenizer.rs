//! C ABI of tokenizers and chat templates (src/tokenizer).
//!
//! Id outputs are sized first: a call with `cap` = 0 and a NULL buffer only reports the length;
//! a buffer too small is ADPO_STATUS_SHAPE_MISMATCH with the length still reported (the one
//! output written on failure, so that a caller can grow its buffer and call again).

// Section of include/adpo.h: Tokenizers and chat templates
// Text in, text out: a checkpoint's tokenizer.json (Hugging Face `tokenizers`) and the chat
// template of its tokenizer_config.json (rendered as transformers renders it).

use super::args::{c_str, owned_c_string, require_out, slice, write_out, write_sized};
use super::boundary::{call, call_on};
use super::error::adpo_error;
use super::handle::{free, handle, Guarded, Handle};
use crate::echo::echo_path;
use crate::error::{Error, Result, Status};
use crate::tokenizer::{ChatOptions, Tokenizer};
use std::ffi::c_char;
use std::path::Path;

/// A tokenizer with its chat templates, loaded from a Hugging Face checkpoint. Read-only after
/// load: calls on one tokenizer may run in parallel from any threads.
pub struct adpo_tokenizer(Guarded<Tokenizer>);
handle!(adpo_tokenizer, Tokenizer);

/// Loads a tokenizer: `path` is a tokenizer.json, a checkpoint directory holding one, or a GGUF
/// file, whose `tokenizer.ggml.*` metadata gives the tokenizer transformers' GGUF conversion
/// builds (`tokenizer.ggml.model` "gpt2": byte-level BPE; "llama": SentencePiece BPE; others
/// ADPO_STATUS_UNSUPPORTED)
/// and `tokenizer.chat_template` its template (a malformed file: ADPO_STATUS_CHECKPOINT). Beside
/// it, tokenizer_config.json gives the chat template(s) and the special token strings,
/// chat_template.jinja (if present) the default template, generation_config.json (else
/// config.json) the EOS ids. A missing path or tokenizer.json: ADPO_STATUS_IO; a file that
/// cannot be parsed, or a tokenizer.json adpo refuses as hostile (README: a charsmap smaller
/// than its trie, a Replace of "" or of more than 64 bytes, a post-processor naming undefined
/// tokens): ADPO_STATUS_MODEL; the message names the file (and the field).
#[no_mangle]
pub extern "C" fn adpo_tokenizer_load(
    path: *const c_char,
    out: *mut *mut adpo_tokenizer,
    err: *mut *mut adpo_error,
) -> Status {
    call(err, || {
        require_out(out, "out")?;
        let path = c_str(path, "path")?;
        let tokenizer = echo_path(path, Tokenizer::load(Path::new(path)))?;
        write_out(out, "out", adpo_tokenizer::into_raw(tokenizer))
    })
}

/// Frees a tokenizer. NULL is a no-op.
#[no_mangle]
pub extern "C" fn adpo_tokenizer_free(tok: *mut adpo_tokenizer) {
    free(tok)
}

/// Encodes UTF-8 `text` into token ids. `add_special_tokens`: add what tokenizer.json's
/// post-processor adds (e.g. BOS); pass false for text from a chat template, which writes its
/// own. Special-token strings inside the text become their tokens, as in Python. Text the
/// tokenizer fails on (its regex gives up on pathological input) is ADPO_STATUS_INVALID_ARGUMENT
/// for this call; the tokenizer stays usable.
///
/// Sizes first: `*out_len` is always set to the number of ids (out_len must not be NULL). With
/// `cap` = 0 and `out_ids` NULL the call only reports it (ADPO_STATUS_OK); otherwise `out_ids`
/// must hold `cap` ids, and when cap < *out_len the call returns ADPO_STATUS_SHAPE_MISMATCH,
/// writes no ids, but still sets *out_len: the one exception to "outputs are written only on
/// success", so that a caller can grow its buffer and call again. Text that is not UTF-8:
/// ADPO_STATUS_INVALID_ARGUMENT (then *out_len is not set).
#[no_mangle]
pub extern "C" fn adpo_tokenizer_encode(
    tok: *const adpo_tokenizer,
    text: *const c_char,
    add_special_tokens: bool,
    out_ids: *mut i64,
    cap: usize,
    out_len: *mut usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, tok, "tok", |t| {
        require_out(out_len, "out_len")?;
        let ids = t.inner.encode(c_str(text, "text")?, add_special_tokens)?;
        write_sized(&ids, out_ids, cap, out_len)
    })
}

/// Encodes `n` UTF-8 texts (`texts[0 .. n)`, in parallel) into one flat buffer of ids: text i
/// has ids out_ids[out_offsets[i] .. out_offsets[i + 1]).
///
/// Sizes first, as adpo_tokenizer_encode: `*out_total` (must not be NULL) is always set to the
/// number of ids of all texts; `cap` = 0 with `out_ids` NULL only reports sizes; a `cap` below
/// *out_total is ADPO_STATUS_SHAPE_MISMATCH with *out_total still set. `out_offsets` (NULL, or
/// room for n + 1 entries; out_offsets[0] = 0) is written whenever the call succeeds, also when
/// it only reports sizes, so a caller knows each text's length before allocating. A NULL or
/// non-UTF-8 texts[i]: ADPO_STATUS_NULL_ARGUMENT / ADPO_STATUS_INVALID_ARGUMENT naming i.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn adpo_tokenizer_encode_batch(
    tok: *const adpo_tokenizer,
    texts: *const *const c_char,
    n: usize,
    add_special_tokens: bool,
    out_ids: *mut i64,
    cap: usize,
    out_offsets: *mut usize,
    out_total: *mut usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, tok, "tok", |t| {
        require_out(out_total, "out_total")?;
        let pointers = slice(texts, n, "texts")?;
        let texts = pointers
            .iter()
            .enumerate()
            .map(|(i, &p)| c_str(p, &format!("texts[{i}]")))
            .collect::<Result<Vec<&str>>>()?;
        let seqs = t.inner.encode_batch(&texts, add_special_tokens)?;
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0usize);
        for ids in &seqs {
            offsets.push(offsets[offsets.len() - 1] + ids.len());
        }
        let flat: Vec<i64> = seqs.concat();
        write_sized(&flat, out_ids, cap, out_total)?;
        if !out_offsets.is_null() {
            // SAFETY: non-NULL and valid for n + 1 writes (caller contract).
            unsafe { std::ptr::copy_nonoverlapping(offsets.as_ptr(), out_offsets, n + 1) };
        }
        Ok(())
    })
}

/// Decodes `ids[0 .. n)` into a new UTF-8 string (free it with adpo_string_free).
/// `skip_special_tokens` leaves special tokens out. An id outside the vocabulary is
/// ADPO_STATUS_INVALID_ARGUMENT naming it and its position (Python skips such ids silently).
/// A U+0000 in the decoded text, which a C string cannot hold, comes back as a space.
#[no_mangle]
pub extern "C" fn adpo_tokenizer_decode(
    tok: *const adpo_tokenizer,
    ids: *const i64,
    n: usize,
    skip_special_tokens: bool,
    out_text: *mut *mut c_char,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, tok, "tok", |t| {
        require_out(out_text, "out_text")?;
        let text = t.inner.decode(slice(ids, n, "ids")?, skip_special_tokens)?;
        write_out(out_text, "out_text", owned_c_string(text))
    })
}

/// Decodes `n` sequences laid out as adpo_tokenizer_encode_batch writes them: sequence i is
/// ids[offsets[i] .. offsets[i + 1]) (`offsets` has n + 1 non-decreasing entries). Writes n new
/// strings to out_texts[0 .. n), each freed with adpo_string_free, only when all succeed.
#[no_mangle]
pub extern "C" fn adpo_tokenizer_decode_batch(
    tok: *const adpo_tokenizer,
    ids: *const i64,
    offsets: *const usize,
    n: usize,
    skip_special_tokens: bool,
    out_texts: *mut *mut c_char,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, tok, "tok", |t| {
        if n == 0 {
            return Ok(());
        }
        require_out(out_texts, "out_texts")?;
        let entries = n
            .checked_add(1)
            .ok_or_else(|| Error::invalid(format!("n = {n} is too large for any buffer")))?;
        let offsets = slice(offsets, entries, "offsets")?;
        if let Some(i) = (0..n).find(|&i| offsets[i] > offsets[i + 1]) {
            return Err(Error::invalid(format!(
                "offsets must not decrease: offsets[{i}] = {} > offsets[{}] = {}",
                offsets[i],
                i + 1,
                offsets[i + 1]
            )));
        }
        let all = slice(ids, offsets[n], "ids")?;
        let seqs: Vec<&[i64]> = (0..n).map(|i| &all[offsets[i]..offsets[i + 1]]).collect();
        let texts = t.inner.decode_batch(&seqs, skip_special_tokens)?;
        for (i, text) in texts.into_iter().enumerate() {
            // SAFETY: out_texts is non-NULL and valid for n writes (caller contract).
            unsafe { out_texts.add(i).write(owned_c_string(text)) };
        }
        Ok(())
    })
}

/// Renders the tokenizer's default chat template for `messages_json`, a JSON list of message
/// objects: each has a string "role" and a "content" that is a string (or a list of content
/// objects; null or absent only with "tool_calls"); other keys pass through to the template.
/// The template sees what transformers' apply_chat_template(tokenize=False) gives it: the
/// special tokens (bos_token, eos_token, ...), messages, tools and documents (none), and
/// add_generation_prompt. Writes a new string (free with adpo_string_free). Encode it with
/// add_special_tokens = false. Malformed messages, a template that does not render, and the
/// template's own raise_exception(msg) (the message carries msg): ADPO_STATUS_INVALID_ARGUMENT;
/// so is a template that exceeds its budget (README: work and data, 256 levels of nesting).
#[no_mangle]
pub extern "C" fn adpo_tokenizer_apply_chat_template(
    tok: *const adpo_tokenizer,
    messages_json: *const c_char,
    add_generation_prompt: bool,
    out_text: *mut *mut c_char,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, tok, "tok", |t| {
        require_out(out_text, "out_text")?;
        let messages = c_str(messages_json, "messages_json")?;
        let text = t
            .inner
            .apply_chat_template(messages, add_generation_prompt)?;
        write_out(out_text, "out_text", owned_c_string(text))
    })
}

/// As adpo_tokenizer_apply_chat_template, with options as JSON (NULL or "" = defaults; unknown
/// keys and wrong types are ADPO_STATUS_INVALID_CONFIG):
/// `{"template": NAME or SOURCE, "add_generation_prompt": false, "tools": [...],
/// "documents": [...], "variables": {"enable_thinking": false, ...}}`.
/// "template" names one of the tokenizer's templates (the list form of chat_template) or is a
/// template's source; by default the "tool_use" template is used when tools are given and the
/// tokenizer has one, else the default template. "variables" are further template variables
/// (they may override the special-token ones).
#[no_mangle]
pub extern "C" fn adpo_tokenizer_apply_chat_template_options(
    tok: *const adpo_tokenizer,
    messages_json: *const c_char,
    options_json: *const c_char,
    out_text: *mut *mut c_char,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, tok, "tok", |t| {
        require_out(out_text, "out_text")?;
        let messages = c_str(messages_json, "messages_json")?;
        let options = if options_json.is_null() {
            ChatOptions::default()
        } else {
            ChatOptions::from_json(c_str(options_json, "options_json")?)?
        };
        let text = t.inner.apply_chat_template_with(messages, &options)?;
        write_out(out_text, "out_text", owned_c_string(text))
    })
}

/// The ids that end generation: generation_config.json's eos_token_id (an int or a list), else
/// config.json's, else the id of tokenizer_config.json's eos_token; none when there is no such
/// file or token. Sizes first, as adpo_tokenizer_encode (*out_len always set).
#[no_mangle]
pub extern "C" fn adpo_tokenizer_eos_ids(
    tok: *const adpo_tokenizer,
    out_ids: *mut i64,
    cap: usize,
    out_len: *mut usize,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, tok, "tok", |t| {
        require_out(out_len, "out_len")?;
        write_sized(t.inner.eos_ids(), out_ids, cap, out_len)
    })
}

/// Number of tokens, added tokens included (Python's len(tokenizer)). A model's vocabulary
/// (adpo_model_vocab_size) may be larger: checkpoints often pad it.
#[no_mangle]
pub extern "C" fn adpo_tokenizer_vocab_size(
    tok: *const adpo_tokenizer,
    out: *mut i64,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, tok, "tok", |t| {
        write_out(out, "out", t.inner.vocab_size() as i64)
    })
}

/// The id of a token string (such as "<|im_end|>"), for pad and stop ids. A string that is not
/// one token of the vocabulary: ADPO_STATUS_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn adpo_tokenizer_token_to_id(
    tok: *const adpo_tokenizer,
    token: *const c_char,
    out_id: *mut i64,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, tok, "tok", |t| {
        require_out(out_id, "out_id")?;
        let token = c_str(token, "token")?;
        let id = t.inner.token_to_id(token).ok_or_else(|| {
            Error::invalid(format!(
                "{token:?} is not a token of this tokenizer's vocabulary"
            ))
        })?;
        write_out(out_id, "out_id", id)
    })
}

/// A named special token's string from tokenizer_config.json: `name` is one of "bos_token",
/// "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token". Writes a new
/// string (free with adpo_string_free), or NULL when the tokenizer does not set that token.
/// Another name: ADPO_STATUS_INVALID_ARGUMENT.
#[no_mangle]
pub extern "C" fn adpo_tokenizer_special_token(
    tok: *const adpo_tokenizer,
    name: *const c_char,
    out_text: *mut *mut c_char,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, tok, "tok", |t| {
        require_out(out_text, "out_text")?;
        let name = c_str(name, "name")?;
        if !crate::tokenizer::SPECIAL_TOKEN_NAMES.contains(&name) {
            return Err(Error::invalid(format!(
                "name = {name:?}; expected one of {:?}",
                crate::tokenizer::SPECIAL_TOKEN_NAMES
            )));
        }
        let text = t
            .inner
            .special_tokens()
            .get(name)
            .map(|s| s.content.clone());
        write_out(
            out_text,
            "out_text",
            text.map_or(std::ptr::null_mut(), owned_c_string),
        )
    })
}
