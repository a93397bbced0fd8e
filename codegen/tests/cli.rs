//! The `codegen` binary: prints a module for a preset or a TOML path, fails clearly otherwise.

use std::process::Command;

fn codegen(arg: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_codegen"))
        .arg(arg)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run codegen")
}

#[test]
fn prints_the_module_for_a_preset_name_and_for_a_path() {
    let by_name = codegen("stories15m");
    assert!(
        by_name.status.success(),
        "{}",
        String::from_utf8_lossy(&by_name.stderr)
    );
    let by_path = codegen("model-config/presets/stories15m.toml");
    assert!(
        by_path.status.success(),
        "{}",
        String::from_utf8_lossy(&by_path.stderr)
    );
    assert_eq!(by_name.stdout, by_path.stdout);
    let text = String::from_utf8(by_name.stdout).unwrap();
    assert!(text.contains("pub const DIM: usize = 288;"));
    assert_eq!(
        text,
        codegen::generate(&model_config::preset("stories15m").unwrap())
    );
}

#[test]
fn bad_config_fails_with_a_message() {
    for (arg, needle) in [
        ("no-such-preset", "no-such-preset"),
        ("missing/dir/model.toml", "missing/dir/model.toml"),
        ("Cargo.toml", "Cargo.toml"),
    ] {
        let out = codegen(arg);
        assert!(!out.status.success(), "{arg} should fail");
        assert!(out.stdout.is_empty(), "{arg}: nothing on stdout");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cannot use model config") && err.contains(needle),
            "{arg}: {err}"
        );
    }
}

#[test]
fn usage_on_wrong_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_codegen"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}
