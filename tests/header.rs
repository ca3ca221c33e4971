//! include/adpo.h must be exactly what the pinned cbindgen generates from the sources, with
//! each ffi file's section opening inserted before the file's first function (cbindgen has no
//! notion of sections). `make header` (ADPO_WRITE_HEADER=1) rewrites it instead of comparing.
//!
//! A section opening lives in its ffi file, after the module doc, as line comments:
//!
//! ```text
//! // Section of include/adpo.h: Title
//! // Opening paragraph, one comment line per header line.
//! ```

use std::path::Path;

const MARKER: &str = "// Section of include/adpo.h: ";

/// (first exported function, title, paragraph lines) of one ffi file.
struct Section {
    first: String,
    title: String,
    lines: Vec<String>,
}

/// The section of every ffi file that exports functions; a file without one fails, so that
/// its functions do not silently join the previous file's section.
fn sections(ffi: &Path) -> Vec<Section> {
    let mut paths: Vec<_> = std::fs::read_dir(ffi)
        .expect("src/ffi")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().find_map(|l| {
            let l = l.strip_prefix("pub extern \"C\" fn ")?;
            Some(l[..l.find('(')?].to_string())
        });
        let Some(first) = first else { continue };
        let mut lines = text.lines().skip_while(|l| !l.starts_with(MARKER));
        let title = lines.next().unwrap_or_else(|| {
            panic!(
                "{}: exports functions but has no `{MARKER}` comment",
                path.display()
            )
        })[MARKER.len()..]
            .to_string();
        let lines = lines
            .map_while(|l| l.strip_prefix("// "))
            .map(str::to_string)
            .collect();
        out.push(Section {
            first,
            title,
            lines,
        });
    }
    out
}

/// Inserts each section's opening comment before the doc comment of its first function.
fn with_sections(generated: &str, sections: &[Section]) -> String {
    // Declarations follow the `extern "C" {` line; the opening comment mentions names too.
    let start = generated
        .find("extern \"C\" {")
        .expect("cbindgen's extern block");
    let mut banners: Vec<(usize, String)> = sections
        .iter()
        .map(|s| {
            let decl = start
                + generated[start..]
                    .find(&format!("{}(", s.first))
                    .unwrap_or_else(|| {
                        panic!("section {}: {} is not in the header", s.title, s.first)
                    });
            let doc = generated[..decl]
                .rfind("/**")
                .expect("every function has a doc comment");
            let rule = "=".repeat(88 - s.title.len().min(80) - 4);
            let paragraph = s.lines.join("\n * ");
            (
                doc,
                format!("/* {} {rule}\n *\n * {paragraph}\n */\n\n", s.title),
            )
        })
        .collect();
    // From the last position back, so earlier positions stay valid.
    banners.sort_by(|a, b| b.0.cmp(&a.0));
    let mut out = generated.to_string();
    for (at, banner) in banners {
        out.insert_str(at, &banner);
    }
    out
}

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
    let sections = sections(&root.join("src/ffi"));
    let generated = with_sections(&String::from_utf8(generated).unwrap(), &sections);
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
