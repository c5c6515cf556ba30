//! `bench-compare SUITE [FILTER]` times every workload of a suite (`cpu`:
//! `glimpse_benches::cpu_suite`, the kernels and ops; `models`: `glimpse_benches::model_suite`,
//! whole ViT and CLIP forwards) and prints one JSON object per line:
//! `{"name": ..., "median_ms": ..., "gflops": ...}`. Run through `cargo xtask bench-compare
//! SUITE`, which puts PyTorch's figures for the same work beside these.

fn main() {
    let suite_name = std::env::args().nth(1).unwrap_or_default();
    let filter: Option<String> = std::env::args().nth(2);
    let device = glimpse_cpu::device();
    let suite = match suite_name.as_str() {
        "cpu" => glimpse_benches::cpu_suite(&device),
        "models" => glimpse_benches::model_suite(&device),
        other => {
            eprintln!("error: unknown suite {other:?}; usage: bench-compare cpu|models [FILTER]");
            std::process::exit(2);
        }
    };
    let suite = match suite {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: building the workloads failed: {e}");
            std::process::exit(1);
        }
    };
    for mut w in suite {
        if filter
            .as_ref()
            .is_some_and(|f| !w.name.contains(f.as_str()))
        {
            continue;
        }
        match glimpse_benches::median_ms(&mut w.run, 5, 2.0) {
            Ok(ms) => {
                let gflops = if w.flops > 0.0 {
                    w.flops / ms / 1e6
                } else {
                    0.0
                };
                println!(
                    "{{\"name\": \"{}\", \"median_ms\": {ms:.4}, \"gflops\": {gflops:.2}}}",
                    w.name
                );
            }
            Err(e) => {
                eprintln!("error: {} failed: {e}", w.name);
                std::process::exit(1);
            }
        }
    }
}
