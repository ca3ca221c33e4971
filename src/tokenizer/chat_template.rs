//! Chat templates: Jinja rendered with minijinja, set up as transformers sets up Jinja2 in
//! `transformers/utils/chat_template_utils.py` (`_cached_compile_jinja_template`): trim_blocks
//! and lstrip_blocks, loop controls, `raise_exception`, `tojson` as `json.dumps`,
//! `strftime_now`; plus Python's string and dict methods (minijinja-contrib's pycompat), which
//! Jinja2 has because its values are Python objects. The variables are those of
//! `apply_chat_template`: the named special tokens, `messages`, `tools`, `documents`,
//! `add_generation_prompt`, and the caller's extra variables.
//!
//! Every rendering error is `Status::InvalidArgument`; `raise_exception(msg)` reports `msg`.

use super::files::Templates;
use super::{messages, py_json, template_budget};
use crate::error::{Error, Result};
use indexmap::IndexMap;
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind, State, UndefinedBehavior};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Options of one rendering (JSON; unknown keys are an error).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatOptions {
    /// The name of one of the tokenizer's templates, or a template's source. Default: the
    /// tokenizer's "tool_use" template when `tools` is given and it has one, else its default.
    pub template: Option<String>,
    #[serde(default)]
    pub add_generation_prompt: bool,
    /// Tool schemas (the `tools` variable; none when absent).
    pub tools: Option<Value>,
    /// Documents for retrieval-augmented templates (the `documents` variable).
    pub documents: Option<Value>,
    /// Further variables, such as {"enable_thinking": false}; they may override the special
    /// token variables, not the ones above.
    pub variables: Option<Value>,
}

impl ChatOptions {
    pub fn from_json(json: &str) -> Result<ChatOptions> {
        if json.trim().is_empty() {
            return Ok(ChatOptions::default());
        }
        serde_json::from_str(json).map_err(|e| {
            Error::config(format!(
                "options_json: {}",
                crate::echo::echo_quoted(&e.to_string())
            ))
        })
    }
}

const RESERVED: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

/// The tokenizer's templates, compiled once.
pub struct ChatTemplates {
    env: Environment<'static>,
    templates: Templates,
    /// Templates that do not compile: name -> message (reported when one is used).
    broken: BTreeMap<String, String>,
    /// Named special tokens as template variables (bos_token = "<s>", ...).
    special: BTreeMap<String, String>,
}

impl ChatTemplates {
    pub fn new(templates: Templates, special: BTreeMap<String, String>) -> ChatTemplates {
        let mut env = environment();
        let mut broken = BTreeMap::new();
        let all = templates.default.iter().map(|s| (DEFAULT, s));
        let named = templates.named.iter().map(|(n, s)| (n.as_str(), s));
        for (name, source) in all.chain(named) {
            if let Err(e) = env.add_template_owned(key(name), rewrite_generation_tags(source)) {
                broken.insert(name.to_string(), describe(&e));
            }
        }
        ChatTemplates {
            env,
            templates,
            broken,
            special,
        }
    }

    /// Renders `messages_json` (see [`messages::parse`]) with `options`.
    pub fn render(&self, messages_json: &str, options: &ChatOptions) -> Result<String> {
        let messages = messages::parse(messages_json)?;
        let context = self.context(messages, options)?;
        let source;
        let template = match self.choose(options)? {
            Choice::Stored(name) => {
                if let Some(message) = self.broken.get(name) {
                    return Err(Error::invalid(format!(
                        "chat template {name:?} does not compile: {message}"
                    )));
                }
                self.env.get_template(&key(name)).map_err(template_error)?
            }
            Choice::Source(text) => {
                source = rewrite_generation_tags(text);
                self.env
                    .template_from_str(&source)
                    .map_err(template_error)?
            }
        };
        // The error is described on the rendering's thread: a minijinja error may hold the
        // template's values (debug info), and dropping a deeply nested one needs that stack.
        template_budget::on_render_stack(|| template.render(context).map_err(template_error))
    }

    fn choose<'a>(&'a self, options: &'a ChatOptions) -> Result<Choice<'a>> {
        let t = &self.templates;
        if let Some(template) = &options.template {
            return Ok(if t.named.contains_key(template) {
                Choice::Stored(template)
            } else {
                Choice::Source(template)
            });
        }
        if options.tools.is_some() && t.named.contains_key("tool_use") {
            return Ok(Choice::Stored("tool_use"));
        }
        if t.default.is_some() {
            return Ok(Choice::Stored(DEFAULT));
        }
        Err(Error::invalid(if t.named.is_empty() {
            "this tokenizer has no chat template (no chat_template in tokenizer_config.json, no \
             chat_template.jinja): pass one as options {\"template\": ...}"
                .to_string()
        } else {
            format!(
                "this tokenizer has several chat templates and none named \"default\": pass \
                 options {{\"template\": NAME}} with one of {:?}",
                t.named.keys().collect::<Vec<_>>()
            )
        }))
    }

