//! Versions: of adpo, of its C ABI, and of the tch/libtorch it was built with.

// These constants are also the header's #defines (cbindgen emits them).

/// Major version of adpo (the version constants must equal the Cargo version; a test checks it).
pub const ADPO_VERSION_MAJOR: u32 = 0;
/// Minor version of adpo.
pub const ADPO_VERSION_MINOR: u32 = 1;
/// Patch version of adpo.
pub const ADPO_VERSION_PATCH: u32 = 0;
/// The C ABI version this header describes, bumped on every incompatible change; compare with
/// adpo_abi_version() at run time (the bindings do when they load).
pub const ADPO_ABI_VERSION: u32 = 1;

/// tch crate version this build uses.
pub(crate) const TCH_VERSION: &str = "0.24.0";

/// "adpo 0.1.0 (tch 0.24.0, libtorch 2.11.0+cu130)".
pub fn version_string() -> String {
    format!(
        "adpo {}.{}.{} (tch {}, libtorch {})",
        ADPO_VERSION_MAJOR,
        ADPO_VERSION_MINOR,
        ADPO_VERSION_PATCH,
        TCH_VERSION,
        env!("ADPO_LIBTORCH_VERSION")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn constants_match_cargo() {
        let v = format!(
            "{}.{}.{}",
            super::ADPO_VERSION_MAJOR,
            super::ADPO_VERSION_MINOR,
            super::ADPO_VERSION_PATCH
        );
        assert_eq!(v, env!("CARGO_PKG_VERSION"));
        assert!(
            super::version_string().contains("libtorch 2.11.0"),
            "{}",
            super::version_string()
        );
    }
}
