//! Reading a config's JSON strictly, before serde maps it onto its struct: a JSON object,
//! every key given once at every level (serde_json's own maps keep the last of a repeated key,
//! so `{"tau": 0.8, "tau": 0.5}` would be read as 0.5), and arrays only where the declaration
//! says an option is a list.

use super::declare::{Opt, Shape};
use crate::echo::{echo, echo_quoted};
use crate::error::{Error, Result};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;

/// The config object of `json` (empty = `{}`), checked against the declared `options`.
pub(crate) fn parse_object(
    what: &str,
    json: &str,
    options: &[&[Opt]],
) -> Result<Map<String, Value>> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    let mut reader = serde_json::Deserializer::from_str(json);
    let value = Unique { path: "" }
        .deserialize(&mut reader)
        .and_then(|v| reader.end().map(|()| v))
        .map_err(|e| serde_error(what, e))?;
    let Value::Object(map) = value else {
        return Err(Error::config(format!(
            "{what} config must be a JSON object"
        )));
    };
    for (key, v) in &map {
        let declared = options
            .iter()
            .flat_map(|opts| opts.iter())
            .find(|o| o.key == key);
        match declared {
            Some(o) => arrays_where_declared(what, key, v, o.shape)?,
            // an unknown key: its struct's serde names it, whatever its value
            None if !options.is_empty() => {}
            None => arrays_where_declared(what, key, v, Shape::Plain)?,
        }
    }
    Ok(map)
}

/// `T` from a config object read by [`parse_object`].
pub(crate) fn from_object<T: for<'de> Deserialize<'de>>(
    what: &str,
    map: Map<String, Value>,
) -> Result<T> {
    serde_json::from_value(Value::Object(map)).map_err(|e| serde_error(what, e))
}

/// serde_json's message, which quotes the keys and values at fault, with those capped.
fn serde_error(what: &str, e: serde_json::Error) -> Error {
    Error::config(format!("{what} config: {}", echo_quoted(&e.to_string())))
}

fn scalars(items: &[Value]) -> bool {
    items.iter().all(|x| !x.is_array() && !x.is_object())
}

fn arrays_where_declared(what: &str, key: &str, value: &Value, shape: Shape) -> Result<()> {
    let refuse = |expected: &str| {
        Err(Error::config(format!(
            "{what} config: `{}` must be {expected}",
            echo(key)
        )))
    };
    match (value, shape) {
        (Value::Array(items), Shape::List) if !scalars(items) => {
            refuse("an array of numbers or strings")
        }
        (Value::Array(items), Shape::Lists)
            if !items
                .iter()
                .all(|x| matches!(x, Value::Array(i) if scalars(i))) =>
        {
            refuse("an array of arrays of token ids")
        }
        (Value::Array(_), Shape::List | Shape::Lists) => Ok(()),
        (Value::Array(_), _) => refuse("a JSON object or a single value, not an array"),
        (Value::Object(map), _) => map.iter().try_for_each(|(k, v)| {
            let inner = match shape {
                Shape::Object(lists) if lists.contains(&k.as_str()) => Shape::List,
                _ => Shape::Plain,
            };
            arrays_where_declared(what, k, v, inner)
        }),
        _ => Ok(()),
    }
}

/// A JSON value read as serde_json reads one, except that a key repeated in an object is an
/// error naming its path (`anchor.mode`).
struct Unique<'a> {
    path: &'a str,
}

impl<'de> DeserializeSeed<'de> for Unique<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(v.into())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Unique { path: self.path })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = format!("{}{key}", self.path);
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key `{path}`: a key may be given once"
                )));
            }
            let inner = format!("{path}.");
            let value = map.next_value_seed(Unique { path: &inner })?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_key_is_named_with_its_path() {
        let e = parse_object("x", r#"{"a": {"b": 1, "b": 2}}"#, &[]).unwrap_err();
        assert!(e.message.contains("duplicate key `a.b`"), "{}", e.message);
        let e = parse_object("x", r#"{"a": 1, "a": 1}"#, &[]).unwrap_err();
        assert!(e.message.contains("duplicate key `a`"), "{}", e.message);
        let e = parse_object("x", r#"{"l": [{"c": 1, "c": 1}]}"#, &[]).unwrap_err();
        assert!(e.message.contains("duplicate key `l.c`"), "{}", e.message);
        // The same key in sibling objects is no repetition.
        parse_object("x", r#"{"a": {"b": 1}, "c": {"b": 1}}"#, &[]).unwrap();
    }
}