    fn context(&self, messages: Value, options: &ChatOptions) -> Result<Value> {
        let mut ctx = IndexMap::<Value, Value>::new();
        for (name, content) in &self.special {
            ctx.insert(Value::from(name.as_str()), Value::from(content.as_str()));
        }
        if let Some(vars) = &options.variables {
            if vars.kind() != ValueKind::Map {
                return Err(Error::config(format!(
                    "options_json: \"variables\" must be an object, not {}",
                    vars.kind()
                )));
            }
            for name in vars.try_iter().map_err(template_error)? {
                if let Some(reserved) = RESERVED.iter().find(|r| name.as_str() == Some(r)) {
                    return Err(Error::config(format!(
                        "options_json: variables.{reserved} is not allowed: {reserved} has its \
                         own option or argument"
                    )));
                }
                let value = vars.get_item(&name).map_err(template_error)?;
                ctx.insert(name, value);
            }
        }
        for (name, list) in [("tools", &options.tools), ("documents", &options.documents)] {
            if let Some(v) = list
                .as_ref()
                .filter(|v| !v.is_none() && v.kind() != ValueKind::Seq)
            {
                return Err(Error::config(format!(
                    "options_json: \"{name}\" must be a list, not {}",
                    v.kind()
                )));
            }
        }
        let or_none = |v: &Option<Value>| v.clone().unwrap_or(Value::from(()));
        ctx.insert(Value::from("messages"), messages);
        ctx.insert(Value::from("tools"), or_none(&options.tools));
        ctx.insert(Value::from("documents"), or_none(&options.documents));
        ctx.insert(
            Value::from("add_generation_prompt"),
            Value::from(options.add_generation_prompt),
        );
        Ok(Value::from_object(ctx))
    }
}

enum Choice<'a> {
    Stored(&'a str),
    Source(&'a str),
}

const DEFAULT: &str = "default";

fn key(name: &str) -> String {
    format!("chat_template:{name}")
}

/// The environment transformers builds for chat templates, in minijinja.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    // Jinja2's default Undefined: prints as "", is falsy, iterates as empty; attributes of it fail.
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    // Templates render plain text; Jinja2's sandbox in transformers does not autoescape.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_unknown_method_callback(template_budget::unknown_method);
    env.set_fuel(Some(template_budget::FUEL));
    env.set_formatter(template_budget::formatter);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env
}

/// The message of `raise_exception(msg)`, kept as the error's source so that it reaches the
/// caller verbatim.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn raise_exception(message: Value) -> std::result::Result<Value, minijinja::Error> {
    let text = match message.as_str() {
        Some(s) => s.to_string(),
        None => message.to_string(),
    };
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, text.clone()).with_source(Raised(text)))
}

/// `datetime.now().strftime(format)`: the local time, as transformers gives it.
fn strftime_now(format: &str) -> std::result::Result<String, minijinja::Error> {
    jiff::fmt::strtime::format(format, &jiff::ZonedDateTime::now()).map_err(|e| {
        minijinja::Error::new(ErrorKind::InvalidOperation, format!("strftime_now: {e}"))
    })
}

/// `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, within
/// the rendering's budget.
fn tojson(
    state: &State,
    value: &Value,
    ensure_ascii: Option<bool>,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<String, minijinja::Error> {
    let ensure_ascii = match ensure_ascii {
        Some(b) => b,
        None => kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => {
            Some(v.as_str().unwrap_or_default().to_string())
        }
        Some(v) => {
            let n = i64::try_from(v.clone()).map_err(|_| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an int or a string",
                )
            })?;
            let n = n.max(0) as u64;
            template_budget::charge_bytes(state, n)?;
            Some(" ".repeat(n as usize))
        }
    };
    let separators = match kwargs.get::<Option<Value>>("separators")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                    Some((a.to_string(), b.to_string()))
                }
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let options = py_json::Options::new(ensure_ascii, indent, separators, sort_keys).bounded(
        template_budget::bytes_left(state),
        template_budget::TOJSON_DEPTH,
    );
    py_json::dumps(value, &options)
}

