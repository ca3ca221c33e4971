//! Configurations are JSON objects all the way down, with no key ignored and none given twice:
//! serde alone would read a struct or a tagged variant from an array of its fields in order,
//! ignore every key beside the tag of a variant without parameters, and keep the last of a
//! repeated key.

use adpo::model::LoadOptions;
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
    // An unknown key is named as unknown, whatever its value (an array was once refused as
    // "must be a JSON object or a single value", as though the key existed).
    for json in [
        r#"{"no_such_key": [1, 2]}"#,
        r#"{"no_such_key": {"a": [1]}}"#,
    ] {
        let unknown = "unknown field `no_such_key`";
        refused(json, ObjectiveConfig::from_json(json), unknown);
        refused(json, parse_config(json), unknown);
        refused(json, SamplingConfig::from_json(json), unknown);
    }
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

#[test]
fn a_key_given_twice_is_refused_as_ambiguous_at_every_level() {
    let twice = |json: &str| format!("duplicate key `{json}`");
    refused(
        "objective tau",
        ObjectiveConfig::from_json(r#"{"tau": 0.8, "tau": 0.5}"#),
        &twice("tau"),
    );
    refused(
        "objective adaptive_tau.alpha",
        ObjectiveConfig::from_json(
            r#"{"adaptive_tau": {"rule": "target_entropy", "alpha": 1, "alpha": 2}}"#,
        ),
        &twice("adaptive_tau.alpha"),
    );
    for (json, key) in [
        (r#"{"tau": 0.8, "tau": 0.5}"#, "tau"),
        (r#"{"seed": 1, "seed": 1}"#, "seed"),
        (
            r#"{"anchor": {"mode": "fixed", "mode": "ema"}}"#,
            "anchor.mode",
        ),
        (
            r#"{"optimizer": {"name": "adamw", "betas": [0.9, 0.99], "betas": [0.8, 0.9]}}"#,
            "optimizer.betas",
        ),
        (r#"{"trainable": ["*"], "trainable": ["*"]}"#, "trainable"),
    ] {
        refused(json, parse_config(json), &twice(key));
    }
    refused(
        "sampling top_k",
        SamplingConfig::from_json(r#"{"top_k": 1, "top_k": 2}"#),
        &twice("top_k"),
    );
    refused(
        "load dtype",
        LoadOptions::from_json(r#"{"dtype": "float32", "dtype": "float64"}"#),
        &twice("dtype"),
    );
    refused(
        "load lora.r",
        LoadOptions::from_json(r#"{"lora": {"r": 4, "r": 8}}"#),
        &twice("lora.r"),
    );
    // The same key in two objects is no repetition.
    parse_config(r#"{"anchor": {"mode": "ema", "alpha": 0.5}, "adaptive_tau": {"rule": "target_entropy", "alpha": 1}}"#)
        .unwrap();
}

#[test]
fn declared_ranges_are_checked_and_named() {
    for (json, needle) in [
        (
            r#"{"micro_batch_rows": 0}"#,
            "micro_batch_rows must be >= 1 (or null), got 0",
        ),
        (
            r#"{"grad_clip": -1}"#,
            "grad_clip must be > 0 (or null), got -1",
        ),
        (
            r#"{"kde_clip": 0.5}"#,
            "kde_clip must be in (0, 0.5), got 0.5",
        ),
    ] {
        refused(json, parse_config(json), needle);
    }
    refused(
        "max_new_tokens",
        SamplingConfig::from_json(r#"{"max_new_tokens": 65537}"#),
        "max_new_tokens must be in [1, 65536], got 65537",
    );
}
