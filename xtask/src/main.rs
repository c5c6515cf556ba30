//! Project automation: `cargo xtask <command>`.
//!
//! * `ci` runs locally what CI runs: format check, clippy with warnings as errors, the tests,
//!   the NVRTC compile check of the CUDA kernels.
//! * `bench-compare cpu|models [FILTER]` times a suite of workloads in glimpse and then in
//!   PyTorch on the same machine, and prints one table with the ratios: `cpu` is the kernels
//!   and ops, `models` whole ViT-B/16 and CLIP ViT-B/32 forwards (transformers on PyTorch's
//!   side). PyTorch comes from `$GLIMPSE_TORCH_PYTHON` when set, otherwise from a venv this
//!   command creates in `target/torch-venv` (`pip install torch transformers`).
//!   `bench-compare train [STEPS] [FLAG VALUE]...` times the Fashion-MNIST ViT training recipe
//!   in `glimpse train vit` and in `benches/train_torch.py` from the same initial weights
//!   (model flags such as `--hidden 64` go to both).
//! * `fixtures` regenerates the committed reference fixtures: `tests/fixtures/models` with
//!   `tests/fixtures/generate/models.py`, then `tests/fixtures/processing` with
//!   `tests/fixtures/generate/processing.py` when that script exists. Python comes from
//!   `$GLIMPSE_FIXTURES_PYTHON` when set, otherwise from a venv this command creates in
//!   `target/fixtures-venv` (`pip install -r tests/fixtures/generate/requirements.txt`, the
//!   pinned versions).
//! * `kernel-check` compiles every CUDA source with NVRTC for sm_80 and sm_90, on a machine
//!   without a GPU: NVRTC comes from the PyPI package `nvidia-cuda-nvrtc` in a venv
//!   (`target/nvrtc-venv`, or the Python in `$GLIMPSE_NVRTC_PYTHON`). Any compile error fails,
//!   and so does a kernel whose shared-memory layout differs from what the host launches it
//!   with.
//! * `gpu-bundle [DIR]` builds, here, the CUDA test binaries and the benchmark binary in
//!   release into one folder (default `target/gpu-bundle`) with a `run.sh` that, on a GPU
//!   machine without a Rust toolchain, runs every CUDA test, then the benchmarks, then the same
//!   work in PyTorch, and prints one table of glimpse vs PyTorch.
//! * `parity [--full] [--keep] [FILTER]` runs the model parity tests (`tests/tests/parity.rs`)
//!   in release. With `--full` it first builds the full-size models with random weights in
//!   `target/parity-full/models` (`models.py --full`, same Python as `fixtures`) and runs the
//!   ignored full-size tests against them (`GLIMPSE_PARITY_DIR`); the directory (about 1 GB) is
//!   removed after a pass unless `--keep` is given, and kept after a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("fixtures") => fixtures(),
        Some("parity") => parity(&args[1..]),
        Some("kernel-check") => kernel_check(),
        Some("gpu-bundle") => gpu_bundle(args.get(1).map(String::as_str)),
        Some("bench-compare") => match args.get(1).map(String::as_str) {
            Some(suite @ ("cpu" | "models")) => {
                bench_compare(suite, args.get(2).map(String::as_str))
            }
            Some("train") => {
                bench_compare_train(args.get(2).map(String::as_str), &args[3.min(args.len())..])
            }
            Some(suite @ ("wgpu" | "wgpu-models")) => {
                bench_compare_wgpu(suite, args.get(2).map(String::as_str))
            }
            other => Err(format!(
                "bench-compare: unknown suite {other:?}; available: cpu, models, train, wgpu, \
                 wgpu-models"
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
     bench-compare cpu|models [FILTER]\n                              \
     glimpse vs PyTorch on the CPU kernels or whole models, side by side\n  \
     bench-compare train [STEPS] [--hidden D ...]\n                              \
     ViT Fashion-MNIST training throughput vs PyTorch\n  \
     bench-compare wgpu|wgpu-models [FILTER]\n                              \
     the wgpu device vs the CPU backend on the same workloads\n  \
     fixtures                    regenerate tests/fixtures/{models,processing} (pinned transformers)\n  \
     parity [--full] [--keep] [FILTER]\n                              \
     ViT/CLIP parity tests; --full builds the full-size models first\n  \
     kernel-check                compile every CUDA kernel with NVRTC for sm_80 and sm_90 (no GPU)\n  \
     gpu-bundle [DIR]            test and bench binaries + run.sh for a GPU machine without Rust"
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

/// The proptest seed `.ci/run` pins (keep the two equal).
const CI_PROPTEST_SEED: &str = "20261127";

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
    // CI's proptest seed (see .ci/run) unless one is set, so a local run reproduces CI's cases.
    let mut test = cargo();
    if std::env::var_os("PROPTEST_RNG_SEED").is_none_or(|v| v.is_empty()) {
        test.env("PROPTEST_RNG_SEED", CI_PROPTEST_SEED);
    }
    run(test.args(["test", "--workspace"]))?;
    kernel_check()
}

/// A Python interpreter with torch: `$GLIMPSE_TORCH_PYTHON`, or a venv made on first use.
fn torch_python() -> Result<PathBuf, String> {
    venv_python(
        "GLIMPSE_TORCH_PYTHON",
        "target/torch-venv",
        &["torch", "numpy", "transformers"],
    )
}

/// The Python of the fixture generators, with the pinned versions:
/// `$GLIMPSE_FIXTURES_PYTHON`, or a venv made on first use.
fn fixtures_python() -> Result<PathBuf, String> {
    venv_python(
        "GLIMPSE_FIXTURES_PYTHON",
        "target/fixtures-venv",
        &["-r", "tests/fixtures/generate/requirements.txt"],
    )
}

/// `$env_var` when set; otherwise the venv `dir` (relative to the workspace root), created
/// with `python3 -m venv` and then `pip install <install>`. The install is redone when it did
/// not finish or when its arguments, or the requirements files they name with `-r`, changed
/// (a stamp file in the venv records what was installed).
fn venv_python(env_var: &str, dir: &str, install: &[&str]) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(p));
    }
    let venv = root().join(dir);
    let python = venv.join("bin/python");
    let stamp_path = venv.join(".xtask-installed");
    let mut stamp = install.join(" ");
    for pair in install.windows(2) {
        if pair[0] == "-r" {
            let path = root().join(pair[1]);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            stamp.push('\n');
            stamp.push_str(&text);
        }
    }
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    if std::fs::read_to_string(&stamp_path).ok().as_deref() != Some(stamp.as_str()) {
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet"])
            .args(install))?;
        std::fs::write(&stamp_path, &stamp)
            .map_err(|e| format!("cannot write {}: {e}", stamp_path.display()))?;
    }
    Ok(python)
}

