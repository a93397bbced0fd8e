//! `generate(stories260k)` must equal the checked-in snapshot, so every change to the
//! emitted code shows up in review. `UPDATE_SNAPSHOTS=1 cargo test -p codegen` rewrites it.

use std::path::PathBuf;

#[test]
fn stories260k_matches_snapshot() {
    let cfg = model_config::preset("stories260k").expect("preset");
    let actual = codegen::generate(&cfg);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/stories260k.rs");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &actual)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run with UPDATE_SNAPSHOTS=1 to create it",
            path.display()
        )
    });
    if actual != expected {
        let (line, (a, e)) = actual
            .lines()
            .zip(expected.lines())
            .enumerate()
            .find(|(_, (a, e))| a != e)
            .unwrap_or((
                actual.lines().count().min(expected.lines().count()),
                ("<end>", "<end>"),
            ));
        panic!(
            "generated code differs from {} at line {}:\n  snapshot:  {e}\n  generated: {a}\n\
             If the change is intended, rerun with UPDATE_SNAPSHOTS=1 and review the diff.",
            path.display(),
            line + 1
        );
    }
}
