//! A pool of device buffers, bucketed by size class, so that a forward pass reuses the buffers
//! of the tensors it has dropped instead of asking the driver for new ones.
//!
//! Reuse is safe without waiting for the GPU: every command runs in submission order on one
//! queue, and wgpu inserts the barriers between a dispatch that read a buffer and a later one
//! that writes it. Uploads never take a pooled buffer (they create a mapped one), because a
//! queue write would land before commands recorded earlier but not yet submitted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Every buffer can be read and written by kernels and copied from and to.
pub(crate) const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// The allocation size for a request of `bytes`: at least 256 bytes, then powers of two and
/// the halfway points between them (so at most a third of a buffer is slack).
pub(crate) fn size_class(bytes: u64) -> u64 {
    if bytes <= 256 {
        return 256;
    }
    let pow = bytes.next_power_of_two();
    let mid = pow / 4 * 3;
    if bytes <= mid { mid } else { pow }
}

/// Free buffers by size class, with a cap on the bytes kept.
#[derive(Debug)]
pub(crate) struct BufferPool {
    free: Mutex<Free>,
    cap_bytes: u64,
}

#[derive(Debug, Default)]
struct Free {
    by_size: HashMap<u64, Vec<wgpu::Buffer>>,
    bytes: u64,
    reused: u64,
    created: u64,
}

/// How the pool has been used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Allocations served from the pool.
    pub reused: u64,
    /// Allocations that created a new buffer.
    pub created: u64,
    /// Bytes held by free buffers now.
    pub free_bytes: u64,
}

impl BufferPool {
    pub(crate) fn new(cap_bytes: u64) -> Self {
        BufferPool {
            free: Mutex::new(Free::default()),
            cap_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free buffer of exactly `size` bytes (a size class), if one is pooled.
    pub(crate) fn take(&self, size: u64) -> Option<wgpu::Buffer> {
        let mut free = self.lock();
        let buffer = free.by_size.get_mut(&size)?.pop()?;
        free.bytes -= size;
        free.reused += 1;
        Some(buffer)
    }

    pub(crate) fn note_created(&self) {
        self.lock().created += 1;
    }

    /// Takes a buffer back; destroys it instead when the pool is full.
    pub(crate) fn put(&self, buffer: wgpu::Buffer) {
        let size = buffer.size();
        let mut free = self.lock();
        if free.bytes + size > self.cap_bytes {
            drop(free);
            buffer.destroy();
            return;
        }
        free.bytes += size;
        free.by_size.entry(size).or_default().push(buffer);
    }

    /// Destroys every free buffer.
    pub(crate) fn clear(&self) {
        let mut free = self.lock();
        for (_, buffers) in free.by_size.drain() {
            for b in buffers {
                b.destroy();
            }
        }
        free.bytes = 0;
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let free = self.lock();
        PoolStats {
            reused: free.reused,
            created: free.created,
            free_bytes: free.bytes,
        }
    }
}

/// A buffer that goes back to its pool when dropped.
#[derive(Debug)]
pub struct PooledBuffer {
    buffer: wgpu::Buffer,
    pool: Arc<BufferPool>,
}

impl PooledBuffer {
    pub(crate) fn new(buffer: wgpu::Buffer, pool: Arc<BufferPool>) -> Self {
        PooledBuffer { buffer, pool }
    }

    /// The wgpu buffer (whole words long, possibly longer than the storage it backs).
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        self.pool.put(self.buffer.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_the_request_with_little_slack() {
        assert_eq!(size_class(0), 256);
        assert_eq!(size_class(256), 256);
        assert_eq!(size_class(257), 384);
        assert_eq!(size_class(385), 512);
        assert_eq!(size_class(1 << 20), 1 << 20);
        for bytes in [300u64, 1000, 5000, 123_456, 10_000_000] {
            let c = size_class(bytes);
            assert!(c >= bytes && c * 2 <= bytes * 3 + 512, "{bytes} -> {c}");
            assert_eq!(c % 4, 0);
        }
    }
}
