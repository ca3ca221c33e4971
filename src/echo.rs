//! Inputs echoed in error messages are capped: a 1 MB config key, JSON value or path must not
//! come back as a 1 MB message. One helper, [`capped`], shortens a text to its head and tail
//! with its length in between; the rest applies it where inputs are echoed.

use crate::error::{Error, Result};
use std::borrow::Cow;

// Not `pub`: cbindgen would put them in the C header.
/// Characters of one echoed input (a key, a value, a path) kept in a message.
const ECHO_CHARS: usize = 200;

/// Characters of a whole message handed to C (a backstop for echoes not capped where made).
const MESSAGE_CHARS: usize = 1000;

/// `text` when it has at most `max` characters; else its first and last characters (three
/// quarters and a quarter of `max`) around "…" and its length in bytes.
pub fn capped(text: &str, max: usize) -> Cow<'_, str> {
    let chars = text.chars().count();
    if chars <= max {
        return Cow::Borrowed(text);
    }
    let head: String = text.chars().take(max * 3 / 4).collect();
    let tail: String = text.chars().skip(chars - max / 4).collect();
    Cow::Owned(format!("{head}…[{} bytes in all]…{tail}", text.len()))
}

/// A whole message as it is handed to C: [`capped`] to [`MESSAGE_CHARS`], the backstop for
/// inputs echoed without a cap where the message was made.
pub fn cap_message(message: &str) -> Cow<'_, str> {
    capped(message, MESSAGE_CHARS)
}

/// An input echoed in a message: [`capped`] to [`ECHO_CHARS`].
pub fn echo(text: &str) -> Cow<'_, str> {
    capped(text, ECHO_CHARS)
}

/// `message` with every span quoted in backticks or double quotes (how serde_json's messages
/// quote the keys and values they echo) capped to [`ECHO_CHARS`].
pub fn echo_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(4 * MESSAGE_CHARS));
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest[open..].chars().next().expect("found a quote");
        let inner = &rest[open + 1..];
        let Some(close) = inner.find(quote) else {
            break;
        };
        out.push_str(&rest[..=open]);
        out.push_str(&echo(&inner[..close]));
        out.push(quote);
        rest = &inner[close + 1..];
    }
    out.push_str(rest);
    out
}

/// `result` with every echo of the caller's `path` in its message capped: paths reach messages
/// from deep inside loaders (`path.display()`, also as the prefix of files inside it).
pub fn echo_path<T>(path: &str, result: Result<T>) -> Result<T> {
    result.map_err(|e| {
        if path.chars().count() <= ECHO_CHARS {
            return e;
        }
        let message = e.message.replace(path, &echo(path));
        Error { message, ..e }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_are_kept_and_long_ones_keep_head_tail_and_length() {
        assert_eq!(capped("model.pt", 200), "model.pt");
        let long = format!("/{}/model.pt", "a".repeat(1 << 20));
        let c = capped(&long, 200);
        assert_eq!(
            c.chars().count(),
            150 + 50 + "…[1048586 bytes in all]…".chars().count()
        );
        assert!(c.starts_with("/aaa") && c.ends_with("a/model.pt"), "{c}");
        assert!(c.contains("[1048586 bytes in all]"), "{c}");
        // Multi-byte characters are never split.
        assert_eq!(
            capped(&"é".repeat(300), 200)
                .chars()
                .filter(|&ch| ch == 'é')
                .count(),
            200
        );
    }

    #[test]
    fn quoted_spans_are_capped_and_the_rest_kept() {
        let key = "k".repeat(5000);
        let msg = format!("unknown field `{key}`, expected one of `loss`, `tau` at line 1");
        let out = echo_quoted(&msg);
        assert!(out.len() < 400, "{out}");
        assert!(out.starts_with("unknown field `kkk"));
        assert!(
            out.ends_with("kkk`, expected one of `loss`, `tau` at line 1"),
            "{out}"
        );
        assert_eq!(echo_quoted("no \"closing quote"), "no \"closing quote");
    }

    #[test]
    fn every_echo_of_a_long_path_is_capped() {
        let path = "/d".repeat(1000);
        let e = Error::invalid(format!("{path}/config.json: bad; see {path}"));
        let out = echo_path(&path, Err::<(), _>(e)).unwrap_err().message;
        assert!(out.len() < 600, "{out}");
        assert!(out.contains("/config.json: bad; see /d/d"), "{out}");
    }
}
