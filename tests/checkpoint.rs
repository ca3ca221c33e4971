//! Checkpoints through the Rust API: one file that a kill cannot tear, names with dots,
//! corrupt data, poisoned but well-formed state, concurrent writers, planted symlinks, and the
//! sampler's generator.

mod common;

use adpo::checkpoint;
use adpo::sample::SamplingConfig;
use adpo::trainer::Trainer;
use adpo::Status;
use common::{batch, model, weights};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

const CFG: &str = r#"{"optimizer": {"name": "adamw", "lr": 0.01}}"#;

/// A fresh directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adpo-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A trainer on the float32 fixture after `steps` steps.
fn trained(steps: i64) -> Trainer {
    let mut t = Trainer::new(model("tiny/llama"), None, CFG).unwrap();
    for s in 0..steps {
        t.step(&batch(s)).unwrap();
    }
    t
}

fn same(a: &[Tensor], b: &[Tensor]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.equal(y))
}

/// Everything observable of a trainer that a refused load must leave alone.
fn snapshot(t: &Trainer) -> (Vec<Tensor>, u64, Vec<f64>) {
    (
        weights(t.policy()),
        t.steps(),
        t.sequence_logp(&batch(7)).unwrap(),
    )
}

fn assert_unchanged(t: &Trainer, before: &(Vec<Tensor>, u64, Vec<f64>), what: &str) {
    let now = snapshot(t);
    assert!(same(&now.0, &before.0), "{what}: weights changed");
    assert_eq!(now.1, before.1, "{what}: step counter changed");
    assert_eq!(now.2, before.2, "{what}: outputs changed");
}

/// Child mode of `a_killed_save_leaves_one_whole_checkpoint`: saves the states of trainers
/// after 1 and after 2 steps alternately to $ADPO_SAVE_LOOP, until killed.
#[test]
#[ignore = "a child process of a_killed_save_leaves_one_whole_checkpoint"]
fn save_loop_child() {
    let Some(path) = std::env::var_os("ADPO_SAVE_LOOP") else {
        return;
    };
    let (mut a, mut b) = (trained(1), trained(2));
    loop {
        a.save(Path::new(&path)).unwrap();
        b.save(Path::new(&path)).unwrap();
    }
}

