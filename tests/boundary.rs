//! Every function C can call runs its body inside the panic boundary (src/ffi/boundary.rs):
//! the first statement of each `extern "C" fn` in src/ is a call to `call`, `call_on`,
//! `infallible`, `free` (ffi/handle.rs, which runs inside `infallible`) or `catch_unwind`.
//! A new export without it fails here. And ffi is the outer layer: nothing outside src/ffi
//! imports from it.

use std::path::Path;

fn exports_without_boundary(source: &str) -> (usize, Vec<String>) {
    let mut count = 0;
    let mut missing = Vec::new();
    let mut rest = source;
    while let Some(pos) = rest.find("extern \"C\" fn ") {
        let after = &rest[pos + "extern \"C\" fn ".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The body starts at the first '{' after the signature's closing ')'.
        let sig_end = after.find(')').map(|i| i + 1).unwrap_or(0);
        let body_start = after[sig_end..]
            .find('{')
            .map(|i| sig_end + i + 1)
            .unwrap_or(after.len());
        let body = after[body_start..].trim_start();
        count += 1;
        let guarded = [
            "call(",
            "call_on(",
            "infallible(",
            "super::boundary::infallible(",
            "free(",
            "let _ = std::panic::catch_unwind(",
        ]
        .iter()
        .any(|p| body.starts_with(p));
        if !guarded {
            missing.push(name);
        }
        rest = &after[body_start..];
    }
    (count, missing)
}

/// Every .rs file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_export_is_inside_the_panic_boundary() {
    let mut total = 0;
    let mut missing = Vec::new();
    for path in rust_files(&src()) {
        let (n, m) = exports_without_boundary(&std::fs::read_to_string(&path).unwrap());
        total += n;
        missing.extend(m.into_iter().map(|f| format!("{}: {f}", path.display())));
    }
    assert!(
        total >= 10,
        "found only {total} exports: the scanner is broken"
    );
    assert!(
        missing.is_empty(),
        "exports outside the panic boundary: {missing:?}"
    );
}

#[test]
fn scanner_catches_an_unguarded_export() {
    let src = "pub extern \"C\" fn adpo_ok(x: i32) -> i32 { infallible(0, || x) }\n\
               pub extern \"C\" fn adpo_bad(x: i32) -> i32 { x + 1 }";
    assert_eq!(
        exports_without_boundary(src),
        (2, vec!["adpo_bad".to_string()])
    );
}

#[test]
fn a_panic_becomes_a_status_not_an_unwind() {
    let mut err = std::ptr::null_mut();
    let status = adpo::ffi::version::adpo_test_panic(&mut err);
    assert_eq!(status, adpo::Status::Panic);
    let msg = unsafe { std::ffi::CStr::from_ptr(adpo::ffi::error::adpo_error_message(err)) };
    assert!(msg.to_str().unwrap().contains("adpo_test_panic was called"));
    adpo::ffi::error::adpo_error_free(err);
}

/// Names of files outside src/ffi that refer to the ffi module.
fn files_naming_ffi(root: &Path) -> Vec<String> {
    let ffi = root.join("ffi");
    rust_files(root)
        .into_iter()
        .filter(|p| !p.starts_with(&ffi))
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            text.contains("crate::ffi") || text.contains("adpo::ffi")
        })
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn nothing_outside_ffi_imports_from_it() {
    let offenders = files_naming_ffi(&src());
    assert!(
        offenders.is_empty(),
        "ffi is the outer layer, but these files outside src/ffi name it: {offenders:?}"
    );
}

