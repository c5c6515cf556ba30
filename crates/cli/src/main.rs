//! The `glimpse` binary; everything lives in the library (`glimpse_cli`).

fn main() -> std::process::ExitCode {
    glimpse_cli::main()
}
