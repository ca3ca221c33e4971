//! include/adpo.h must be exactly what the pinned cbindgen generates from the sources.
//! `make header` (ADPO_WRITE_HEADER=1) rewrites it instead of comparing.

use std::path::Path;

#[test]
fn header_matches_cbindgen_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen failed to parse the crate")
        .write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    let path = root.join("include/adpo.h");
    if std::env::var_os("ADPO_WRITE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/adpo.h differs from what cbindgen generates: run `make header` and commit it"
    );
}
