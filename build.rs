//! Link settings that let libadpo.so, the test binaries and the examples run with no
//! LD_LIBRARY_PATH, and that keep CUDA registered when libtorch has it.
use std::{env, fs, path::Path};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // torch-sys (links = "tch") exports the libtorch lib directory it linked against.
    let lib = env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys did not report DEP_TCH_LIBTORCH_LIB; run scripts/setup or set LIBTORCH");
    let lib_dir = Path::new(&lib);

    // RUNPATH to libtorch for every artifact this crate links (cdylib, tests, benches, examples).
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // With --as-needed, libtorch_cuda.so would be dropped (nothing references it directly) and
    // CUDA would silently report unavailable.
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    let major = env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libadpo.so.{major}");

    println!("cargo:rustc-env=ADPO_LIBTORCH_LIB={lib}");
    println!(
        "cargo:rustc-env=ADPO_LIBTORCH_VERSION={}",
        libtorch_version(lib_dir)
    );
}

/// The version of the libtorch we build against: PyPI wheels carry torch/version.py,
/// standalone libtorch archives a build-version file.
fn libtorch_version(lib_dir: &Path) -> String {
    let root = lib_dir.parent().unwrap_or(lib_dir);
    if let Ok(text) = fs::read_to_string(root.join("version.py")) {
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("__version__ = ") {
                return v.trim().trim_matches('\'').trim_matches('"').to_string();
            }
        }
    }
    if let Ok(text) = fs::read_to_string(root.join("build-version")) {
        return text.trim().to_string();
    }
    "unknown".to_string()
}
