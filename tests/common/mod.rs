//! What the integration tests on the fixture models share.
#![allow(dead_code)] // each test binary uses a part of it

use std::path::PathBuf;
use tch::Device;

/// A model made by tests/fixtures/make_models.py (`make fixtures`; ADPO_FIXTURES overrides the
/// directory).
pub fn fixture(name: &str) -> PathBuf {
    let dir = std::env::var("ADPO_FIXTURES").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/generated").to_string()
    });
    let p = PathBuf::from(dir).join(name);
    assert!(p.is_file(), "{} missing: run `make fixtures`", p.display());
    p
}

/// ADPO_TEST_DEVICE=cuda:0 (scripts/gpu-check) runs the tests on the GPU.
pub fn device() -> Device {
    match std::env::var("ADPO_TEST_DEVICE").as_deref() {
        Ok("cuda") | Ok("cuda:0") => Device::Cuda(0),
        _ => Device::Cpu,
    }
}
