//! Packed weights of `linear`, kept across calls.
//!
//! Every product `x @ W^T` repacks `W^T` into the GEMM's panel layout; for the small row
//! counts of inference (197 tokens of one ViT image) that repacking costs about a fifth of the
//! product. Weights never change (storages are immutable), so the packed panels of each weight
//! are kept, keyed by the weight's storage and layout.
//!
//! An entry holds a `Weak` reference to the storage: it never keeps a weight alive, and since
//! a `Weak` keeps the allocation's address reserved, a new storage can never be mistaken for
//! a dropped one. Dead entries are dropped at the next insertion. The cache holds at most
//! `GLIMPSE_CPU_PACK_CACHE_MB` megabytes of panels (default 4096; 0 turns caching off), about
//! the size of the weights themselves; past the limit, weights are packed on every call.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use glimpse_tensor::{BackendStorage, Layout, Result, Tensor};

use crate::fused::f32_data;
use crate::gemm::{MatRef, PackedB};

/// Weights smaller than this many elements are packed on every call (cheap, and not worth
/// an entry).
const MIN_CACHED_ELEMS: usize = 16 * 1024;

struct Entry {
    storage: Weak<dyn BackendStorage>,
    layout: Layout,
    packed: Arc<PackedB>,
    bytes: usize,
}

#[derive(Default)]
struct Cache {
    entries: Vec<Entry>,
    bytes: usize,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

fn limit_bytes() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("GLIMPSE_CPU_PACK_CACHE_MB")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(4096)
            .saturating_mul(1 << 20)
    })
}

/// `W^T` packed for the GEMM, where `weight` is `W`, `(N, K)`: from the cache when this
/// weight was packed before, otherwise packed now (and cached when it fits).
pub fn packed_transpose(weight: &Tensor) -> Result<Arc<PackedB>> {
    let storage = weight.storage();
    let cacheable = weight.elem_count() >= MIN_CACHED_ELEMS && limit_bytes() > 0;
    if cacheable {
        let key = Arc::downgrade(storage);
        let cache = cache().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = cache
            .entries
            .iter()
            .find(|e| Weak::ptr_eq(&e.storage, &key) && e.layout == *weight.layout())
        {
            return Ok(e.packed.clone());
        }
    }
    let (n, k) = (weight.dims()[0], weight.dims()[1]);
    // data is W, (N, K) row-major; W^T (K, N) reads it with row stride 1 and column stride K.
    let data = f32_data(weight)?;
    let packed = Arc::new(PackedB::new(k, n, MatRef::new(&data, 1, k)));
    if cacheable {
        let bytes = k * n * std::mem::size_of::<f32>();
        let mut cache = cache().lock().unwrap_or_else(|e| e.into_inner());
        // Drop the entries of weights that no longer exist.
        let mut freed = 0;
        cache.entries.retain(|e| {
            let alive = e.storage.strong_count() > 0;
            if !alive {
                freed += e.bytes;
            }
            alive
        });
        cache.bytes -= freed;
        if cache.bytes + bytes <= limit_bytes() {
            cache.bytes += bytes;
            cache.entries.push(Entry {
                storage: Arc::downgrade(storage),
                layout: weight.layout().clone(),
                packed: packed.clone(),
                bytes,
            });
        }
    }
    Ok(packed)
}
