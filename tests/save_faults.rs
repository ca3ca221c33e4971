//! Saving checkpoint directories and trainer checkpoints under faults: legal long names,
//! directories that are not checkpoints, `out/.`, concurrent saves into one directory, and no
//! temporaries left beside the target (the kill-time leftovers are `temp_names`' unit test).

mod common;

use adpo::error::Status;
use adpo::trainer::Trainer;
use common::native_f64;
use std::path::Path;

const NAME: &str = "qwen3_gqa2_headdim16_tied";

/// The entries of `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_target_name_of_255_bytes_is_saved() {
    let out = tempfile::tempdir().unwrap();
    let policy = native_f64(NAME);
    let dir = out.path().join("d".repeat(255));
    policy.lock().save_pretrained(&dir).unwrap();
    assert!(dir.join("config.json").is_file());
    let mut trainer = Trainer::new(policy, None, "").unwrap();
    let file = out.path().join("f".repeat(255));
    trainer.save(&file).unwrap();
    assert_eq!(entries(out.path()), vec!["d".repeat(255), "f".repeat(255)]);
}

#[test]
fn a_directory_that_is_not_a_checkpoint_is_refused_and_left_as_it_was() {
    let out = tempfile::tempdir().unwrap();
    let results = out.path().join("results");
    std::fs::create_dir(&results).unwrap();
    std::fs::write(results.join("notes.txt"), "a week of work").unwrap();
    let e = native_f64(NAME)
        .lock()
        .save_pretrained(&results)
        .unwrap_err();
    assert_eq!(e.status, Status::InvalidArgument, "{e}");
    assert!(e.message.contains("is not a checkpoint"), "{e}");
    assert_eq!(entries(&results), ["notes.txt"]);
    assert_eq!(entries(out.path()), ["results"], "temporaries left behind");
}

#[test]
fn a_trailing_dot_names_the_directory_itself() {
    let out = tempfile::tempdir().unwrap();
    let policy = native_f64(NAME);
    policy
        .lock()
        .save_pretrained(&out.path().join("ckpt"))
        .unwrap();
    policy
        .lock()
        .save_pretrained(&out.path().join("ckpt/."))
        .unwrap();
    assert_eq!(entries(out.path()), ["ckpt"]);
    assert!(out.path().join("ckpt/model.safetensors").is_file());
}

#[test]
fn concurrent_saves_into_one_directory_each_publish_a_whole_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("ckpt");
    let policy = native_f64(NAME);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..10 {
                    let model = policy.lock().frozen_copy().unwrap();
                    model.save_pretrained(&dir).unwrap();
                    let files = entries(&dir);
                    assert!(files.contains(&"config.json".to_string()), "{files:?}");
                }
            });
        }
    });
    let files = entries(&dir);
    assert!(
        files.contains(&"model.safetensors".to_string()),
        "{files:?}"
    );
    assert_eq!(entries(out.path()), ["ckpt"], "temporaries left behind");
}
