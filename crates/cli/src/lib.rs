//! The `glimpse` command-line tool: CLIP zero-shot classification, ViT image
//! classification and CLIP embeddings from Hugging Face checkpoint directories.
//!
//! `main.rs` only calls [`main`]; the subcommands live in [`commands`], the command line in
//! [`cli`], and every failure is a [`CliError`] printed as one `error:` paragraph on stderr.

#![warn(missing_docs)]

pub mod cli;
pub mod commands;
mod embedded;
mod error;
mod inputs;
mod model_dir;
mod output;
mod preprocess;
mod runtime;

use std::process::ExitCode;

use clap::Parser;

pub use error::{CliError, Result};

/// Runs one parsed command line.
pub fn run(cli: &cli::Cli) -> Result<()> {
    match &cli.command {
        cli::Command::ZeroShot(args) => commands::zero_shot::run(args),
        cli::Command::Classify(args) => commands::classify::run(args),
        cli::Command::Embed(args) => commands::embed::run(args),
        cli::Command::Train(cmd) => commands::train::run(cmd),
    }
}

/// The program: parses the command line (clap prints usage errors and exits with 2), runs
/// it, and prints a failure as `error: ...` on stderr with exit code 1 (2 for usage errors).
pub fn main() -> ExitCode {
    install_panic_hook();
    let cli = cli::Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// A panic is a bug in glimpse: report it in one paragraph, without a backtrace, and ask for
/// a bug report (exit code 101, as Rust's default).
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error in glimpse{at}: {msg}. This is a bug; please report it with \
             the command line that caused it."
        );
    }));
}
