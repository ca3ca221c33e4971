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
