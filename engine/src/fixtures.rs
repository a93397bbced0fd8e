//! Locating the shared test fixtures (`../shared` beside the workspace, or `BAREMETAL_FIXTURES`).
//!
//! Tests call [`fixture`]; where the folder is missing it prints why and returns `None` so the
//! test can skip, except under `CI=true`, where a missing fixture fails the test.

use std::path::PathBuf;

/// The fixtures folder: `$BAREMETAL_FIXTURES`, else `<workspace>/../shared`.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("BAREMETAL_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

/// True when running in CI, where skipping is not allowed.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The path of a fixture such as `models/stories260K.bin`, or `None` (with a printed reason)
/// when it is absent outside CI.
///
/// # Panics
/// When the fixture is absent and `CI=true`.
pub fn fixture(relative: &str) -> Option<PathBuf> {
    let path = fixtures_dir().join(relative);
    if path.is_file() {
        return Some(path);
    }
    let msg = format!(
        "fixture {} not found (set BAREMETAL_FIXTURES to the folder holding models/ and reference/)",
        path.display()
    );
    if in_ci() {
        panic!("{msg}; CI=true, so this is a failure, not a skip");
    }
    eprintln!("SKIPPED: {msg}");
    None
}