/// The NVRTC of CUDA 13.0 (the API level glimpse-cuda is built for) from PyPI.
const NVRTC_PACKAGE: &str = "nvidia-cuda-nvrtc==13.0.88";

/// `cargo xtask kernel-check`: every CUDA source through NVRTC for sm_80 and sm_90, and the
/// host's shared-memory sizes against the kernels' (glimpse-cuda's `nvrtc_*` tests).
fn kernel_check() -> Result<(), String> {
    let python = venv_python(
        "GLIMPSE_NVRTC_PYTHON",
        "target/nvrtc-venv",
        &[NVRTC_PACKAGE],
    )?;
    let lib_dir = output(Command::new(&python).args([
        "-c",
        "import glob, os, nvidia; \
         hits = [p for d in nvidia.__path__ for p in glob.glob(os.path.join(d, '**', 'libnvrtc.so*'), recursive=True)]; \
         print(os.path.dirname(sorted(hits)[0]) if hits else '')",
    ]))?;
    let lib_dir = lib_dir.trim();
    if lib_dir.is_empty() {
        return Err(format!(
            "no libnvrtc.so in {NVRTC_PACKAGE} ({})",
            python.display()
        ));
    }
    let ld = match std::env::var("LD_LIBRARY_PATH") {
        Ok(old) if !old.is_empty() => format!("{lib_dir}:{old}"),
        _ => lib_dir.to_string(),
    };
    run(cargo()
        .args([
            "test",
            "-p",
            "glimpse-cuda",
            // nvrtc_compiles_every_kernel and nvrtc_host_shared_memory_sizes_match_the_kernels
            "nvrtc_",
            "--",
            "--nocapture",
        ])
        .env("LD_LIBRARY_PATH", ld)
        .env("GLIMPSE_REQUIRE_NVRTC", "1"))
}

