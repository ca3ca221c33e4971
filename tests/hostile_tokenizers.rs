//! Tokenizers and chat templates from strangers: a template may not run forever, allocate
//! without bound or overflow the stack; text may not panic the tokenizer or poison its handle;
//! a tokenizer.json may not panic or reserve gigabytes. Each case is a clean error.

use adpo::ffi::tokenizer::*;
use adpo::tokenizer::ChatOptions;
use adpo::{Status, Tokenizer};
use serde_json::{json, Value};
use std::ffi::CString;
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

/// Renders `hostile` and then a plain template on one tokenizer, on a thread with a 1 MB stack:
/// the first is an INVALID_ARGUMENT error whose message has `wanted` (and is under 4 KB), within
/// 20 s, and the tokenizer renders the second afterwards.
fn refused_then_renders(hostile: &str, wanted: &str) {
    let hostile = hostile.to_string();
    let wanted = wanted.to_string();
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            let tok = load("qwen");
            let options = |t: &str| ChatOptions::from_json(&json!({ "template": t }).to_string());
            let start = Instant::now();
            let e = tok
                .apply_chat_template_with(USER, &options(&hostile).unwrap())
                .expect_err(&hostile);
            assert_eq!(
                e.status,
                Status::InvalidArgument,
                "{hostile}: {}",
                e.message
            );
            assert!(e.message.contains(&wanted), "{hostile}: {}", e.message);
            assert!(
                e.message.len() < 4096,
                "{hostile}: a message of {} bytes",
                e.message.len()
            );
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{hostile}: took {:?}",
                start.elapsed()
            );
            let plain = "{% for m in messages %}[{{ m.role }}: {{ m.content }}]{% endfor %}";
            let out = tok.apply_chat_template_with(USER, &options(plain).unwrap());
            assert_eq!(out.unwrap(), "[user: hi]", "after {hostile}");
        })
        .unwrap()
        .join()
        .unwrap()
}

/// A list `+` is lazy in minijinja until the concatenations nest 33 deep, then it copies every
/// item: doubling a list 64 times asked for 2^33 items. Each doubling now needs the fuel for
/// every item it may copy; references to one list twice at each of 40 levels are walked (printed,
/// compared, hashed) within the fuel left.
#[test]
fn doubling_a_list_runs_out_of_fuel_not_memory() {
    let double = |init: &str, step: &str, then: &str| {
        format!("{{% set ns = namespace(l={init}) %}}{{% for i in range(64) %}}{{% set ns.l = {step} %}}{{% endfor %}}{then}")
    };
    for then in [
        "{{ ns.l|length }}",
        "{{ ns.l }}",
        "{% for x in ns.l %}{% endfor %}",
        "{{ ns.l ~ 'x' }}",
    ] {
        refused_then_renders(&double("[1]", "ns.l + ns.l", then), "fuel");
    }
    // Unsized (a chain of a range and a list) and through the chain filter.
    refused_then_renders(
        &double("range(1)|chain([1])", "ns.l + ns.l", "{{ ns.l|first }}"),
        "fuel",
    );
    refused_then_renders(
        &double("[1]", "ns.l|chain(ns.l)", "{{ ns.l|length }}"),
        "fuel",
    );
    // Shared: 2^40 leaves in 40 lists of two references each.
    let shared = "{% set ns = namespace(a=[1], b=[1]) %}{% for i in range(40) %}{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% endfor %}";
    for then in [
        "{{ ns.a ~ 'x' }}",
        "{{ ns.a|string|length }}",
        "{{ ns.a == ns.b }}",
        "{{ ns.a < ns.b }}",
        "{{ {ns.a: 1}|length }}",
        "{{ ns.a|pprint|length }}",
    ] {
        refused_then_renders(&format!("{shared}{then}"), "fuel");
    }
}

/// ~400,000 levels: 8,000 rounds of 50 list literals (about half the fuel). minijinja's
/// printing, comparing and hashing recurse once a level; they now stop 500 levels deep.
#[test]
fn walking_a_value_nested_400000_deep_is_refused_not_a_stack_overflow() {
    let level = format!("{}ns.l{}", "[".repeat(50), "]".repeat(50));
    let build = format!("{{% set ns = namespace(l=[]) %}}{{% for i in range(8000) %}}{{% set ns.l = {level} %}}{{% endfor %}}");
    for then in [
        "{{ ns.l ~ 'x' }}",
        "{{ ns.l|string }}",
        "{{ ns.l == [ns.l] }}",
        "{{ ns.l != [ns.l] }}",
        "{{ ns.l < [ns.l] }}",
        "{{ [ns.l, [ns.l]]|sort|length }}",
        "{{ {ns.l: 1}|length }}",
        "{{ ns.l in [[ns.l]] }}",
        "{{ ns.l|pprint }}",
        "{{ '{}'.format(ns.l) }}",
        "{{ '%s'|format(ns.l) }}",
        "{{ [ns.l]|join }}",
    ] {
        refused_then_renders(&format!("{build}{then}"), "nested deeper than");
    }
    // An exception's message prints the value cut short (500 levels, then `...`).
    refused_then_renders(&format!("{build}{{{{ raise_exception(ns.l) }}}}"), "...]]]");
    // Unwalked, and compared with itself (the same list: not walked), it renders.
    let tok_render = |t: String| render(&t).unwrap();
    assert_eq!(tok_render(format!("{build}{{{{ ns.l == ns.l }}}}")), "True");
    assert_eq!(tok_render(format!("{build}{{{{ ns.l|length }}}}")), "1");
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
    // Walks 401 levels deep (under the 500 allowed) print, compare and hash.
    let deep = "{% set ns = namespace(l=[], m=[]) %}{% for i in range(400) %}{% set ns.l = [ns.l] %}{% set ns.m = [ns.m] %}{% endfor %}";
    let walks =
        "{{ (ns.l ~ '')|length }} {{ ns.l == ns.m }} {{ ns.l < [ns.m] }} {{ {ns.l: 1}[ns.m] }}";
    assert_eq!(
        render(&format!("{deep}{walks}")).unwrap(),
        "802 True True 1"
    );
    // Lists built with `+` as templates build them.
    let appended = "{% set ns = namespace(l=[]) %}{% for i in range(2000) %}{% set ns.l = ns.l + [i] %}{% endfor %}{{ ns.l|length }} {{ ns.l[1999] }} {{ (ns.l + ns.l)|sum }}";
    assert_eq!(render(appended).unwrap(), "2000 1999 3998000");
}

