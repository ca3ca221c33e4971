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

    // MPI support only when asked for (feature `mpi`, which the Makefile enables): the
    // artifact must not depend on whether the building machine happens to have mpicc.
    if env::var_os("CARGO_FEATURE_MPI").is_some() && !build_mpi_shim() {
        panic!("feature `mpi` but no MPI compiler wrapper (mpicc) works: install OpenMPI (scripts/setup) or set MPICC");
    }

    build_fused_ops(lib_dir);

    println!("cargo:rustc-env=ADPO_LIBTORCH_LIB={lib}");
    println!(
        "cargo:rustc-env=ADPO_LIBTORCH_VERSION={}",
        libtorch_version(lib_dir)
    );
}

/// Compiles the MPI shim with the include and link flags of the MPI compiler wrapper
/// (OpenMPI: `mpicc --showme:compile|link`; MPICH: `mpicc -compile-info|-link-info`).
/// False when there is no working wrapper.
fn build_mpi_shim() -> bool {
    println!("cargo:rerun-if-changed=csrc/mpi_shim.c");
    println!("cargo:rerun-if-env-changed=MPICC");
    let mpicc = env::var("MPICC").unwrap_or_else(|_| "mpicc".into());
    let wrapper = |args: &[&str]| -> Option<Vec<String>> {
        let out = std::process::Command::new(&mpicc)
            .args(args)
            .output()
            .ok()?;
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect()
        })
    };
    let compile = wrapper(&["--showme:compile"]).or_else(|| wrapper(&["-compile-info"]));
    let link = wrapper(&["--showme:link"]).or_else(|| wrapper(&["-link-info"]));
    let (Some(compile), Some(link)) = (compile, link) else {
        return false;
    };
    let mut build = cc::Build::new();
    build.file("csrc/mpi_shim.c").warnings(true);
    for flag in compile.iter().filter(|f| f.starts_with("-I")) {
        build.include(&flag[2..]);
    }
    build.compile("adpo_mpi_shim");
    for flag in &link {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        } else if let Some(name) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={name}");
        }
    }
    true
}

/// Compiles the fused CPU ops (csrc/fused_*.cpp: autograd nodes with hand-written forward and
/// backward kernels) against the headers of the libtorch tch links, with its C++ ABI (the
/// LIBTORCH_CXX11_ABI torch-sys reads, 1 unless set, as every libtorch since 2.7 is). Always
/// optimized: a debug build's kernels would be orders of magnitude slower than libtorch's.
fn build_fused_ops(lib_dir: &Path) {
    let root = lib_dir.parent().unwrap_or(lib_dir);
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .opt_level(3)
        .warnings(true)
        .std("c++17");
    for dir in [
        root.join("include"),
        root.join("include/torch/csrc/api/include"),
    ] {
        // -isystem: libtorch's own headers are not ours to warn about
        build
            .flag("-isystem")
            .flag(dir.to_str().expect("libtorch path is not UTF-8"));
    }
    build.define("_GLIBCXX_USE_CXX11_ABI", abi.as_str());
    // Lets the compiler turn the kernels' selects (clamps, NaN checks) into vector blends:
    // adpo never reads floating-point exception flags.
    build.flag("-fno-trapping-math");
    // And sqrt vectorize (fused_adamw.cpp): adpo never reads errno either; libtorch's own
    // build passes it too.
    build.flag("-fno-math-errno");
    // Every csrc/fused_*.cpp, in name order (a new op is a new file, nothing to list here).
    let mut files: Vec<_> = std::fs::read_dir("csrc")
        .expect("csrc/ is missing")
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("fused_") && name.ends_with(".cpp")
        })
        .collect();
    files.sort();
    for file in files {
        println!("cargo:rerun-if-changed={}", file.display());
        build.file(file);
    }
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-changed=csrc/fused_ops.h");
    build.compile("adpo_fused_ops");
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
