//! `baremetal`: generate text, inspect checkpoints, and measure the specialised binary.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