/// Text that makes onig give up is an error of that call; the tokenizer goes on working, also
/// through the C functions (no poisoned handle).
#[test]
fn text_that_defeats_the_regex_is_invalid_argument_and_the_handle_stays_usable() {
    let mut text = " ".repeat(12 << 20);
    text.push('a');
    for name in ["llama3", "qwen"] {
        let path = CString::new(fixture(name).to_str().unwrap()).unwrap();
        let mut tok = std::ptr::null_mut();
        let st = adpo_tokenizer_load(path.as_ptr(), &mut tok, std::ptr::null_mut());
        assert_eq!(st, Status::Ok);
        let c_text = CString::new(text.as_str()).unwrap();
        let mut len = 0usize;
        let encode = |t: &CString, len: &mut usize| {
            adpo_tokenizer_encode(
                tok,
                t.as_ptr(),
                false,
                std::ptr::null_mut(),
                0,
                len,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(encode(&c_text, &mut len), Status::InvalidArgument, "{name}");
        assert_eq!(
            encode(&CString::new("hello").unwrap(), &mut len),
            Status::Ok,
            "{name}"
        );
        assert!(len > 0);
        adpo_tokenizer_free(tok);
    }
}

/// The qwen fixture with `edit` applied to its tokenizer.json, in a fresh directory.
fn edited(label: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let mut json: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("qwen").join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    edit(&mut json);
    let d = std::env::temp_dir().join(format!("adpo-hostile-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("tokenizer.json"), json.to_string()).unwrap();
    d
}

#[test]
fn a_catastrophic_regex_in_tokenizer_json_is_invalid_argument() {
    let d = edited("regex", |j| {
        j["pre_tokenizer"] = json!({"type": "Split", "pattern": {"Regex": "(a+)+$"},
                                    "behavior": "Isolated", "invert": false});
    });
    let tok = Tokenizer::load(&d).unwrap();
    let e = tok
        .encode(&format!("{}!", "a".repeat(40)), false)
        .unwrap_err();
    assert_eq!(e.status, Status::InvalidArgument, "{}", e.message);
    assert!(tok.encode("hello", false).is_ok());
}

fn load_refused(label: &str, edit: impl FnOnce(&mut Value), field: &str) {
    let d = edited(label, edit);
    let e = match Tokenizer::load(&d) {
        Ok(_) => panic!("{label}: loaded"),
        Err(e) => e,
    };
    assert_eq!(e.status, Status::Model, "{label}: {}", e.message);
    assert!(
        e.message.contains("tokenizer.json") && e.message.contains(field),
        "{label}: {}",
        e.message
    );
}

/// base64 of a charsmap: the trie's byte count, the trie, the normalized text.
fn charsmap(trie_bytes: u32, trie: &[u32], text: &[u8]) -> String {
    let mut bytes = trie_bytes.to_le_bytes().to_vec();
    trie.iter().for_each(|u| bytes.extend(u.to_le_bytes()));
    bytes.extend(text);
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[test]
fn hostile_tokenizer_json_is_a_clean_load_error() {
    load_refused(
        "template",
        |j| {
            j["post_processor"] = json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<nope>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {}})
        },
        "post_processor.single[0]",
    );
    load_refused(
        "trie",
        |j| {
            j["normalizer"] =
                json!({"type": "Precompiled", "precompiled_charsmap": charsmap(1 << 31, &[], b"")})
        },
        "normalizer.precompiled_charsmap",
    );
    for (label, field) in [("normalizer", "normalizer"), ("decoder", "decoder")] {
        load_refused(
            &format!("{label}-empty"),
            |j| j[field] = json!({"type": "Replace", "pattern": {"String": ""}, "content": "x"}),
            &format!("{field}.pattern.String"),
        );
        load_refused(
            &format!("{label}-long"),
            |j| {
                j[field] = json!({"type": "Replace", "pattern": {"String": "a"}, "content": "x".repeat(1000)})
            },
            &format!("{field}.content"),
        );
    }
    // A trie whose units point anywhere: an error at load or at encode, never a panic.
    let d = edited("garbage", |j| {
        j["normalizer"] = json!({"type": "Precompiled",
            "precompiled_charsmap": charsmap(16, &[0xffff_ffff, 0x7fff_fc00, 0x1234_5678, 0xdead_beef], b"ab\0")});
    });
    if let Ok(tok) = Tokenizer::load(&d) {
        if let Err(e) = tok.encode("hello world", false) {
            assert_eq!(e.status, Status::InvalidArgument, "{}", e.message);
        }
    }
}
