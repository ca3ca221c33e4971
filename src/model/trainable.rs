//! Trainer key `trainable`: which parameters train, as a list of name patterns.
//!
//! A pattern is a shell glob over the whole parameter name (`*` also matches dots:
//! `model.layers.*.mlp.*`); a leading `!` makes it an exclusion. The patterns apply in order,
//! the last one that matches a name decides, and a list that starts with an exclusion starts
//! from "everything trains" (so `["!model.embed_tokens.*"]` is everything but the embeddings),
//! otherwise from "nothing trains". Every pattern must match some parameter (a typo would
//! otherwise silently train everything or nothing).

use crate::error::{Error, Result};
use glob::Pattern;

fn parse(pattern: &str) -> Result<(bool, Pattern)> {
    let (include, glob) = match pattern.strip_prefix('!') {
        Some(rest) => (false, rest),
        None => (true, pattern),
    };
    let compiled = Pattern::new(glob).map_err(|e| {
        Error::config(format!(
            "trainable pattern {pattern:?} is not a valid glob: {e}"
        ))
    })?;
    Ok((include, compiled))
}

/// Which of `names` train under `patterns` (see the module comment), or a config error naming
/// the pattern that matches nothing. `describe` names the model in messages.
pub fn select(names: &[String], patterns: &[String], describe: &str) -> Result<Vec<bool>> {
    if patterns.is_empty() {
        return Err(Error::config(
            "trainable is an empty list: no parameter would train (leave the key out to train \
             all of them)",
        ));
    }
    let starts_excluded = !patterns[0].starts_with('!');
    let mut trains = vec![!starts_excluded; names.len()];
    for text in patterns {
        let (include, pattern) = parse(text)?;
        let mut matched = false;
        for (name, t) in names.iter().zip(trains.iter_mut()) {
            if pattern.matches(name) {
                *t = include;
                matched = true;
            }
        }
        if !matched {
            return Err(Error::config(format!(
                "trainable pattern {text:?} matches no parameter of {describe} (its names look \
                 like {:?}; a tied output head is listed under the embedding's name)",
                names.first().map(String::as_str).unwrap_or("")
            )));
        }
    }
    if !trains.iter().any(|&t| t) {
        return Err(Error::config(format!(
            "trainable {patterns:?} leaves no parameter of {describe} to train"
        )));
    }
    Ok(trains)
}

#[cfg(test)]
mod tests {
    use super::select;

    fn names() -> Vec<String> {
        [
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.1.mlp.up_proj.weight",
            "model.norm.weight",
        ]
        .map(String::from)
        .to_vec()
    }

    fn run(patterns: &[&str]) -> Vec<bool> {
        let patterns: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        select(&names(), &patterns, "m").unwrap()
    }

    #[test]
    fn inclusions_exclusions_and_the_last_match_decides() {
        assert_eq!(
            run(&["!model.embed_tokens.*"]),
            [false, true, true, true, true]
        );
        assert_eq!(run(&["*.mlp.*"]), [false, false, true, true, false]);
        assert_eq!(
            run(&["*", "!*.mlp.*", "model.layers.1.*"]),
            [true, true, false, true, true]
        );
    }

    #[test]
    fn typos_and_empty_selections_are_refused() {
        let err = |p: &[&str]| {
            let p: Vec<String> = p.iter().map(|s| s.to_string()).collect();
            select(&names(), &p, "m").unwrap_err().message
        };
        assert!(err(&["*.mpl.*"]).contains("\"*.mpl.*\" matches no parameter"));
        assert!(err(&[]).contains("empty list"));
        assert!(err(&["!*"]).contains("leaves no parameter"));
        assert!(err(&["model.[layers"]).contains("not a valid glob"));
    }
}
