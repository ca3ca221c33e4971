//! Tokenizers and chat templates against the Python libraries: the fixtures of
//! tests/fixtures/make_tokenizers.py (`make fixtures`; ADPO_FIXTURES overrides the directory)
//! hold what the `tokenizers` package and transformers answer; adpo must answer the same.

use adpo::ffi::error::{adpo_error, adpo_error_free, adpo_error_message};
use adpo::ffi::tokenizer::*;
use adpo::ffi::version::adpo_string_free;
use adpo::tokenizer::ChatOptions;
use adpo::{Status, Tokenizer};
use serde_json::Value;
use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};

const DIRS: [&str; 4] = ["qwen", "llama3", "mistral", "mistral_extra"];

fn fixtures() -> PathBuf {
    let dir = std::env::var("ADPO_FIXTURES").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/generated").to_string()
    });
    let p = PathBuf::from(dir).join("tokenizers");
    assert!(
        p.join("qwen/tokenizer.json").is_file(),
        "{} missing: run `make fixtures`",
        p.display()
    );
    p
}

fn dir(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn load(name: &str) -> Tokenizer {
    Tokenizer::load(&dir(name)).unwrap_or_else(|e| panic!("{name}: {}", e.message))
}

fn expected(name: &str, file: &str) -> Value {
    let text = std::fs::read_to_string(dir(name).join(file)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[test]
fn ids_equal_the_python_package_with_and_without_special_tokens() {
    for name in DIRS {
        let tok = load(name);
        let rows = expected(name, "expected_encode.json");
        let rows = rows.as_array().unwrap();
        assert!(rows.len() >= 20, "{name}: too few test lines");
        let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
        for (key, special) in [("ids_special", true), ("ids_plain", false)] {
            for row in rows {
                let text = row["text"].as_str().unwrap();
                assert_eq!(
                    tok.encode(text, special).unwrap(),
                    ids(&row[key]),
                    "{name}: {key} of {text:?}"
                );
            }
            let batch = tok.encode_batch(&texts, special).unwrap();
            let want: Vec<Vec<i64>> = rows.iter().map(|r| ids(&r[key])).collect();
            assert_eq!(batch, want, "{name}: encode_batch {key}");
        }
    }
}

#[test]
fn decode_equals_the_python_package_with_and_without_skipping_special_tokens() {
    for name in DIRS {
        let tok = load(name);
        let rows = expected(name, "expected_encode.json");
        for row in rows.as_array().unwrap() {
            for kind in ["special", "plain"] {
                let seq = ids(&row[format!("ids_{kind}")]);
                for (suffix, skip) in [("", false), ("_skip", true)] {
                    let key = format!("decode_{kind}{suffix}");
                    let want = row[&key].as_str().unwrap();
                    assert_eq!(
                        tok.decode(&seq, skip).unwrap(),
                        want,
                        "{name}: {key} of {seq:?}"
                    );
                    let batch = tok.decode_batch(&[&seq, &[]], skip).unwrap();
                    assert_eq!(batch, [want, ""], "{name}: decode_batch {key}");
                }
            }
        }
    }
}

#[test]
fn chat_templates_render_exactly_as_transformers_and_raise_where_it_raises() {
    let mut raised = 0;
    for name in DIRS {
        let tok = load(name);
        let cases = expected(name, "expected_chat.json");
        for case in cases.as_array().unwrap() {
            let label = format!(
                "{name}: {} (gen={})",
                case["name"], case["add_generation_prompt"]
            );
            let messages = case["messages_json"].as_str().unwrap();
            let gen = case["add_generation_prompt"].as_bool().unwrap();
            let got = match case.get("options_json") {
                None => tok.apply_chat_template(messages, gen),
                Some(options) => {
                    let options = ChatOptions::from_json(options.as_str().unwrap()).unwrap();
                    tok.apply_chat_template_with(messages, &options)
                }
            };
            match (case.get("rendered"), got) {
                (Some(want), Ok(text)) => assert_eq!(text, want.as_str().unwrap(), "{label}"),
                (Some(_), Err(e)) => {
                    panic!("{label}: transformers renders, adpo fails: {}", e.message)
                }
                (None, Ok(text)) => panic!(
                    "{label}: transformers raises {}, adpo renders {text:?}",
                    case["error"]
                ),
                (None, Err(e)) => {
                    assert_eq!(e.status, Status::InvalidArgument, "{label}");
                    if case["error_type"] == "TemplateError" {
                        // raise_exception(msg): the caller gets msg.
                        let msg = case["error"].as_str().unwrap();
                        assert!(
                            e.message.ends_with(msg),
                            "{label}: {:?} lacks {msg:?}",
                            e.message
                        );
                        raised += 1;
                    }
                }
            }
        }
    }
    assert!(
        raised >= 8,
        "only {raised} raising cases: the fixtures lost them"
    );
}

#[test]
fn vocab_size_eos_ids_and_special_tokens_equal_transformers() {
    for name in DIRS {
        let tok = load(name);
        let info = expected(name, "expected_info.json");
        assert_eq!(
            tok.vocab_size() as u64,
            info["vocab_size"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(tok.eos_ids(), ids(&info["eos_ids"]).as_slice(), "{name}");
        let special = info["special_tokens"].as_object().unwrap();
        assert_eq!(tok.special_tokens().len(), special.len(), "{name}");
        for (k, v) in special {
            assert_eq!(
                tok.special_tokens()[k].content,
                v.as_str().unwrap(),
                "{name}: {k}"
            );
        }
    }
}

/// A fresh directory under the system temp dir (removed first if a previous run left it).
fn scratch(label: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("adpo-tok-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy_fixture(name: &str, to: &Path, files: &[&str]) {
    for f in files {
        std::fs::copy(dir(name).join(f), to.join(f)).unwrap();
    }
}

fn load_err(path: &Path) -> adpo::Error {
    match Tokenizer::load(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e,
    }
}

#[test]
fn load_errors_name_the_file() {
    let missing = fixtures().join("no-such-dir");
    let e = load_err(&missing);
    assert_eq!(e.status, Status::Io);
    assert!(
        e.message.contains("no-such-dir") && e.message.contains("does not exist"),
        "{}",
        e.message
    );

    let empty = scratch("empty");
    let e = load_err(&empty);
    assert_eq!(e.status, Status::Io);
    assert!(e.message.contains("no tokenizer.json in"), "{}", e.message);

    let bad = scratch("malformed");
    std::fs::write(
        bad.join("tokenizer.json"),
        "{\"model\": {\"type\": \"BPE\", \"vocab\": 3}}",
    )
    .unwrap();
    let e = load_err(&bad);
    assert_eq!(e.status, Status::Model);
    assert!(
        e.message.contains("tokenizer.json is not a tokenizer.json"),
        "{}",
        e.message
    );
    std::fs::write(bad.join("tokenizer.json"), "not json at all").unwrap();
    assert_eq!(load_err(&bad).status, Status::Model);

    let config = scratch("badconfig");
    copy_fixture("qwen", &config, &["tokenizer.json"]);
    std::fs::write(config.join("tokenizer_config.json"), "{\"chat_template\": ").unwrap();
    let e = load_err(&config);
    assert_eq!(e.status, Status::Model);
    assert!(
        e.message.contains("tokenizer_config.json: not valid JSON"),
        "{}",
        e.message
    );
    std::fs::write(
        config.join("tokenizer_config.json"),
        "{\"chat_template\": 3}",
    )
    .unwrap();
    let e = load_err(&config);
    assert!(
        e.message
            .contains("chat_template must be a string or a list"),
        "{}",
        e.message
    );
    std::fs::write(
        config.join("tokenizer_config.json"),
        "{\"eos_token\": {\"lstrip\": true}}",
    )
    .unwrap();
    assert!(load_err(&config)
        .message
        .contains("eos_token is an object without"));
    std::fs::write(config.join("tokenizer_config.json"), "{}").unwrap();
    std::fs::write(
        config.join("generation_config.json"),
        "{\"eos_token_id\": [2, \"x\"]}",
    )
    .unwrap();
    let e = load_err(&config);
    assert!(
        e.message
            .contains("generation_config.json: eos_token_id must be"),
        "{}",
        e.message
    );
    for d in [empty, bad, config] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn a_tokenizer_json_path_reads_the_files_beside_it() {
    let tok = Tokenizer::load(&dir("qwen").join("tokenizer.json")).unwrap();
    assert_eq!(tok.eos_ids(), &load("qwen").eos_ids()[..]);
    let text = tok
        .apply_chat_template(r#"[{"role": "user", "content": "hi"}]"#, true)
        .unwrap();
    assert!(
        text.starts_with("<|im_start|>system\nYou are a helpful assistant."),
        "{text}"
    );
}

#[test]
fn eos_ids_fall_back_to_config_json_then_to_the_eos_token() {
    let d = scratch("eos");
    copy_fixture("qwen", &d, &["tokenizer.json", "tokenizer_config.json"]);
    // No generation_config.json, no config.json: the id of eos_token "<|im_end|>".
    let im_end = load("qwen").token_to_id("<|im_end|>").unwrap();
    assert_eq!(Tokenizer::load(&d).unwrap().eos_ids(), [im_end]);
    std::fs::write(d.join("config.json"), "{\"eos_token_id\": 5}").unwrap();
    assert_eq!(Tokenizer::load(&d).unwrap().eos_ids(), [5]);
    std::fs::write(
        d.join("generation_config.json"),
        "{\"eos_token_id\": [7, 8]}",
    )
    .unwrap();
    assert_eq!(Tokenizer::load(&d).unwrap().eos_ids(), [7, 8]);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn decode_names_an_id_outside_the_vocabulary() {
    let tok = load("mistral");
    let v = tok.vocab_size() as i64;
    for bad in [v, -1, i64::from(u32::MAX) + 1] {
        let e = tok.decode(&[1, 5, bad], false).unwrap_err();
        assert_eq!(e.status, Status::InvalidArgument);
        assert!(
            e.message
                .contains(&format!("ids[2] = {bad} is not in the vocabulary")),
            "{}",
            e.message
        );
    }
    let e = tok.decode_batch(&[&[1], &[2, v]], false).unwrap_err();
    assert!(
        e.message.contains(&format!("sequence 1: ids[1] = {v}")),
        "{}",
        e.message
    );
}

#[test]
fn messages_must_be_a_json_list_of_role_content_objects() {
    let tok = load("qwen");
    for (messages, want) in [
        ("", "not valid JSON"),
        (
            "{\"role\": \"user\", \"content\": \"hi\"}",
            "must be a JSON list",
        ),
        ("[1]", "messages[0] must be an object"),
        ("[{\"role\": \"user\"}]", "messages[0] has no \"content\""),
        ("[{\"content\": \"hi\"}]", "messages[0] has no \"role\""),
        (
            "[{\"role\": [], \"content\": \"hi\"}]",
            "messages[0].role must be a string",
        ),
        (
            "[{\"role\": \"user\", \"content\": true}]",
            "messages[0].content must be",
        ),
    ] {
        let e = tok.apply_chat_template(messages, false).unwrap_err();
        assert_eq!(e.status, Status::InvalidArgument, "{messages}");
        assert!(e.message.contains(want), "{messages}: {}", e.message);
    }
}

#[test]
fn template_errors_are_invalid_argument_with_the_templates_message() {
    let tok = load("mistral");
    let two_users = r#"[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]"#;
    let e = tok.apply_chat_template(two_users, false).unwrap_err();
    assert_eq!(e.status, Status::InvalidArgument);
    assert_eq!(
        e.message,
        "chat template raised an exception: After the optional system message, conversation \
         roles must alternate user/assistant/user/assistant/..."
    );
    let one = r#"[{"role": "user", "content": "a"}]"#;
    for (template, want) in [
        ("{{ messages[0].nope.deeper }}", "chat template: "),
        ("{% for %}", "chat template: "),
        ("{{ raise_exception(42) }}", "raised an exception: 42"),
        ("{{ messages | tojson(indent=2, bogus=1) }}", "bogus"),
    ] {
        let options =
            ChatOptions::from_json(&serde_json::json!({ "template": template }).to_string())
                .unwrap();
        let e = tok.apply_chat_template_with(one, &options).unwrap_err();
        assert_eq!(e.status, Status::InvalidArgument, "{template}");
        assert!(e.message.contains(want), "{template}: {}", e.message);
    }
    // A tokenizer without a template says so.
    let d = scratch("notemplate");
    copy_fixture("qwen", &d, &["tokenizer.json"]);
    let e = Tokenizer::load(&d)
        .unwrap()
        .apply_chat_template(one, true)
        .unwrap_err();
    assert!(e.message.contains("has no chat template"), "{}", e.message);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn strftime_now_is_todays_local_date() {
    let tok = load("llama3");
    let options =
        ChatOptions::from_json(r#"{"template": "{{ strftime_now('%Y-%m-%d') }}"}"#).unwrap();
    let got = tok.apply_chat_template_with("[]", &options).unwrap();
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .unwrap();
    assert_eq!(got, String::from_utf8(date.stdout).unwrap().trim());
}

// ---- through the C functions ----

fn c_load(name: &str) -> *mut adpo_tokenizer {
    let path = CString::new(dir(name).to_str().unwrap()).unwrap();
    let mut tok = std::ptr::null_mut();
    assert_eq!(
        adpo_tokenizer_load(path.as_ptr(), &mut tok, std::ptr::null_mut()),
        Status::Ok
    );
    tok
}

fn take_error(err: *mut adpo_error) -> String {
    let msg = unsafe { CStr::from_ptr(adpo_error_message(err)) }
        .to_str()
        .unwrap()
        .to_string();
    adpo_error_free(err);
    msg
}

#[test]
fn invalid_utf8_through_the_c_function_is_invalid_argument() {
    let tok = c_load("qwen");
    let bytes: &[u8] = b"caf\xe9 au lait\0"; // Latin-1, not UTF-8
    let (mut len, mut err) = (usize::MAX, std::ptr::null_mut());
    let st = adpo_tokenizer_encode(
        tok,
        bytes.as_ptr() as *const c_char,
        true,
        std::ptr::null_mut(),
        0,
        &mut len,
        &mut err,
    );
    assert_eq!(st, Status::InvalidArgument);
    assert_eq!(take_error(err), "text is not valid UTF-8");
    assert_eq!(
        len,
        usize::MAX,
        "*out_len is not set on a failure other than the size"
    );
    adpo_tokenizer_free(tok);
}

#[test]
fn c_encode_reports_the_size_first_and_shape_mismatch_when_cap_is_small() {
    let tok = c_load("qwen");
    let text = CString::new("Hello world, how are you?").unwrap();
    let want = load("qwen")
        .encode("Hello world, how are you?", true)
        .unwrap();
    let mut len = 0usize;
    let null = std::ptr::null_mut();
    let no_ids = std::ptr::null_mut();
    assert_eq!(
        adpo_tokenizer_encode(tok, text.as_ptr(), true, no_ids, 0, &mut len, null),
        Status::Ok
    );
    assert_eq!(len, want.len());
    let mut small = vec![-7i64; want.len() - 1];
    let mut err = std::ptr::null_mut();
    let st = adpo_tokenizer_encode(
        tok,
        text.as_ptr(),
        true,
        small.as_mut_ptr(),
        small.len(),
        &mut len,
        &mut err,
    );
    assert_eq!(st, Status::ShapeMismatch);
    assert!(take_error(err).contains(&format!("there are {} ids", want.len())));
    assert_eq!(len, want.len());
    assert!(small.iter().all(|&x| x == -7), "no ids written on failure");
    let mut buf = vec![0i64; want.len() + 3];
    assert_eq!(
        adpo_tokenizer_encode(
            tok,
            text.as_ptr(),
            true,
            buf.as_mut_ptr(),
            buf.len(),
            &mut len,
            null
        ),
        Status::Ok
    );
    assert_eq!(&buf[..len], want.as_slice());

    let mut out: *mut c_char = std::ptr::null_mut();
    assert_eq!(
        adpo_tokenizer_decode(tok, buf.as_ptr(), len, false, &mut out, null),
        Status::Ok
    );
    assert_eq!(
        unsafe { CStr::from_ptr(out) }.to_str().unwrap(),
        "Hello world, how are you?"
    );
    adpo_string_free(out);
    adpo_tokenizer_free(tok);
}
