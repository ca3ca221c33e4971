//! Configurations are JSON objects all the way down, with no key ignored: serde alone would
//! read a struct or a tagged variant from an array of its fields in order, and ignore every
//! key beside the tag of a variant without parameters.

use adpo::sample::SamplingConfig;
use adpo::trainer::parse_config;
use adpo::{ObjectiveConfig, Status};

fn refused(what: &str, result: adpo::Result<impl Sized>, needle: &str) {
    let e = result
        .err()
        .unwrap_or_else(|| panic!("{what} was accepted"));
    assert_eq!(e.status, Status::InvalidConfig, "{what}: {}", e.message);
    assert!(e.message.contains(needle), "{what}: {}", e.message);
}

#[test]
fn arrays_are_refused_at_every_level() {
    for json in [r#"["pairwise", 2.0]"#, "[]"] {
        refused(
            json,
            ObjectiveConfig::from_json(json),
            "must be a JSON object",
        );
        refused(json, parse_config(json), "must be a JSON object");
        refused(
            json,
            SamplingConfig::from_json(json),
            "must be a JSON object",
        );
    }
    for (json, key) in [
        (r#"{"distributed": ["none", 25]}"#, "`distributed`"),
        (r#"{"anchor": ["ema", 0.5]}"#, "`anchor`"),
        (r#"{"optimizer": ["sgd", 0.1]}"#, "`optimizer`"),
        (r#"{"schedule": ["cosine", 0, 10]}"#, "`schedule`"),
        (
            r#"{"adaptive_tau": ["target_entropy", 1.0, 0.1]}"#,
            "`adaptive_tau`",
        ),
        (
            r#"{"optimizer": {"name": "adamw", "betas": [[0.9], 0.99]}}"#,
            "`betas`",
        ),
    ] {
        refused(json, parse_config(json), key);
    }
    refused(
        "objective adaptive_tau",
        ObjectiveConfig::from_json(r#"{"adaptive_tau": ["target_entropy", 1.0, 0.1]}"#),
        "`adaptive_tau`",
    );
    // The one array-valued key still takes its array.
    let (cfg, _) =
        parse_config(r#"{"optimizer": {"name": "adamw", "betas": [0.8, 0.9]}}"#).unwrap();
    assert!(format!("{:?}", cfg.optimizer).contains("[0.8, 0.9]"));
}

#[test]
fn unknown_keys_beside_a_tag_are_refused() {
    for (json, key) in [
        (r#"{"anchor": {"mode": "fixed", "alpha": 0.5}}"#, "alpha"),
        (
            r#"{"anchor": {"mode": "on_policy", "window": 3}}"#,
            "window",
        ),
        (r#"{"anchor": {"mode": "ema", "window": 3}}"#, "window"),
        (
            r#"{"schedule": {"name": "constant", "total_steps": 100}}"#,
            "total_steps",
        ),
        (
            r#"{"optimizer": {"name": "sgd", "lr": 1, "betas": [0.9, 0.99]}}"#,
            "betas",
        ),
        (
            r#"{"optimizer": {"name": "adamw", "momentum": 0.5}}"#,
            "momentum",
        ),
        (
            r#"{"adaptive_tau": {"rule": "smooth_hybrid", "gamma": 1}}"#,
            "gamma",
        ),
    ] {
        refused(json, parse_config(json), &format!("unknown field `{key}`"));
    }
    // The variants without parameters still parse, alone.
    for json in [
        r#"{"anchor": {"mode": "fixed"}}"#,
        r#"{"anchor": {"mode": "on_policy"}}"#,
        r#"{"schedule": {"name": "constant"}}"#,
    ] {
        parse_config(json).unwrap();
    }
}
