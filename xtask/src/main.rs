//! Project automation: `cargo xtask <command>`.
//!
//! * `ci` runs locally what CI runs: format check, clippy with warnings as errors, the tests.
//! * `bench-compare cpu [FILTER]` times the CPU workloads in glimpse and then in PyTorch on the
//!   same machine, and prints one table with the ratios. PyTorch comes from
//!   `$GLIMPSE_TORCH_PYTHON` when set, otherwise from a venv this command creates in
//!   `target/torch-venv` (`pip install torch`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench-compare") => match args.get(1).map(String::as_str) {
            Some("cpu") => bench_compare_cpu(args.get(2).map(String::as_str)),
            other => Err(format!(
                "bench-compare: unknown target {other:?}; available: cpu"
            )),
        },
        _ => Err(usage()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> String {
    "usage: cargo xtask <command>\n\
     \n  ci                          format check, clippy -D warnings, tests (what CI runs)\n  \
     bench-compare cpu [FILTER]  glimpse vs PyTorch on the CPU workloads, side by side"
        .to_string()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn output(cmd: &mut Command) -> Result<String, String> {
    eprintln!("xtask: running {cmd:?}");
    let out = cmd
        .current_dir(root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed with {}", out.status));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{cmd:?} printed invalid UTF-8: {e}"))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The same steps as `.ci/run`.
fn ci() -> Result<(), String> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["test", "--workspace"]))
}

/// A Python interpreter with torch: `$GLIMPSE_TORCH_PYTHON`, or a venv made on first use.
fn torch_python() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("GLIMPSE_TORCH_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let venv = root().join("target/torch-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "torch", "numpy"]))?;
    }
    Ok(python)
}

/// One line of JSON printed by either side: the name and the median.
struct Row {
    name: String,
    median_ms: f64,
    gflops: f64,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = line[start..].trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        Some(&s[..s.find('"')?])
    } else {
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim())
    }
}

fn parse_rows(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|l| {
            Some(Row {
                name: field(l, "name")?.to_string(),
                median_ms: field(l, "median_ms")?.parse().ok()?,
                gflops: field(l, "gflops")?.parse().ok()?,
            })
        })
        .collect()
}

fn bench_compare_cpu(filter: Option<&str>) -> Result<(), String> {
    let python = torch_python()?;
    let mut glimpse = cargo();
    glimpse.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "glimpse-benches",
        "--features",
        "gemm-crate",
        "--bin",
        "bench-compare",
    ]);
    glimpse.args(filter);
    let ours = parse_rows(&output(&mut glimpse)?);
    let mut torch = Command::new(&python);
    torch
        .arg(root().join("benches/compare_torch.py"))
        .args(filter);
    let torch_text = output(&mut torch)?;
    let theirs = parse_rows(&torch_text);
    let info = torch_text.lines().last().unwrap_or_default();
    // Rows that only glimpse's side has (the gemm crate reference).
    let extra: Vec<&Row> = ours
        .iter()
        .filter(|o| !theirs.iter().any(|t| t.name == o.name))
        .collect();

    println!(
        "| workload | glimpse ms | PyTorch ms | PyTorch / glimpse | glimpse GFLOP/s | PyTorch GFLOP/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for t in &theirs {
        let ours = ours.iter().find(|o| o.name == t.name);
        let (g_ms, ratio, g_gf) = match ours {
            Some(o) => (
                format!("{:.3}", o.median_ms),
                format!("{:.2}x", t.median_ms / o.median_ms),
                gf(o.gflops),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {g_ms} | {:.3} | {ratio} | {g_gf} | {} |",
            t.name,
            t.median_ms,
            gf(t.gflops)
        );
    }
    for o in extra {
        println!(
            "| {} | {:.3} | - | - | {} | - |",
            o.name,
            o.median_ms,
            gf(o.gflops)
        );
    }
    println!("\nPyTorch: {info}");
    println!("Ratios above 1 mean glimpse is faster. Medians of >= 5 runs after 2 warm-ups.");
    Ok(())
}

fn gf(v: f64) -> String {
    if v > 0.0 {
        format!("{v:.1}")
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_sides_json_lines() {
        let rows = parse_rows(
            "{\"name\": \"matmul 2x2x2\", \"median_ms\": 1.5, \"gflops\": 0.01}\n\
             {\"torch\": \"2.15\"}\n\
             {\"name\":\"x\",\"median_ms\":2,\"gflops\":0}",
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "matmul 2x2x2");
        assert_eq!(rows[0].median_ms, 1.5);
        assert_eq!(rows[1].name, "x");
        assert_eq!(rows[1].median_ms, 2.0);
    }
}
