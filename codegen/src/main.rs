//! `codegen <config.toml | preset>`: prints the generated module for a model config.

use std::io::Write;
use std::process::ExitCode;

const USAGE: &str = "usage: codegen <config.toml | preset name>\n\
     Prints the generated kernel module for the model config to stdout.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let spec = match args.as_slice() {
        [flag] if flag == "-h" || flag == "--help" => {
            println!("{USAGE}\npresets: {}", model_config::preset_names());
            return ExitCode::SUCCESS;
        }
        [spec] => spec,
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let cfg = match model_config::resolve(spec) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("codegen: cannot use model config {spec:?}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let source = codegen::generate(&cfg);
    match std::io::stdout().lock().write_all(source.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        // `codegen x | head` is normal use, not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("codegen: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}
