//! Chat templates from strangers: a template may not run forever, allocate without bound or
//! overflow the stack. Each case is a clean error.

use adpo::tokenizer::ChatOptions;
use adpo::{Status, Tokenizer};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn fixture(name: &str) -> PathBuf {
    let dir = std::env::var("ADPO_FIXTURES").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/generated").to_string()
    });
    let p = PathBuf::from(dir).join("tokenizers").join(name);
    assert!(
        p.join("tokenizer.json").is_file(),
        "{}: run `make fixtures`",
        p.display()
    );
    p
}

fn load(name: &str) -> Tokenizer {
    Tokenizer::load(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {}", e.message))
}

const USER: &str = r#"[{"role": "user", "content": "hi"}]"#;

/// Renders `template` on a thread with a 1 MB stack (common in host thread pools).
fn render(template: &str) -> adpo::Result<String> {
    let template = template.to_string();
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            let tok = load("qwen");
            let options = ChatOptions::from_json(&json!({ "template": template }).to_string())?;
            tok.apply_chat_template_with(USER, &options)
        })
        .unwrap()
        .join()
        .unwrap()
}

fn refused(template: &str, wanted: &str) {
    let start = Instant::now();
    let e = render(template).expect_err(template);
    assert_eq!(
        e.status,
        Status::InvalidArgument,
        "{template}: {}",
        e.message
    );
    assert!(e.message.contains(wanted), "{template}: {}", e.message);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{template}: took {:?}",
        start.elapsed()
    );
}

#[test]
fn templates_that_never_finish_run_out_of_fuel() {
    refused(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "fuel",
    );
    refused(
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        "fuel",
    );
}

#[test]
fn templates_cannot_ask_for_unbounded_memory() {
    for t in [
        "{{ messages|tojson(indent=10**12) }}",
        "{{ 'a\nb'|indent(10**12) }}",
        "{{ '{:>1000000000000}'.format(1) }}",
        "{{ '%1000000000000d'|format(1) }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l * 2 %}{% endfor %}{{ ns.l|list|length }}",
        "{% set ns = namespace(s='a' * 1000) %}{% for i in range(64) %}{% set ns.s = ns.s.replace('a', 'aa') %}{% endfor %}{{ ns.s|length }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s.join([ns.s, ns.s, ns.s]) %}{% endfor %}{{ ns.s|length }}",
        "{% set ns = namespace(l=[messages]) %}{% for i in range(40) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l|tojson|length }}",
    ] {
        refused(t, "");
    }
}

#[test]
fn deeply_nested_values_are_refused_not_a_stack_overflow() {
    let build = "{% set ns = namespace(l=[]) %}{% for i in range(30000) %}{% set ns.l = [ns.l] %}{% endfor %}";
    refused(&format!("{build}{{{{ ns.l }}}}"), "nested deeper than 256");
    refused(&format!("{build}{{{{ ns.l|tojson }}}}"), "deeper than 256");
    // Built and dropped unprinted.
    assert_eq!(render(&format!("{build}ok")).unwrap(), "ok");
}

#[test]
fn legitimate_templates_still_render() {
    let indented = render("{{ messages|tojson(indent=2) }}").unwrap();
    assert!(
        indented.contains("\n  {\n    \"role\": \"user\""),
        "{indented}"
    );
    assert_eq!(render("{{ '{:>5}'.format(1) }}").unwrap(), "    1");
    let nested = "{% set ns = namespace(l=[]) %}{% for i in range(100) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l|tojson|length }}";
    assert_eq!(render(nested).unwrap(), "202");
}
