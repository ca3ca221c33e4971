//! The README's option tables are made from the declarations: each sits between a marker
//! naming its config and an end marker. The test fails when the README differs; `make
//! readme-options` (ADPO_WRITE_README=1) rewrites the tables instead.

use super::declare::{Declared, Opt};
use std::path::Path;

const END: &str = "<!-- end of generated table -->";

/// A markdown table of `options`, one row per key.
fn table(options: &[Opt]) -> String {
    let mut out = String::from("| key | default | range | meaning |\n|---|---|---|---|\n");
    for o in options {
        let default = match o.default.chars().next() {
            Some('"' | '{' | '[') => format!("`{}`", o.default),
            _ => o.default.to_string(),
        };
        let range = o.range.map_or(String::new(), |r| {
            r.to_string().replace(">=", "≥").replace("<=", "≤")
        });
        out += &format!("| `{}` | {default} | {range} | {} |\n", o.key, o.doc.trim());
    }
    out
}

/// `readme` with the table after `marker` replaced by `options`' table.
fn with_table(readme: &str, marker: &str, options: &[Opt]) -> String {
    let start = readme
        .find(marker)
        .unwrap_or_else(|| panic!("README.md has no {marker}"))
        + marker.len();
    let end = start
        + readme[start..]
            .find(END)
            .unwrap_or_else(|| panic!("README.md: no {END} after {marker}"));
    format!("{}\n{}{}", &readme[..start], table(options), &readme[end..])
}

fn marker<T: Declared>(name: &str) -> (String, &'static [Opt]) {
    (
        format!("<!-- options of {name}, generated from its declaration -->"),
        T::OPTIONS,
    )
}

#[test]
fn readme_tables_match_the_declarations() {
    let tables = [
        marker::<crate::trainer::TrainerConfig>("adpo_trainer_new"),
        marker::<crate::sample::SamplingConfig>("adpo_trainer_sample"),
        marker::<crate::config::ObjectiveConfig>("adpo_objective_new"),
        marker::<crate::model::LoadConfig>("adpo_model_load_options"),
    ];
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let committed = std::fs::read_to_string(&path).unwrap();
    let generated = tables
        .iter()
        .fold(committed.clone(), |readme, (marker, options)| {
            with_table(&readme, marker, options)
        });
    if std::env::var_os("ADPO_WRITE_README").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    assert!(
        committed == generated,
        "README.md's option tables differ from the declarations: run `make readme-options`"
    );
}

#[test]
fn every_declared_default_parses_and_is_in_range() {
    crate::trainer::TrainerConfig::default()
        .check_ranges()
        .unwrap();
    crate::sample::SamplingConfig::default()
        .check_ranges()
        .unwrap();
    crate::config::ObjectiveConfig::default()
        .check_ranges()
        .unwrap();
    crate::model::LoadConfig::default().check_ranges().unwrap();
}