/// transformers' `{% generation %} ... {% endgeneration %}` marks assistant text for its
/// assistant-token mask; it renders its body unchanged. minijinja has no such tag: it becomes
/// `{% if true %} ... {% endif %}`, keeping any whitespace control (`-`, `+`) the tags had.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (open, body) = split_control(inner, true);
        let (body, close) = split_control(body, false);
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => out.push_str(&format!("{{%{open} {r} {close}%}}")),
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Splits a leading (or trailing) whitespace-control marker `-` or `+` off a tag's inside.
fn split_control(s: &str, leading: bool) -> (&str, &str) {
    let marker = |c: char| c == '-' || c == '+';
    if leading && s.starts_with(marker) {
        (&s[..1], &s[1..])
    } else if !leading && s.ends_with(marker) {
        (&s[..s.len() - 1], &s[s.len() - 1..])
    } else if leading {
        ("", s)
    } else {
        (s, "")
    }
}

/// The message of the `raise_exception` call behind `e`, if it came from one.
fn raised(e: &minijinja::Error) -> Option<&str> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(r) = err.downcast_ref::<Raised>() {
            return Some(&r.0);
        }
        source = err.source();
    }
    None
}

/// A compile error's message (with its location).
fn describe(e: &minijinja::Error) -> String {
    raised(e).map_or_else(|| e.to_string(), str::to_string)
}

fn template_error(e: minijinja::Error) -> Error {
    Error::invalid(match raised(&e) {
        Some(message) => format!("chat template raised an exception: {message}"),
        None if e.kind() == ErrorKind::OutOfFuel => format!(
            "chat template: {e}: a rendering may run {} units of work (an instruction, or 64 \
             bytes of text or data created)",
            template_budget::FUEL
        ),
        None => format!("chat template: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, messages: &str, options: &str) -> Result<String> {
        let t = ChatTemplates::new(
            Templates {
                default: Some(template.to_string()),
                named: BTreeMap::new(),
            },
            BTreeMap::from([("bos_token".to_string(), "<s>".to_string())]),
        );
        t.render(messages, &ChatOptions::from_json(options)?)
    }

    const ONE: &str = r#"[{"role": "user", "content": " hi "}]"#;

    #[test]
    fn generation_tags_render_their_body() {
        assert_eq!(
            rewrite_generation_tags("a{%- generation +%}b{% endgeneration -%} c{{ x }}{% if y %}"),
            "a{%- if true +%}b{% endif -%} c{{ x }}{% if y %}"
        );
        let out = render(
            "{% for m in messages %}{% generation %}[{{ m.content.strip() }}]{% endgeneration %}{% endfor %}",
            ONE,
            "",
        );
        assert_eq!(out.unwrap(), "[hi]");
    }

    #[test]
    fn raise_exception_reports_the_templates_message() {
        let e = render("{{ raise_exception('roles must alternate') }}", ONE, "").unwrap_err();
        assert_eq!(e.status, crate::Status::InvalidArgument);
        assert_eq!(
            e.message,
            "chat template raised an exception: roles must alternate"
        );
        let e = render("{{ messages[0].content.nosuchmethod() }}", ONE, "").unwrap_err();
        assert!(e.message.starts_with("chat template: "), "{}", e.message);
        let e = render("{% if %}", ONE, "").unwrap_err();
        assert!(e.message.contains("does not compile"), "{}", e.message);
    }

    #[test]
    fn variables_and_options() {
        let t = "{{ bos_token }}{{ x }}|{{ add_generation_prompt }}|{{ tools is none }}";
        // Booleans print as Python writes them (Jinja2 does).
        assert_eq!(render(t, ONE, "").unwrap(), "<s>|False|True");
        let opts = r#"{"variables": {"x": 1, "bos_token": "B"}, "add_generation_prompt": true}"#;
        assert_eq!(render(t, ONE, opts).unwrap(), "B1|True|True");
        let e = render(t, ONE, r#"{"variables": {"messages": []}}"#).unwrap_err();
        assert_eq!(e.status, crate::Status::InvalidConfig);
        let e = render(t, ONE, r#"{"add_generation_promt": true}"#).unwrap_err();
        assert_eq!(e.status, crate::Status::InvalidConfig);
        assert!(e.message.contains("add_generation_promt"), "{}", e.message);
        let own = r#"{"template": "{{ messages | length }}{{ strftime_now('%Y') | length }}"}"#;
        assert_eq!(render(t, ONE, own).unwrap(), "14");
    }
}
