//! Python's `json.dumps` for template values: the `tojson` filter of transformers' chat
//! templates (`transformers/utils/chat_template_utils.py`) is `json.dumps(x, ensure_ascii=False,
//! indent=None, separators=None, sort_keys=False)`, and templates print tool schemas with it, so
//! the text the model sees depends on its exact spacing, key order and number formatting
//! (`1e-05`, `100.0`, `1e+20`), which serde_json writes differently.

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// `json.dumps` options.
pub struct Options {
    pub ensure_ascii: bool,
    /// None: one line; Some(s): a newline and s repeated per level before each item.
    pub indent: Option<String>,
    pub item_separator: String,
    pub key_separator: String,
    pub sort_keys: bool,
    /// The most bytes the text may take (a template's budget), and the deepest nesting.
    pub max_len: u64,
    pub max_depth: usize,
}

impl Options {
    /// Python's defaults for the separators: (", ", ": ") on one line, ("," ": ") when indented.
    pub fn new(
        ensure_ascii: bool,
        indent: Option<String>,
        separators: Option<(String, String)>,
        sort_keys: bool,
    ) -> Options {
        let (item_separator, key_separator) = separators.unwrap_or_else(|| {
            let item = if indent.is_some() { "," } else { ", " };
            (item.to_string(), ": ".to_string())
        });
        Options {
            ensure_ascii,
            indent,
            item_separator,
            key_separator,
            sort_keys,
            max_len: u64::MAX,
            max_depth: usize::MAX,
        }
    }

    /// The same options with bounds on the text's length and nesting.
    pub fn bounded(self, max_len: u64, max_depth: usize) -> Options {
        Options {
            max_len,
            max_depth,
            ..self
        }
    }
}

/// `json.dumps(value, ...)`.
pub fn dumps(value: &Value, options: &Options) -> Result<String, Error> {
    let mut out = String::new();
    write_value(&mut out, value, options, 0)?;
    Ok(out)
}

fn not_serializable(kind: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("tojson: object of type {kind} is not JSON serializable"),
    )
}

/// Checks the bounds before each value: nesting (json.dumps' RecursionError) and length.
fn check_bounds(out: &str, o: &Options, depth: usize) -> Result<(), Error> {
    if depth > o.max_depth {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: the value nests deeper than {} levels", o.max_depth),
        ));
    }
    if out.len() as u64 > o.max_len {
        return Err(too_long(o));
    }
    Ok(())
}

fn too_long(o: &Options) -> Error {
    Error::new(
        ErrorKind::OutOfFuel,
        format!(
            "tojson: the text would exceed the {} bytes left in the rendering's budget",
            o.max_len
        ),
    )
}

fn write_value(out: &mut String, v: &Value, o: &Options, depth: usize) -> Result<(), Error> {
    check_bounds(out, o, depth)?;
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
        ValueKind::Number => out.push_str(&float_repr(f64::try_from(v.clone())?)),
        ValueKind::String => write_string(out, v.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, '[', ']', items.len(), o, depth, |out, i| {
                write_value(out, &items[i], o, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in v.try_iter()? {
                let value = v.get_item(&key)?;
                entries.push((key_string(&key)?, value));
            }
            if o.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, '{', '}', entries.len(), o, depth, |out, i| {
                write_string(out, &entries[i].0, o.ensure_ascii);
                out.push_str(&o.key_separator);
                write_value(out, &entries[i].1, o, depth + 1)
            })?;
        }
        other => return Err(not_serializable(other)),
    }
    Ok(())
}

/// Python turns int, float, bool and None keys into strings; other keys are a TypeError.
fn key_string(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::None => Ok("null".into()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::Number if key.is_integer() => Ok(key.to_string()),
        ValueKind::Number => Ok(float_repr(f64::try_from(key.clone())?)),
        other => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: keys must be str, int, float, bool or None, not {other}"),
        )),
    }
}

fn write_container(
    out: &mut String,
    open: char,
    close: char,
    len: usize,
    o: &Options,
    depth: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(indent) = &o.indent {
            // The indentation of a deep level can be far longer than the text so far.
            let width = (indent.len() as u64).saturating_mul(level as u64);
            if (out.len() as u64).saturating_add(width) > o.max_len {
                return Err(too_long(o));
            }
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
        Ok(())
    };
    for i in 0..len {
        if i > 0 {
            out.push_str(&o.item_separator);
        }
        newline(out, depth + 1)?;
        item(out, i)?;
    }
    newline(out, depth)?;
    out.push(close);
    Ok(())
}

fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest digits that round-trip, positional for exponents in
/// [-4, 16), else scientific with a signed two-digit exponent; NaN and infinities as json.dumps
/// writes them.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    // Rust's `{:e}` is the shortest round-trip form too: "1.2345e-5", "1e20", "0e0".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let body = if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            let padded = format!("{digits:0<int_len$}");
            let (int, frac) = padded.split_at(int_len);
            format!("{int}.{}", if frac.is_empty() { "0" } else { frac })
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{first}{frac}e{esign}{:02}", exp.abs())
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr() {
        // Expected values are Python 3.11's repr() of the same floats.
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (100.0, "100.0"),
            (0.5, "0.5"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1234567890123456.0, "1234567890123456.0"),
            (1e16, "1e+16"),
            (1e20, "1e+20"),
            (1.2345e300, "1.2345e+300"),
            (-2.5, "-2.5"),
            (3.141592653589793, "3.141592653589793"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (x, want) in cases {
            assert_eq!(float_repr(x), want, "repr({x:e})");
        }
    }

    #[test]
    fn dumps_matches_python_layout() {
        let v: Value =
            serde_json::from_str(r#"{"b": [1, 2.0, {"x": null}], "a": "é\n\"", "e": {}, "l": []}"#)
                .unwrap();
        let one_line = Options::new(false, None, None, false);
        assert_eq!(
            dumps(&v, &one_line).unwrap(),
            r#"{"b": [1, 2.0, {"x": null}], "a": "é\n\"", "e": {}, "l": []}"#
        );
        let indented = Options::new(true, Some("  ".into()), None, true);
        assert_eq!(
            dumps(&v, &indented).unwrap(),
            "{\n  \"a\": \"\\u00e9\\n\\\"\",\n  \"b\": [\n    1,\n    2.0,\n    {\n      \"x\": null\n    }\n  ],\n  \"e\": {},\n  \"l\": []\n}"
        );
        let tight = Options::new(false, None, Some((",".into(), ":".into())), false);
        assert_eq!(dumps(&Value::from(vec![1, 2]), &tight).unwrap(), "[1,2]");
        let emoji = Options::new(true, None, None, false);
        assert_eq!(
            dumps(&Value::from("😀"), &emoji).unwrap(),
            r#""\ud83d\ude00""#
        );
    }
}