/// Executables of the test targets `cargo test --no-run --message-format=json` built.
fn test_executables(json: &str) -> Vec<PathBuf> {
    json.lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"test\":true"))
        .filter_map(|l| field(l, "executable"))
        .filter(|e| *e != "null")
        .map(PathBuf::from)
        .collect()
}

/// `cargo xtask gpu-bundle [DIR]`: everything a GPU machine without Rust needs.
fn gpu_bundle(dir: Option<&str>) -> Result<(), String> {
    let out = root().join(dir.unwrap_or("target/gpu-bundle"));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("tests"))
        .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let json = output(cargo().args([
        "test",
        "--release",
        "-p",
        "glimpse-cuda",
        "--no-run",
        "--message-format=json",
    ]))?;
    let tests = test_executables(&json);
    if tests.is_empty() {
        return Err("cargo built no glimpse-cuda test binaries".into());
    }
    let copy = |from: &Path, to: PathBuf| {
        std::fs::copy(from, &to)
            .map(drop)
            .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))
    };
    for t in &tests {
        let name = t.file_name().and_then(|n| n.to_str()).unwrap_or("test");
        // Strip cargo's hash: `fused-0123abcd` -> `fused`.
        let short = name.rsplit_once('-').map_or(name, |(a, _)| a);
        copy(t, out.join("tests").join(short))?;
    }
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "glimpse-benches",
        "--features",
        "cuda",
        "--bin",
        "bench-compare",
    ]))?;
    copy(
        &root().join("target/release/bench-compare"),
        out.join("bench-compare"),
    )?;
    copy(
        &root().join("benches/compare_torch.py"),
        out.join("compare_torch.py"),
    )?;
    let run_sh = out.join("run.sh");
    std::fs::write(&run_sh, GPU_RUN_SH)
        .map_err(|e| format!("cannot write {}: {e}", run_sh.display()))?;
    run(Command::new("chmod").arg("+x").arg(&run_sh))?;
    // The release profile keeps debug info (for perf); the bundle does not need it.
    for binary in walk(&out)
        .into_iter()
        .filter(|p| !p.extension().is_some_and(|e| e == "py" || e == "sh"))
    {
        run(Command::new("strip").arg("--strip-debug").arg(&binary))?;
    }
    let mut bytes = 0u64;
    for entry in walk(&out) {
        bytes += std::fs::metadata(&entry).map(|m| m.len()).unwrap_or(0);
    }
    eprintln!(
        "xtask: gpu bundle in {} ({:.1} MB, {} test binaries); on the GPU machine run ./run.sh",
        out.display(),
        bytes as f64 / 1e6,
        tests.len()
    );
    if bytes > 60_000_000 {
        return Err(format!(
            "the bundle is {bytes} bytes, over the 60 MB budget"
        ));
    }
    Ok(())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                files.extend(walk(&p));
            } else {
                files.push(p);
            }
        }
    }
    files
}

