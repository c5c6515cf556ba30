//! glimpse-kernels: the sources of glimpse's GPU kernels, exposed as `&'static str`.
//!
//! The sources live in `kernels/cuda/*.cu` and `kernels/wgsl/*.wgsl` and are pulled in with
//! `include_str!`, so that their paths stay inside this crate and backend crates (and tools
//! that compile-check every kernel) read them from one place. Each kernel file opens with what
//! it computes, its shapes, its launch shape and its algorithm.
//!
//! One [`KernelSource`] per file; the compile checks iterate over [`CUDA`] and [`WGSL`].

/// The language a kernel is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    /// CUDA C++, compiled at run time by NVRTC.
    Cuda,
    /// WGSL, compiled by the wgpu runtime (and validated by naga in tests).
    Wgsl,
}

/// One kernel source file.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// File name without directory, e.g. `"attention.cu"`.
    pub name: &'static str,
    pub language: Language,
    pub source: &'static str,
}

/// Declarations shared by every CUDA source (dtype loads and stores, index helpers); the CUDA
/// backend puts it in front of each source before compiling it.
pub const CUDA_COMMON: &str = include_str!("../cuda/common.cuh");

macro_rules! cuda {
    ($name:literal) => {
        KernelSource {
            name: $name,
            language: Language::Cuda,
            source: include_str!(concat!("../cuda/", $name)),
        }
    };
}

/// Every CUDA source, compiled by NVRTC at first use.
pub const CUDA: &[KernelSource] = &[
    cuda!("elementwise.cu"),
    cuda!("reduce.cu"),
    cuda!("indexing.cu"),
    cuda!("random.cu"),
    cuda!("norm.cu"),
    cuda!("attention.cu"),
    cuda!("patch_embed.cu"),
    cuda!("contrastive.cu"),
];

/// Declarations shared by every WGSL source (the parameter binding, strided-view helpers); the
/// wgpu backend puts it after a type header and in front of each source.
pub const WGSL_COMMON: &str = include_str!("../wgsl/common.wgsl");

macro_rules! wgsl {
    ($name:literal) => {
        KernelSource {
            name: $name,
            language: Language::Wgsl,
            source: include_str!(concat!("../wgsl/", $name)),
        }
    };
}

/// Every WGSL source, compiled by wgpu for the adapter at first use.
pub const WGSL: &[KernelSource] = &[
    wgsl!("attention.wgsl"),
    wgsl!("attention_backward.wgsl"),
    wgsl!("fill.wgsl"),
    wgsl!("copy.wgsl"),
    wgsl!("elementwise.wgsl"),
    wgsl!("reduce.wgsl"),
    wgsl!("indexing.wgsl"),
    wgsl!("patch_embed.wgsl"),
    wgsl!("contrastive.wgsl"),
    wgsl!("matmul.wgsl"),
    wgsl!("norm.wgsl"),
    wgsl!("activation.wgsl"),
];

/// Looks a kernel source up by file name.
pub fn find(name: &str) -> Option<&'static KernelSource> {
    CUDA.iter().chain(WGSL).find(|k| k.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_match_their_language() {
        let all: Vec<_> = CUDA.iter().chain(WGSL).collect();
        for (i, k) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|o| o.name != k.name), "{}", k.name);
            let ext = match k.language {
                Language::Cuda => ".cu",
                Language::Wgsl => ".wgsl",
            };
            assert!(k.name.ends_with(ext), "{}", k.name);
            assert!(find(k.name).is_some());
        }
        assert!(find("no-such-kernel.cu").is_none());
    }
}