#[test]
fn the_ffi_import_check_catches_an_import() {
    let dir = std::env::temp_dir().join(format!("adpo-ffi-check-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("ffi")).unwrap();
    std::fs::write(dir.join("ffi/mod.rs"), "use crate::ffi::x;").unwrap();
    std::fs::write(dir.join("core.rs"), "use crate::model::Model;").unwrap();
    assert!(files_naming_ffi(&dir).is_empty());
    std::fs::write(dir.join("bad.rs"), "use crate::ffi::dlpack::DLDevice;").unwrap();
    let found = files_naming_ffi(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found.len(), 1);
    assert!(found[0].ends_with("bad.rs"));
}

/// Runs this test binary's ignored test `name` alone in a child process, with `env`; its stderr.
fn child_stderr(name: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    // --nocapture: a panic hook that prints writes to the real stderr, not libtest's capture.
    cmd.args([
        "--ignored",
        "--exact",
        name,
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd.env_remove("ADPO_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "child {name} failed: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Child of `caught_panics_are_silent_unless_adpo_log`: a panic caught at the C boundary, then
/// a panic of the host's own, caught by the host.
#[test]
#[ignore = "run as a child process by caught_panics_are_silent_unless_adpo_log"]
fn child_panics_inside_and_outside_adpo() {
    let mut err = std::ptr::null_mut();
    assert_eq!(
        adpo::ffi::version::adpo_test_panic(&mut err),
        adpo::Status::Panic
    );
    adpo::ffi::error::adpo_error_free(err);
    let host = std::panic::catch_unwind(|| panic!("the host's own panic"));
    assert!(host.is_err());
}

#[test]
fn caught_panics_are_silent_unless_adpo_log() {
    let quiet = child_stderr("child_panics_inside_and_outside_adpo", &[]);
    assert!(
        !quiet.contains("adpo_test_panic was called"),
        "adpo printed a caught panic: {quiet}"
    );
    assert!(
        quiet.contains("the host's own panic"),
        "the host's panic hook no longer runs: {quiet:?}"
    );
    let logged = child_stderr("child_panics_inside_and_outside_adpo", &[("ADPO_LOG", "1")]);
    assert!(
        logged.contains("adpo_test_panic was called"),
        "ADPO_LOG=1 did not print: {logged:?}"
    );
    assert!(logged.contains("the host's own panic"));
}

/// Inputs echoed in messages are capped (src/echo.rs): a 1 MB key, value or path does not come
/// back as a 1 MB message.
mod capped_echoes {
    use adpo::ffi::error::{adpo_error_free, adpo_error_message, adpo_error_status};
    use adpo::Status;
    use std::ffi::{CStr, CString};

    /// Runs `f(&mut err)`, checks its status, returns the message.
    fn failure(
        expected: Status,
        f: impl FnOnce(*mut *mut adpo::ffi::error::adpo_error) -> Status,
    ) -> String {
        let mut err = std::ptr::null_mut();
        let st = f(&mut err);
        assert_eq!(st, expected);
        assert_eq!(adpo_error_status(err), expected);
        let msg = unsafe { CStr::from_ptr(adpo_error_message(err)) }
            .to_string_lossy()
            .into_owned();
        adpo_error_free(err);
        msg
    }

    fn assert_capped(msg: &str, total_bytes: usize) {
        assert!(
            msg.len() < 800,
            "{} bytes: {}",
            msg.len(),
            &msg[..msg.len().min(2000)]
        );
        assert!(
            msg.contains(&format!("[{total_bytes} bytes in all]")),
            "{msg}"
        );
    }

    fn objective_new(config: &str) -> String {
        let c = CString::new(config).unwrap();
        let mut obj = std::ptr::null_mut();
        let msg = failure(Status::InvalidConfig, |err| {
            adpo::ffi::objective::adpo_objective_new(c.as_ptr(), &mut obj, err)
        });
        assert!(obj.is_null());
        msg
    }

    #[test]
    fn a_huge_unknown_key_is_capped() {
        let key = "k".repeat(1 << 20);
        let msg = objective_new(&format!("{{\"{key}\": 1}}"));
        assert!(msg.contains("unknown field `kkk"), "{msg}");
        assert!(
            msg.contains("expected one of"),
            "the rest of serde's message is kept: {msg}"
        );
        assert_capped(&msg, 1 << 20);
    }

    #[test]
    fn a_huge_number_is_echoed_in_exponent_form() {
        // f64's Display writes 1e300 as 301 digits.
        let msg = objective_new(r#"{"tau": -1e300}"#);
        assert!(msg.contains("got -1e300"), "{msg}");
        assert!(msg.len() < 100, "{msg}");
    }

    #[test]
    fn a_huge_string_value_is_capped() {
        let value = "v".repeat(1 << 20);
        let msg = objective_new(&format!("{{\"loss\": \"{value}\"}}"));
        assert!(msg.contains("vvv"), "{msg}");
        assert_capped(&msg, 1 << 20);
    }

    #[test]
    fn a_huge_key_under_an_array_check_is_capped() {
        let key = "a".repeat(100_000);
        let msg = objective_new(&format!("{{\"adaptive_tau\": {{\"{key}\": [1]}}}}"));
        assert!(msg.contains("not an array"), "{msg}");
        assert_capped(&msg, 100_000);
        // unknown at the top: serde's "unknown field" message, capped as well
        let msg = objective_new(&format!("{{\"{key}\": [1]}}"));
        assert!(msg.contains("unknown field"), "{msg}");
        assert_capped(&msg, 100_000);
    }

    /// A path of `len` bytes that does not exist (long, but each component under NAME_MAX).
    fn long_path(len: usize) -> String {
        let mut p = String::from("/nonexistent");
        while p.len() < len - 9 {
            p.push_str("/abcdefgh");
        }
        p.truncate(len - 9);
        p.push_str("/model.pt");
        p
    }

    #[test]
    fn a_long_model_path_is_capped_in_every_echo() {
        // Shorter than PATH_MAX, so the loader itself echoes it (the message backstop alone
        // would keep 1000 characters).
        for len in [3000, 1 << 20] {
            let path = CString::new(long_path(len)).unwrap();
            let mut model = std::ptr::null_mut();
            let msg = failure(Status::Model, |err| {
                adpo::ffi::model::adpo_model_load(path.as_ptr(), std::ptr::null(), &mut model, err)
            });
            assert!(
                msg.contains("model file not found: /nonexistent/abc"),
                "{msg}"
            );
            assert!(msg.ends_with("/model.pt"), "{msg}");
            assert_capped(&msg, len);
        }
    }

    #[test]
    fn a_long_tokenizer_path_is_capped() {
        let path = CString::new(long_path(5000)).unwrap();
        let mut tok = std::ptr::null_mut();
        let msg = failure(Status::Io, |err| {
            adpo::ffi::tokenizer::adpo_tokenizer_load(path.as_ptr(), &mut tok, err)
        });
        assert_capped(&msg, 5000);
    }

    #[test]
    fn a_huge_device_string_is_capped() {
        let path = CString::new("/nonexistent.pt").unwrap();
        let device = CString::new("d".repeat(1 << 20)).unwrap();
        let mut model = std::ptr::null_mut();
        let msg = failure(Status::InvalidArgument, |err| {
            adpo::ffi::model::adpo_model_load(path.as_ptr(), device.as_ptr(), &mut model, err)
        });
        assert_capped(&msg, 1 << 20);
    }

    #[test]
    fn huge_chat_messages_are_capped() {
        // Not a tokenizer handle needed: the messages are checked before the template runs,
        // but the call needs one, so load the fixture.
        let dir = std::path::PathBuf::from(std::env::var("ADPO_FIXTURES").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/generated").to_string()
        }))
        .join("tokenizers/qwen");
        let dir = CString::new(dir.to_str().unwrap()).unwrap();
        let mut tok = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        assert_eq!(
            adpo::ffi::tokenizer::adpo_tokenizer_load(dir.as_ptr(), &mut tok, &mut err),
            Status::Ok
        );
        let big = "x".repeat(1 << 20);
        // Not JSON (serde echoes nothing), a wrong type (serde echoes the value), an option key.
        let messages = CString::new(format!(
            "[{{\"role\": \"user\", \"content\": 1}}, \"{big}\"]"
        ))
        .unwrap();
        let options = CString::new(format!("{{\"{big}\": 1}}")).unwrap();
        let mut out = std::ptr::null_mut();
        for (m, o, st) in [
            (&messages, std::ptr::null(), Status::InvalidArgument),
            (
                &CString::new("[]").unwrap(),
                options.as_ptr(),
                Status::InvalidConfig,
            ),
        ] {
            let msg = failure(st, |err| {
                adpo::ffi::tokenizer::adpo_tokenizer_apply_chat_template_options(
                    tok,
                    m.as_ptr(),
                    o,
                    &mut out,
                    err,
                )
            });
            assert!(msg.len() <= 1100, "{} bytes", msg.len());
        }
        adpo::ffi::tokenizer::adpo_tokenizer_free(tok);
    }
}
