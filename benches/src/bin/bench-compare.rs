//! Times every workload of `glimpse_benches::cpu_suite` and prints one JSON object per line:
//! `{"name": ..., "median_ms": ..., "gflops": ...}`. Run through `cargo xtask bench-compare cpu`,
//! which puts PyTorch's figures for the same shapes beside these.

fn main() {
    let filter: Option<String> = std::env::args().nth(1);
    let device = glimpse_cpu::device();
    let suite = match glimpse_benches::cpu_suite(&device) {
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