/// The bundle's entry point on the GPU machine.
const GPU_RUN_SH: &str = r#"#!/usr/bin/env bash
# glimpse GPU bundle: CUDA tests, then benchmarks, then the same work in PyTorch, one table.
# Made by `cargo xtask gpu-bundle`; needs the NVIDIA driver, libnvrtc and libcublas (CUDA 13),
# and python3 with torch for the comparison. OUT (if set) receives the logs.
# Where compute-sanitizer exists, the kernel-candidate tests also run under its memcheck and
# racecheck (GLIMPSE_SANITIZE=0 skips that). GLIMPSE_PROFILE=1 adds Nsight Compute reports
# (ncu, clocks left alone) of the kernels furthest from their targets, after the table.
set -u
cd "$(dirname "$0")"
LOGS="${OUT:-.}"
# The CUDA libraries: the toolkit's, then those of the pip packages PyTorch brings.
extra=$(python3 -c "import glob, os, nvidia; print(':'.join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(os.path.join(d, '**', 'lib*.so*'), recursive=True)})))" 2>/dev/null)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${extra}:${LD_LIBRARY_PATH:-}"
export GLIMPSE_REQUIRE_CUDA=1 GLIMPSE_CUDA_POISON=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
status=0
# The test binaries run side by side (each its own process and CUDA context); the
# benchmarks run alone afterwards. The fused tests run twice more with each tiling of the
# attention forward fixed, so both kernels are checked whatever the automatic choice picks,
# and three more times (the compositions once more) with every kernel candidate on
# (GLIMPSE_CUDA_CANDIDATES=all: kernels not yet run on a GPU, off by default; see
# glimpse_cuda::KernelCandidates), and once with the shared memory per block of Ada and
# consumer Ampere (99 KB: the contrastive kernels with K steps of 32, no candidate that needs
# more).
jobs=()
run_job() {  # run_job NAME COMMAND...: in the background, log and exit code under /tmp
    local name=$1
    shift
    jobs+=("$name")
    rm -f "/tmp/glimpse-$name.rc"
    ( "$@" > "/tmp/glimpse-$name.log" 2>&1; echo $? > "/tmp/glimpse-$name.rc" ) &
}
start() {  # start NAME BINARY [VAR=VALUE...]
    local name=$1 bin=$2
    shift 2
    # A dozen processes share one GPU: the limit is per binary, with room for that.
    run_job "$name" env "$@" timeout "${GLIMPSE_TEST_TIMEOUT:-300}" "$bin" --test-threads=1
}
for t in tests/*; do start "$(basename "$t")" "$t"; done
for rows in 64 128; do start "fused-rows$rows" tests/fused GLIMPSE_CUDA_ATTN_FWD_ROWS=$rows; done
start fused-candidates tests/fused GLIMPSE_CUDA_CANDIDATES=all
start compositions-candidates tests/compositions GLIMPSE_CUDA_CANDIDATES=all
for rows in 64 128; do
    start "fused-candidates-rows$rows" tests/fused GLIMPSE_CUDA_CANDIDATES=all \
        GLIMPSE_CUDA_ATTN_FWD_ROWS=$rows
done
start fused-smem99k tests/fused GLIMPSE_CUDA_SMEM_LIMIT=99K GLIMPSE_CUDA_CANDIDATES=all
# Out-of-bounds accesses (memcheck) and shared-memory races (racecheck) in the candidates,
# through their tests (six cases each, small shapes; the tests switch the candidates on
# themselves).
if [ "${GLIMPSE_SANITIZE:-1}" = 1 ] && command -v compute-sanitizer > /dev/null; then
    for tool in memcheck racecheck; do
        run_job "sanitize-$tool" env GLIMPSE_CANDIDATE_CASES=6 \
            timeout "${GLIMPSE_SANITIZE_TIMEOUT:-150}" \
            compute-sanitizer --tool $tool --error-exitcode 3 tests/fused --test-threads=1 \
            --exact attention_candidates_match_the_kernels_they_would_replace \
            patch_embed_k64_gives_the_bits_of_the_default linear_lt_matches_the_default_linear
    done
fi
wait
for name in "${jobs[@]}"; do
    log="/tmp/glimpse-$name.log"
    rc=$(cat "/tmp/glimpse-$name.rc" 2>/dev/null || echo "none")
    echo "== $name (exit $rc)"
    if [ "$rc" = 124 ] && [ "${name#sanitize-}" != "$name" ]; then
        # A sanitizer that ran out of time found nothing yet; it is not a verdict.
        echo "   (timed out: no verdict)"
    else
        [ "$rc" = 0 ] || status=1
        grep -q "test result: ok" "$log" || status=1
    fi
    grep -E "^test |test result|panicked|error" "$log" | grep -v " ... ok$" | tail -n 30
    { echo "== $name (exit $rc)"; cat "$log"; } >> "$LOGS/tests.log"
done
echo "== tests: $([ $status = 0 ] && echo passed || echo FAILED)"
unset GLIMPSE_CUDA_POISON
echo "== benchmarks"
timeout "${GLIMPSE_BENCH_TIMEOUT:-120}" ./bench-compare cuda ${1:-} | tee "$LOGS/glimpse.jsonl"
timeout "${GLIMPSE_BENCH_TIMEOUT:-120}" python3 compare_torch.py cuda ${1:-} | tee "$LOGS/torch.jsonl"
# The workloads the candidates touch, again with every candidate on.
: > "$LOGS/candidates.jsonl"
if [ -z "${1:-}" ]; then
    echo "== benchmarks with GLIMPSE_CUDA_CANDIDATES=all"
    for f in attention linear patch_embed ViT; do
        GLIMPSE_CUDA_CANDIDATES=all timeout "${GLIMPSE_BENCH_TIMEOUT:-120}" \
            ./bench-compare cuda "$f" | tee -a "$LOGS/candidates.jsonl"
    done
fi
python3 compare_torch.py table "$LOGS/glimpse.jsonl" "$LOGS/torch.jsonl" "$LOGS/candidates.jsonl" \
    | tee "$LOGS/table.md"
if [ "${GLIMPSE_PROFILE:-0}" = 1 ] && command -v ncu > /dev/null; then
    # One launch of each kernel, after warm-up: throughput, occupancy, stall reasons.
    for spec in "attention_fwd_mma2_d128|attention fwd bf16 B4 H16 N4096 D128" \
        "attention_bwd_mma_d128|attention fwd+bwd bf16 B4 H16 N4096 D128" \
        "patch_embed_mma_bf16|patch_embed bf16 B256"; do
        kernel=${spec%%|*} workload=${spec#*|}
        echo "== ncu: $kernel ($workload)"
        timeout "${GLIMPSE_PROFILE_TIMEOUT:-120}" ncu --clock-control none -k "regex:^$kernel" \
            --launch-skip 3 --launch-count 1 --section SpeedOfLight --section Occupancy \
            --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
            --section ComputeWorkloadAnalysis ./bench-compare cuda "$workload" 2>&1 \
            | grep -v '^{' | tee -a "$LOGS/profile.txt"
    done
fi
exit $status
"#;

/// `cargo xtask fixtures`: regenerates the committed fixtures with the pinned versions.
fn fixtures() -> Result<(), String> {
    let python = fixtures_python()?;
    let generate = root().join("tests/fixtures/generate");
    run(Command::new(&python)
        .arg(generate.join("models.py"))
        .args(["--out", "tests/fixtures/models"]))?;
    let processing = generate.join("processing.py");
    if processing.exists() {
        run(Command::new(&python)
            .arg(&processing)
            .args(["--out", "tests/fixtures/processing"]))?;
    } else {
        eprintln!(
            "xtask: {} does not exist; tests/fixtures/processing left as is",
            processing.display()
        );
    }
    Ok(())
}

/// What `cargo xtask parity` was asked for.
#[derive(Debug, Default, PartialEq)]
struct ParityArgs {
    full: bool,
    keep: bool,
    filter: Option<String>,
}

fn parse_parity_args(args: &[String]) -> Result<ParityArgs, String> {
    let mut parsed = ParityArgs::default();
    for arg in args {
        match arg.as_str() {
            "--full" => parsed.full = true,
            "--keep" => parsed.keep = true,
            f if !f.starts_with('-') && parsed.filter.is_none() => {
                parsed.filter = Some(f.to_string())
            }
            other => {
                return Err(format!(
                    "parity: unexpected argument {other:?}; usage: parity [--full] [--keep] [FILTER]"
                ));
            }
        }
    }
    if parsed.keep && !parsed.full {
        return Err("parity: --keep only makes sense with --full".into());
    }
    Ok(parsed)
}

/// `cargo xtask parity [--full] [--keep] [FILTER]`.
fn parity(args: &[String]) -> Result<(), String> {
    let args = parse_parity_args(args)?;
    let mut test = cargo();
    test.args([
        "test",
        "--release",
        "-p",
        "glimpse-integration-tests",
        "--test",
        "parity",
        "--",
    ]);
    if !args.full {
        // The tiny committed fixtures only.
        return run(test.args(args.filter.as_deref()).arg("--nocapture"));
    }
    let python = fixtures_python()?;
    let dir = root().join("target/parity-full/models");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    run(Command::new(&python)
        .arg(root().join("tests/fixtures/generate/models.py"))
        .arg("--full")
        .arg(&dir))?;
    test.args(["--ignored", "--nocapture"])
        .args(args.filter.as_deref())
        .env("GLIMPSE_PARITY_DIR", &dir);
    match run(&mut test) {
        Ok(()) if !args.keep => {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
            eprintln!("xtask: parity --full passed; removed {}", dir.display());
            Ok(())
        }
        Ok(()) => {
            eprintln!(
                "xtask: parity --full passed; models kept in {}",
                dir.display()
            );
            Ok(())
        }
        Err(e) => Err(format!(
            "{e}\nthe full-size models are kept in {0}; rerun the tests with\n  \
             GLIMPSE_PARITY_DIR={0} cargo test --release -p glimpse-integration-tests \
             --test parity -- --ignored --nocapture",
            dir.display()
        )),
    }
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

/// Training throughput of the Fashion-MNIST ViT recipe: `glimpse train vit` and
/// `benches/train_torch.py` from the same initial weights, `steps` optimizer steps each, back
/// to back on the same threads (`GLIMPSE_BENCH_THREADS`, default 2). Needs the dataset.
/// `model_flags` (e.g. `--hidden 64 --mlp 128`) go to both trainers, which share the model
/// flags' names.
fn bench_compare_train(steps: Option<&str>, model_flags: &[String]) -> Result<(), String> {
    const MODEL_FLAGS: [&str; 5] = ["--patch-size", "--hidden", "--layers", "--heads", "--mlp"];
    for pair in model_flags.chunks(2) {
        if !MODEL_FLAGS.contains(&pair[0].as_str()) || pair.len() < 2 {
            return Err(format!(
                "bench-compare train [STEPS] [FLAG VALUE]...: FLAG must be one of {}, each with a value; got {pair:?}",
                MODEL_FLAGS.join(", ")
            ));
        }
    }
    let steps: u64 = steps
        .unwrap_or("200")
        .parse()
        .map_err(|_| "bench-compare train [STEPS]: STEPS must be a number".to_string())?;
    let threads = std::env::var("GLIMPSE_BENCH_THREADS").unwrap_or_else(|_| "2".into());
    let python = torch_python()?;
    run(cargo().args(["build", "--release", "--quiet", "-p", "glimpse"]))?;
    let out = root().join("target/bench-train");
    let _ = std::fs::remove_dir_all(&out);
    let steps_s = steps.to_string();
    let mut ours = Command::new(root().join("target/release/glimpse"));
    ours.env("RAYON_NUM_THREADS", &threads).args([
        "train",
        "vit",
        "--dataset",
        "fashion-mnist",
        "--out",
        &out.display().to_string(),
        "--max-steps",
        &steps_s,
        "--log-every",
        &steps_s,
        "--json",
    ]);
    ours.args(model_flags);
    let text = output(&mut ours)?;
    let glimpse_sps = json_line_number(&text, ("kind", "train"), "samples_per_second")
        .ok_or("glimpse printed no training metrics")?;
    let mut torch = Command::new(&python);
    torch.arg(root().join("benches/train_torch.py")).args([
        "--threads",
        &threads,
        "--init",
        &out.join("init.safetensors").display().to_string(),
        "--max-steps",
        &steps_s,
        "--no-eval",
    ]);
    torch.args(model_flags);
    let text = output(&mut torch)?;
    let torch_sps = json_line_number(&text, ("summary", true), "images_per_second")
        .ok_or("train_torch.py printed no summary")?;
    println!("| workload | glimpse img/s | PyTorch img/s | glimpse / PyTorch |");
    println!("|---|---:|---:|---:|");
    println!(
        "| ViT Fashion-MNIST recipe{}, {steps} steps of batch 64, {threads} threads | {glimpse_sps:.0} | {torch_sps:.0} | {:.2}x |",
        if model_flags.is_empty() {
            String::new()
        } else {
            format!(" ({})", model_flags.join(" "))
        },
        glimpse_sps / torch_sps
    );
    Ok(())
}

/// The number `field` of the first JSON line of `text` whose `key` equals `value`.
fn json_line_number(
    text: &str,
    (key, value): (&str, impl Into<serde_json::Value>),
    field: &str,
) -> Option<f64> {
    let value = value.into();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v[key] == value)
        .and_then(|v| v[field].as_f64())
}

fn bench_compare(suite: &str, filter: Option<&str>) -> Result<(), String> {
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
        suite,
    ]);
    glimpse.args(filter);
    let ours = parse_rows(&output(&mut glimpse)?);
    let mut torch = Command::new(&python);
    torch
        .arg(root().join("benches/compare_torch.py"))
        .arg(suite)
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

/// The CPU suite (`wgpu`) or the model suite (`wgpu-models`) on the CPU backend and on the
/// first wgpu adapter, one after the other, as one table with the queue traffic of a wgpu run.
fn bench_compare_wgpu(suite: &str, filter: Option<&str>) -> Result<(), String> {
    let cpu_suite = if suite == "wgpu" { "cpu" } else { "models" };
    let bench = |name: &str| -> Result<String, String> {
        let mut cmd = cargo();
        cmd.args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "glimpse-benches",
            "--bin",
            "bench-compare",
            name,
        ]);
        cmd.args(filter);
        output(&mut cmd)
    };
    let cpu = parse_rows(&bench(cpu_suite)?);
    let gpu_text = bench(suite)?;
    let gpu = parse_rows(&gpu_text);
    println!(
        "| workload | CPU backend ms | wgpu ms | CPU / wgpu | wgpu GFLOP/s | dispatches | submissions | read-backs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for g in &gpu {
        let line = gpu_text
            .lines()
            .find(|l| field(l, "name") == Some(g.name.as_str()))
            .unwrap_or_default();
        let count = |k: &str| field(line, k).unwrap_or("-").to_string();
        let (c_ms, ratio) = match cpu.iter().find(|c| c.name == g.name) {
            Some(c) => (
                format!("{:.3}", c.median_ms),
                format!("{:.2}x", c.median_ms / g.median_ms),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {c_ms} | {:.3} | {ratio} | {} | {} | {} | {} |",
            g.name,
            g.median_ms,
            gf(g.gflops),
            count("dispatches"),
            count("submissions"),
            count("readbacks")
        );
    }
    println!(
        "\nRatios above 1 mean the wgpu device is faster. Medians of >= 5 runs after warm-up; \
         each wgpu run waits for the device. Queue traffic: one run."
    );
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
    fn parses_parity_arguments() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_parity_args(&args(&[])).unwrap(),
            ParityArgs::default()
        );
        assert_eq!(
            parse_parity_args(&args(&["--full", "clip", "--keep"])).unwrap(),
            ParityArgs {
                full: true,
                keep: true,
                filter: Some("clip".into())
            }
        );
        assert!(parse_parity_args(&args(&["--keep"])).is_err());
        assert!(parse_parity_args(&args(&["--fast"])).is_err());
        assert!(parse_parity_args(&args(&["a", "b"])).is_err());
    }

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
