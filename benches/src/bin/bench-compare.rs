//! `bench-compare SUITE [FILTER]` times every workload of a suite (`cpu`:
//! `glimpse_benches::cpu_suite`, the kernels and ops; `models`: `glimpse_benches::model_suite`,
//! whole ViT and CLIP forwards; `cuda`, with the `cuda` feature: the GPU kernels and a
//! ViT-B/16 bf16 forward on the first CUDA device) and prints one JSON object per line:
//! `{"name": ..., "median_ms": ..., "gflops": ...}`. Run through `cargo xtask bench-compare
//! SUITE`, which puts PyTorch's figures for the same work beside these.

fn main() {
    let suite_name = std::env::args().nth(1).unwrap_or_default();
    let filter: Option<String> = std::env::args().nth(2);
    let (suite, sync) = match build(&suite_name) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(if e.starts_with("unknown suite") { 2 } else { 1 });
        }
    };
    let mut failed = false;
    for (mut w, inner) in suite {
        if filter
            .as_ref()
            .is_some_and(|f| !w.name.contains(f.as_str()))
        {
            continue;
        }
        let timed = match &sync {
            Some(sync) => glimpse_benches::median_ms_synced(&mut w.run, &**sync, inner, 5, 2.0),
            None => glimpse_benches::median_ms(&mut w.run, 5, 2.0),
        };
        match timed {
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
                // Report and go on: one failing workload should not hide the others' numbers.
                eprintln!("error: {} failed: {e}", w.name);
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}

type Sync = Box<dyn Fn() -> glimpse_tensor::Result<()>>;
type Suite = Vec<(glimpse_benches::Workload, usize)>;

/// The workloads of a suite, each with its repeat count per timed sample, and for a GPU suite
/// the function that waits for the device.
fn build(name: &str) -> Result<(Suite, Option<Sync>), String> {
    let once = |w: Vec<glimpse_benches::Workload>| w.into_iter().map(|w| (w, 1)).collect();
    let cpu = glimpse_cpu::device();
    match name {
        "cpu" => Ok((
            once(glimpse_benches::cpu_suite(&cpu).map_err(|e| e.to_string())?),
            None,
        )),
        "models" => Ok((
            once(glimpse_benches::model_suite(&cpu).map_err(|e| e.to_string())?),
            None,
        )),
        #[cfg(feature = "cuda")]
        "cuda" => {
            let device = glimpse_cuda::device(0).map_err(|e| e.to_string())?;
            let suite = glimpse_benches::cuda_suite(&device).map_err(|e| e.to_string())?;
            Ok((
                suite,
                Some(Box::new(move || glimpse_cuda::synchronize(&device))),
            ))
        }
        other => Err(format!(
            "unknown suite {other:?}; usage: bench-compare cpu|models{} [FILTER]",
            if cfg!(feature = "cuda") { "|cuda" } else { "" }
        )),
    }
}
