//! The chat messages a caller hands to a chat template: a JSON list of objects, checked before
//! rendering so that a malformed list is reported as such instead of as an obscure template
//! error, then turned into template values with their keys in the caller's order.

use crate::error::{Error, Result};
use minijinja::value::{Value, ValueKind};

/// Parses and checks `messages_json`: a JSON array of objects, each with a string "role" and a
/// "content" that is a string, a list of content-part objects ({"type": "text", ...}), or, for
/// a message with "tool_calls", null or absent. Other keys pass through to the template.
pub fn parse(messages_json: &str) -> Result<Value> {
    let messages: Value = serde_json::from_str(messages_json).map_err(|e| {
        let e = crate::echo::echo_quoted(&e.to_string());
        Error::invalid(format!("messages_json is not valid JSON: {e}"))
    })?;
    if messages.kind() != ValueKind::Seq {
        return Err(Error::invalid(format!(
            "messages_json must be a JSON list of message objects, not {}",
            messages.kind()
        )));
    }
    let mut out = Vec::new();
    for (i, message) in messages.try_iter().map_err(template_value)?.enumerate() {
        check(i, &message)?;
        out.push(alias_reasoning(message)?);
    }
    Ok(Value::from(out))
}

fn template_value(e: minijinja::Error) -> Error {
    Error::invalid(format!("messages_json: {e}"))
}

fn check(i: usize, message: &Value) -> Result<()> {
    if message.kind() != ValueKind::Map {
        return Err(Error::invalid(format!(
            "messages[{i}] must be an object with \"role\" and \"content\", not {}",
            message.kind()
        )));
    }
    let field = |k: &str| message.get_attr(k).unwrap_or_default();
    let role = field("role");
    if role.kind() != ValueKind::String {
        return Err(Error::invalid(if role.is_undefined() {
            format!("messages[{i}] has no \"role\"")
        } else {
            format!("messages[{i}].role must be a string, not {}", role.kind())
        }));
    }
    let content = field("content");
    let has_tool_calls = !field("tool_calls").is_undefined();
    match content.kind() {
        ValueKind::String => Ok(()),
        ValueKind::Seq => {
            for (j, part) in content.try_iter().map_err(template_value)?.enumerate() {
                if part.kind() != ValueKind::Map {
                    return Err(Error::invalid(format!(
                        "messages[{i}].content[{j}] must be a content object such as \
                         {{\"type\": \"text\", \"text\": ...}}, not {}",
                        part.kind()
                    )));
                }
            }
            Ok(())
        }
        ValueKind::Undefined | ValueKind::None if has_tool_calls => Ok(()),
        ValueKind::Undefined => Err(Error::invalid(format!(
            "messages[{i}] has no \"content\" (only a message with \"tool_calls\" may omit it)"
        ))),
        other => Err(Error::invalid(format!(
            "messages[{i}].content must be a string or a list of content objects, not {other}"
        ))),
    }
}

/// As transformers' `_alias_reasoning_fields`: a message's reasoning, given under
/// "reasoning_content", "thinking" or "reasoning" (the first that is not null), is also passed
/// as "thinking" and "reasoning_content", so templates that read either name see it.
fn alias_reasoning(message: Value) -> Result<Value> {
    let field = |k: &str| message.get_attr(k).unwrap_or_default();
    let reasoning = ["reasoning_content", "thinking", "reasoning"]
        .into_iter()
        .map(field)
        .find(|v| !v.is_undefined() && !v.is_none());
    let Some(reasoning) = reasoning else {
        return Ok(message);
    };
    // {"thinking": r, **message, "reasoning_content": r}: insertion order as in Python.
    let mut map = indexmap::IndexMap::<Value, Value>::new();
    map.insert(Value::from("thinking"), reasoning.clone());
    for key in message.try_iter().map_err(template_value)? {
        let value = message.get_item(&key).map_err(template_value)?;
        map.insert(key, value);
    }
    map.insert(Value::from("reasoning_content"), reasoning);
    Ok(Value::from_object(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        parse(json).unwrap_err().message
    }

    #[test]
    fn malformed_messages_are_named() {
        assert!(err("[{\"role\": \"user\"").contains("not valid JSON"));
        assert!(err("{\"role\": \"user\"}").contains("must be a JSON list"));
        assert!(err("[\"hi\"]").contains("messages[0] must be an object"));
        assert!(err("[{\"content\": \"hi\"}]").contains("messages[0] has no \"role\""));
        assert!(err("[{\"role\": 1, \"content\": \"x\"}]")
            .contains("messages[0].role must be a string"));
        assert!(
            err("[{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\"}]")
                .contains("messages[1] has no \"content\"")
        );
        assert!(
            err("[{\"role\": \"user\", \"content\": 5}]").contains("messages[0].content must be")
        );
        assert!(
            err("[{\"role\": \"user\", \"content\": [\"x\"]}]").contains("messages[0].content[0]")
        );
    }

    #[test]
    fn valid_forms_pass_and_reasoning_is_aliased() {
        let ok = parse(
            r#"[{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": null, "tool_calls": []},
                {"role": "assistant", "content": "4", "reasoning": "easy"}]"#,
        )
        .unwrap();
        let last = ok.get_item_by_index(2).unwrap();
        let keys: Vec<String> = last.try_iter().unwrap().map(|k| k.to_string()).collect();
        assert_eq!(
            keys,
            [
                "thinking",
                "role",
                "content",
                "reasoning",
                "reasoning_content"
            ]
        );
        assert_eq!(last.get_attr("thinking").unwrap().as_str(), Some("easy"));
        assert_eq!(
            last.get_attr("reasoning_content").unwrap().as_str(),
            Some("easy")
        );
    }
}
