//! The fused CPU kernels never materialise an N x N matrix: measured with a counting global
//! allocator that records the peak of live heap bytes while one op runs.
//!
//! This file is its own test binary, so the allocator only sees these tests; they run one at a
//! time behind a lock so that their peaks do not mix.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use glimpse_tensor::{AttentionOptions, DType, Tensor};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static SERIAL: Mutex<()> = Mutex::new(());

// SAFETY: forwards every call to the system allocator unchanged and only updates counters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's; the layout is passed through unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was returned by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak heap bytes allocated on top of what was live when `f` started.
fn peak_extra_bytes(f: impl FnOnce()) -> usize {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    f();
    PEAK.load(Ordering::SeqCst) - base
}

#[test]
fn contrastive_loss_needs_no_n_by_n_buffer() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let device = glimpse_cpu::device();
    let (n, d) = (4096, 32);
    let img = Tensor::rand_normal(0.0, 0.2, [n, d], DType::F32, 1, &device).unwrap();
    let txt = Tensor::rand_normal(0.0, 0.2, [n, d], DType::F32, 2, &device).unwrap();
    let scale = Tensor::full(10.0, (), DType::F32, &device).unwrap();
    let one = Tensor::full(1.0, (), DType::F32, &device).unwrap();
    let n_by_n = n * n * 4; // 64 MiB of f32 logits
    let fwd = peak_extra_bytes(|| {
        Tensor::contrastive_loss(&img, &txt, &scale).unwrap();
    });
    let saved = Tensor::contrastive_loss(&img, &txt, &scale).unwrap();
    let bwd = peak_extra_bytes(|| {
        Tensor::contrastive_loss_backward(&img, &txt, &scale, &saved, &one).unwrap();
    });
    println!(
        "contrastive N{n} D{d}: forward peak {fwd} B, backward peak {bwd} B, N x N = {n_by_n} B"
    );
    assert!(fwd < n_by_n / 8, "forward peak {fwd} B is not O(N*D)");
    assert!(bwd < n_by_n / 8, "backward peak {bwd} B is not O(N*D)");
    // The default composition does build the logits: the measurement can tell the difference.
    let composed = peak_extra_bytes(|| {
        glimpse_tensor::compose::contrastive_loss(&img, &txt, &scale).unwrap();
    });
    assert!(composed >= n_by_n, "composition peak {composed} B");
}

#[test]
fn attention_needs_no_score_matrix_per_head() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let device = glimpse_cpu::device();
    let (b, h, n, dh) = (1, 2, 2048, 32);
    let q = Tensor::rand_normal(0.0, 1.0, [b, h, n, dh], DType::F32, 3, &device).unwrap();
    let k = Tensor::rand_normal(0.0, 1.0, [b, h, n, dh], DType::F32, 4, &device).unwrap();
    let v = Tensor::rand_normal(0.0, 1.0, [b, h, n, dh], DType::F32, 5, &device).unwrap();
    let scores = n * n * 4; // one head's f32 scores: 16 MiB
    let opts = AttentionOptions {
        causal: true,
        ..Default::default()
    };
    let fwd = peak_extra_bytes(|| {
        Tensor::attention(&q, &k, &v, &opts).unwrap();
    });
    println!(
        "attention B{b} H{h} N{n} D{dh}: forward peak {fwd} B, one head's scores = {scores} B"
    );
    // Output and lse are (B, H, N, D) and (B, H, N): far below one score matrix.
    assert!(fwd < scores / 4, "forward peak {fwd} B");
    let saved = Tensor::attention(&q, &k, &v, &opts).unwrap();
    let bwd = peak_extra_bytes(|| {
        Tensor::attention_backward(&q, &k, &v, &saved, &saved.out, &opts).unwrap();
    });
    println!("attention backward peak {bwd} B");
    assert!(bwd < scores / 2, "backward peak {bwd} B");
}