#[test]
fn a_killed_save_leaves_one_whole_checkpoint() {
    let dir = scratch("killed-save");
    let path = dir.join("ckpt.safetensors");
    let expected = [
        (1, weights(trained(1).policy())),
        (2, weights(trained(2).policy())),
    ];
    // 24 kill points, 3 ms apart, spread over a few saves after the first: one whole
    // checkpoint must load every time.
    for delay_ms in (20..92).step_by(3) {
        let _ = std::fs::remove_file(&path);
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "save_loop_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env("ADPO_SAVE_LOOP", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !path.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the child never saved"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut fresh = trained(0);
        fresh.load(&path).unwrap();
        let w = weights(fresh.policy());
        assert!(
            expected
                .iter()
                .any(|(s, e)| fresh.steps() == *s && same(&w, e)),
            "killed after {delay_ms} ms: the checkpoint mixes two saves (steps {})",
            fresh.steps()
        );
    }
    // The temporaries that the kills left beside the checkpoint: the next save removes them.
    trained(1).save(&path).unwrap();
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["ckpt.safetensors"], "leftovers of killed saves");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_checkpoint_is_one_file() {
    let dir = scratch("one-file");
    trained(1).save(&dir.join("ckpt.safetensors")).unwrap();
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["ckpt.safetensors"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dotted_names_are_different_checkpoints() {
    let dir = scratch("dotted");
    let mut t = trained(1);
    t.save(&dir.join("run.step1")).unwrap();
    t.step(&batch(1)).unwrap();
    t.save(&dir.join("run.step5")).unwrap();
    t.load(&dir.join("run.step1")).unwrap();
    assert_eq!(t.steps(), 1, "run.step1 resumed with run.step5's state");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flipped_data_bytes_are_refused_naming_the_tensor() {
    let dir = scratch("flipped");
    let path = dir.join("ckpt.safetensors");
    trained(2).save(&path).unwrap();
    let clean = std::fs::read(&path).unwrap();
    let data_start = 8 + u64::from_le_bytes(clean[..8].try_into().unwrap()) as usize;
    let mut t = trained(1);
    let before = snapshot(&t);
    // Spread over the data region: weights and trainer state are both covered.
    for k in 1..8 {
        let at = data_start + (clean.len() - data_start) * k / 8;
        let mut bytes = clean.clone();
        bytes[at] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let e = t.load(&path).unwrap_err();
        assert_eq!(e.status, Status::Checkpoint, "byte {at}: {}", e.message);
        assert!(
            e.message.contains("tensor ") && e.message.contains("checksum"),
            "{}",
            e.message
        );
        assert_unchanged(&t, &before, &format!("byte {at}"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Rewrites the checkpoint at `path` with `edit` applied to its tensors, with valid checksums.
fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let mut named = checkpoint::load(path).unwrap();
    edit(&mut named);
    checkpoint::save(path, &named).unwrap();
}

fn set(named: &mut [(String, Tensor)], name: &str, value: Tensor) {
    let slot = named.iter_mut().find(|(k, _)| k == name).unwrap();
    slot.1 = value;
}

/// `name`'s tensor with element 0 set to `v`, same dtype.
fn with_first(named: &[(String, Tensor)], name: &str, v: f64) -> Tensor {
    let t = checkpoint::find(named, name).unwrap().copy();
    let _ = t.view([-1]).get(0).fill_(v);
    t
}

#[test]
fn poisoned_well_formed_state_is_refused_and_changes_nothing() {
    let dir = scratch("poisoned");
    let good = dir.join("good.safetensors");
    trained(2).save(&good).unwrap();
    // A parameter (the first that is not trainer state) and its moments.
    let param = checkpoint::load(&good)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .find(|k| !k.starts_with(checkpoint::STATE_PREFIX))
        .unwrap();
    let first = format!("__adpo__.optimizer.first.{param}");
    let second = format!("__adpo__.optimizer.second.{param}");
    type Edit<'a> = Box<dyn Fn(&mut Vec<(String, Tensor)>) + 'a>;
    let steps = |v: i64| -> Edit {
        Box::new(move |n| set(n, "__adpo__.optimizer.steps", Tensor::from_slice(&[v])))
    };
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("steps -1", steps(-1), "optimizer.steps"),
        ("steps 2^32 - 1", steps((1 << 32) - 1), "optimizer.steps"),
        (
            "hard copies > steps",
            Box::new(|n| {
                set(
                    n,
                    "__adpo__.anchor.hard_copies",
                    Tensor::from_slice(&[3i64]),
                )
            }),
            "hard_copies",
        ),
        (
            "Inf first moment",
            Box::new(|n| {
                let t = with_first(n, &first, f64::INFINITY);
                set(n, &first, t)
            }),
            "first",
        ),
        (
            "negative second moment",
            Box::new(|n| {
                let t = with_first(n, &second, -1e-3);
                set(n, &second, t)
            }),
            "second",
        ),
        (
            "NaN weight",
            Box::new(|n| {
                let t = with_first(n, &param, f64::NAN);
                set(n, &param, t)
            }),
            "NaN",
        ),
        (
            "float64 moment",
            Box::new(|n| {
                let t = checkpoint::find(n, &first).unwrap().to_kind(Kind::Double);
                set(n, &first, t)
            }),
            "Double",
        ),
    ];
    let mut t = trained(1);
    let before = snapshot(&t);
    for (what, edit, needle) in cases {
        let bad = dir.join("bad.safetensors");
        std::fs::copy(&good, &bad).unwrap();
        rewrite(&bad, edit);
        let e = t.load(&bad).unwrap_err();
        assert_eq!(e.status, Status::Checkpoint, "{what}: {}", e.message);
        assert!(e.message.contains(needle), "{what}: {}", e.message);
        assert_unchanged(&t, &before, what);
    }
    // The untouched file still loads: the refusals were the edits'.
    t.load(&good).unwrap();
    assert_eq!(t.steps(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn concurrent_saves_to_one_path_leave_one_trainers_checkpoint() {
    let dir = scratch("concurrent");
    let path = dir.join("ckpt.safetensors");
    let expected = [
        (1, weights(trained(1).policy())),
        (2, weights(trained(2).policy())),
    ];
    let mut pair = Some((trained(1), trained(2)));
    for round in 0..6 {
        let (a, b) = pair.take().unwrap();
        let save_many = |mut t: Trainer, p: PathBuf| {
            std::thread::spawn(move || {
                for _ in 0..5 {
                    t.save(&p).unwrap();
                }
                t
            })
        };
        let (ha, hb) = (save_many(a, path.clone()), save_many(b, path.clone()));
        pair = Some((ha.join().unwrap(), hb.join().unwrap()));
        let mut fresh = trained(0);
        fresh.load(&path).unwrap();
        let w = weights(fresh.policy());
        assert!(
            expected
                .iter()
                .any(|(s, e)| fresh.steps() == *s && same(&w, e)),
            "round {round}: the checkpoint is neither trainer's"
        );
    }
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(names.len(), 1, "temporary files are left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_symlink_at_the_old_temporary_name_is_not_followed() {
    let dir = scratch("symlink");
    let path = dir.join("ckpt.safetensors");
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let planted = PathBuf::from(format!("{}.tmp{}", path.display(), std::process::id()));
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let mut t = trained(1);
    t.save(&path).unwrap();
    assert!(
        std::fs::read(&victim).unwrap() == b"precious",
        "the save wrote through the planted symlink"
    );
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_file());
    t.load(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_save_leaves_no_temporary_file() {
    let dir = scratch("failed-save");
    // The target is a directory: the rename fails after the temporary file was written.
    let path = dir.join("taken");
    std::fs::create_dir_all(path.join("inside")).unwrap();
    let e = trained(1).save(&path).unwrap_err();
    assert_eq!(e.status, Status::Io, "{}", e.message);
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(names.len(), 1, "the temporary file is left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resumed_run_samples_what_an_uninterrupted_one_would() {
    let dir = scratch("sampler");
    let path = dir.join("ckpt.safetensors");
    let cfg = SamplingConfig {
        max_new_tokens: 4,
        ..Default::default()
    };
    let prompts: [&[i64]; 2] = [&[1, 2], &[3]];
    let ids = |t: &mut Trainer| {
        let b = t.sample(&prompts, 4, &cfg).unwrap();
        Vec::<i64>::try_from(b.ids.reshape([-1])).unwrap()
    };
    let mut t = trained(1);
    ids(&mut t);
    t.save(&path).unwrap();
    let a = ids(&mut t);
    t.load(&path).unwrap();
    let b = ids(&mut t);
    assert_eq!(a, b, "the sampler's generator is not in the checkpoint");
    // A fresh trainer (another seed) resumes the generator too.
    let mut fresh = Trainer::new(model("tiny/llama"), None, r#"{"seed": 9}"#).unwrap();
    fresh.load(&path).unwrap();
    assert_eq!(ids(&mut fresh), a);
    std::fs::remove_dir_all(&dir).unwrap();
}
