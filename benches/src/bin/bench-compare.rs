//! `bench-compare SUITE [FILTER]` times every workload of a suite (`cpu`:
//! `glimpse_benches::cpu_suite`, the kernels and ops; `models`: `glimpse_benches::model_suite`,
//! whole ViT and CLIP forwards; `wgpu` and `wgpu-models`: the same two suites on the first
//! wgpu adapter, each sample waiting for the device; `cuda`, with the `cuda` feature: the GPU
//! kernels and a ViT-B/16 bf16 forward on the first CUDA device) and prints one JSON object
//! per line: `{"name": ..., "median_ms": ..., "gflops": ...}` (wgpu rows add the dispatches,
//! submissions and read-backs of one run). Run through `cargo xtask bench-compare SUITE`,
//! which puts PyTorch's (or, for wgpu, the CPU backend's) figures for the same work beside
//! these.

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
        let traffic = if timed.is_ok() {
            queue_traffic(&suite_name, &mut w.run) + &peak_memory(&suite_name, &mut w.run)
        } else {
            String::new()
        };
        match timed {
            Ok(ms) => {
                let gflops = if w.flops > 0.0 {
                    w.flops / ms / 1e6
                } else {
                    0.0
                };
                println!(
                    "{{\"name\": \"{}\", \"median_ms\": {ms:.4}, \"gflops\": {gflops:.2}{traffic}}}",
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

/// For the wgpu suites: `, "dispatches": .., "submissions": .., "readbacks": ..` of one run
/// followed by one wait for the device (empty for other suites).
fn queue_traffic(suite: &str, run: &mut dyn FnMut() -> glimpse_tensor::Result<()>) -> String {
    if !suite.starts_with("wgpu") {
        return String::new();
    }
    let Ok(be) = glimpse_wgpu::backend(0) else {
        return String::new();
    };
    if be.synchronize().is_err() {
        return String::new();
    }
    be.reset_stats();
    if run().and_then(|()| be.synchronize()).is_err() {
        return String::new();
    }
    let s = be.stats();
    format!(
        ", \"dispatches\": {}, \"submissions\": {}, \"readbacks\": {}",
        s.dispatches, s.submissions, s.readbacks
    )
}

/// For the CUDA suite: `, "peak_extra_gb": ..`, the most device memory one run held beyond
/// what was held before it (its inputs), as PyTorch's side reports it (empty for other suites).
fn peak_memory(suite: &str, run: &mut dyn FnMut() -> glimpse_tensor::Result<()>) -> String {
    #[cfg(feature = "cuda")]
    if suite == "cuda" {
        let mut measure = || -> glimpse_tensor::Result<f64> {
            let be = glimpse_cuda::backend(0)?;
            be.synchronize()?;
            be.reset_memory_high_water()?;
            let (before, _) = be.memory_in_use()?;
            run()?;
            be.synchronize()?;
            let (_, high) = be.memory_in_use()?;
            Ok(high.saturating_sub(before) as f64 / 1e9)
        };
        return match measure() {
            Ok(gb) => format!(", \"peak_extra_gb\": {gb:.3}"),
            Err(e) => {
                eprintln!("note: no memory figure: {e}");
                String::new()
            }
        };
    }
    let _ = (suite, run);
    String::new()
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
        "wgpu" | "wgpu-models" => {
            let device = glimpse_wgpu::device(0).map_err(|e| e.to_string())?;
            let suite = if name == "wgpu" {
                glimpse_benches::cpu_suite(&device)
            } else {
                glimpse_benches::model_suite(&device)
            }
            .map_err(|e| e.to_string())?;
            Ok((
                once(suite),
                Some(Box::new(move || glimpse_wgpu::synchronize(&device))),
            ))
        }
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
            "unknown suite {other:?}; usage: bench-compare cpu|models|wgpu|wgpu-models{} [FILTER]",
            if cfg!(feature = "cuda") { "|cuda" } else { "" }
        )),
    }
}
