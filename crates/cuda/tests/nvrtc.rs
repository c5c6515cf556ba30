//! Every CUDA source compiles with NVRTC for sm_80 and sm_90, without a GPU (NVRTC needs none).
//!
//! Skips with a message when libnvrtc cannot be loaded; `GLIMPSE_REQUIRE_NVRTC=1` turns that
//! into a failure (CI sets it where libnvrtc is installed). With `GLIMPSE_PTX_DIR` set, the
//! PTX is also written there (`<source>.sm_<arch>.ptx`), for `ptxas` or a disassembler.

use glimpse_cuda::{Library, compile_to_ptx, library_present};

#[test]
fn nvrtc_compiles_every_kernel() {
    if let Err(why) = library_present(Library::Nvrtc) {
        if std::env::var("GLIMPSE_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
            panic!("GLIMPSE_REQUIRE_NVRTC=1 but libnvrtc is unavailable: {why}");
        }
        println!("skipping nvrtc_compiles_every_kernel: {why}");
        return;
    }
    let mut failures = Vec::new();
    for source in glimpse_kernels::CUDA {
        for arch in [80, 90] {
            match compile_to_ptx(source.name, arch) {
                Ok(ptx) => {
                    if let Ok(dir) = std::env::var("GLIMPSE_PTX_DIR") {
                        let path = std::path::Path::new(&dir)
                            .join(format!("{}.sm_{arch}.ptx", source.name));
                        std::fs::write(&path, &ptx)
                            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    }
                    if source.source.contains("__global__") && !ptx.contains(".entry") {
                        failures.push(format!(
                            "{} for sm_{arch}: no kernel in the PTX",
                            source.name
                        ));
                    }
                    println!("{} for sm_{arch}: {} bytes of PTX", source.name, ptx.len());
                }
                Err(e) => failures.push(format!("{} for sm_{arch}: {e}", source.name)),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
