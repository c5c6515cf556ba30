//! The blocked (Goto/BLIS) driver shared by every micro-kernel: packing, cache blocking and the
//! split of C over rayon tasks.

use super::MatRef;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Signature shared by the micro-kernels: `C[mr x nr] = alpha * Ap @ Bp (+ C)` over `kc` steps,
/// with `Ap` packed as `kc` groups of `MR` floats and `Bp` as `kc` aligned rows of `NR` floats.
pub(super) type KernelFn = unsafe fn(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    alpha: f32,
    accumulate: bool,
);

/// A micro-kernel together with the cache blocking tuned for it.
#[derive(Clone, Copy)]
pub(super) struct Kernel {
    pub run: KernelFn,
    /// Register tile rows / columns.
    pub mr: usize,
    pub nr: usize,
    /// Depth of a packed panel (A micro-panels `mr x kc` stay in L1).
    pub kc: usize,
    /// Rows of a packed A block (multiple of `mr`).
    pub mc: usize,
    /// Columns of a packed B panel (multiple of `nr`; `kc x nc` stays in L2).
    pub nc: usize,
    /// A SIMD transposing copy for the packers, where the ISA has one:
    /// `dst[p * ds + i] = src[i * ss + p]` for `i < r <= 16`, `p < len` (see
    /// `kernel_avx512::transpose_pack`).
    pub transpose: Option<TransposeFn>,
    /// A variant of `run` that can read either operand in place instead of packed (see
    /// `kernel_avx512::kernel_strided`), where the ISA has one.
    pub run_strided: Option<StridedKernelFn>,
}

/// Signature of [`Kernel::run_strided`]: as [`KernelFn`], with A's row and depth strides
/// after `a` (`a_ps = 0`: packed) and B's row stride after `b` (`ldb = 0`: packed).
pub(super) type StridedKernelFn = unsafe fn(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_ps: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    alpha: f32,
    accumulate: bool,
);

/// The widest B block (in columns) for which a row- or column-major A is read in place
/// instead of packed: each A micro-panel then feeds at most this many / `nr` register tiles,
/// too few to pay for the copy.
const IN_PLACE_A_MAX_COLS: usize = 256;

/// The largest row stride (in floats) at which a row-major B is read in place instead of
/// packed: a micro-panel's `kc` rows then lie within a few pages, so reading them where they
/// are costs no more than reading a packed copy.
const IN_PLACE_B_MAX_STRIDE: usize = 1024;

/// Signature of [`Kernel::transpose`]: `(src, ss, r, len, dst, ds)`.
pub(super) type TransposeFn =
    unsafe fn(src: *const f32, ss: usize, r: usize, len: usize, dst: *mut f32, ds: usize);

/// `dst[p * ds + i] = src[i * ss + p]` for `i < r <= 16`, `p < len`, through the ISA's SIMD
/// transpose when there is one. `src` starts at element (0, 0); `dst` at (0, 0) of its panel.
fn transpose_into(
    t: Option<TransposeFn>,
    src: &[f32],
    ss: usize,
    r: usize,
    len: usize,
    dst: &mut [f32],
    ds: usize,
) {
    if r == 0 || len == 0 {
        return;
    }
    // Bounds-checked sub-slices: every element either path touches lies inside them.
    let src = &src[..(r - 1) * ss + len];
    let dst = &mut dst[..(len - 1) * ds + r];
    match t {
        // SAFETY: `t` is only set for an ISA the CPU supports (checked at dispatch); `r <= 16`
        // (tile sizes) and the slices above cover every index the routine reads or writes.
        Some(f) => unsafe { f(src.as_ptr(), ss, r, len, dst.as_mut_ptr(), ds) },
        None => {
            for i in 0..r {
                for (d, &x) in dst[i..]
                    .iter_mut()
                    .step_by(ds)
                    .zip(&src[i * ss..i * ss + len])
                {
                    *d = x;
                }
            }
        }
    }
}

/// Packed-panel storage, 64-byte aligned, reused across calls on the same thread.
#[derive(Default)]
struct AlignedBuf(Vec<f32>);

impl AlignedBuf {
    fn get(&mut self, len: usize) -> &mut [f32] {
        const ALIGN_F32: usize = 16;
        if self.0.len() < len + ALIGN_F32 {
            self.0 = vec![0.0; len + ALIGN_F32];
        }
        let off = self.0.as_ptr().align_offset(ALIGN_F32 * 4);
        &mut self.0[off..off + len]
    }
}

thread_local! {
    static BUFS: RefCell<(AlignedBuf, AlignedBuf)> = RefCell::default();
}

/// A raw pointer to C that tasks working on disjoint tiles may share.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: the pointer is only used to write disjoint tiles of C, one task per tile, while the
// `&mut [f32]` it came from is borrowed by `gemm` for the whole parallel section.
unsafe impl Send for CPtr {}
// SAFETY: as for `Send`: no two tasks touch the same element.
unsafe impl Sync for CPtr {}

impl CPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper rather than the raw field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Work (m * n * k) below which spreading over threads costs more than it gains.
const PAR_MIN_WORK: usize = 1 << 20;

/// The right-hand operand of [`gemm`]: a strided view packed block by block as the driver walks
/// it, or a whole operand packed ahead of time (see [`PackedPanels`]).
#[derive(Clone, Copy)]
pub(super) enum BSrc<'a> {
    /// Packed into the thread-local buffer per `kc x nc` block.
    View(MatRef<'a>),
    /// Already packed; `col0` is the packed column of this operand's column 0 (non-zero for the
    /// column range of one parallel task).
    Packed { b: &'a PackedPanels, col0: usize },
}

impl<'a> BSrc<'a> {
    /// The operand with its first `lo` columns dropped.
    fn cols_from(self, lo: usize) -> Self {
        match self {
            BSrc::View(b) => BSrc::View(MatRef::new(
                &b.data[lo * b.col_stride..],
                b.row_stride,
                b.col_stride,
            )),
            BSrc::Packed { b, col0 } => BSrc::Packed { b, col0: col0 + lo },
        }
    }
}

/// A `k x n` right-hand operand packed once into the driver's panel layout for one kernel.
///
/// Block `(jc, pc)` (`jc` a multiple of `kern.nc`, `pc` of `kern.kc`) is laid out exactly as
/// [`pack_b`] writes it, with width `ncp = min(nc, n - jc)` rounded up to `nr`, and starts at
/// float `jc * k + pc * ncp`: the blocks of one column panel are consecutive, and each column
/// panel holds `k * ncp` floats. Storage starts 64-byte aligned, and every offset above is a
/// multiple of 16 floats, so every micro-panel is aligned as the kernels require.
pub(super) struct PackedPanels {
    pub kern: Kernel,
    pub k: usize,
    pub n: usize,
    /// Backing storage; the packed data is `buf[off..off + len]`.
    buf: Vec<f32>,
    off: usize,
}

impl PackedPanels {
    /// Packs `b` (`k x n`, already checked to be in bounds when `k, n >= 1`) for `kern`.
    pub fn new(kern: Kernel, k: usize, n: usize, b: MatRef<'_>) -> Self {
        const ALIGN_F32: usize = 16;
        let len = k * n.next_multiple_of(kern.nr);
        let buf = vec![0.0f32; len + ALIGN_F32];
        let off = buf.as_ptr().align_offset(ALIGN_F32 * 4);
        let mut p = PackedPanels {
            kern,
            k,
            n,
            buf,
            off,
        };
        if len == 0 {
            return p;
        }
        // Split the storage into its blocks, in layout order.
        let mut blocks = Vec::new();
        let mut rest = &mut p.buf[off..off + len];
        for jc in (0..n).step_by(kern.nc) {
            let nc = kern.nc.min(n - jc);
            let ncp = nc.next_multiple_of(kern.nr);
            for pc in (0..k).step_by(kern.kc) {
                let kc = kern.kc.min(k - pc);
                let (blk, tail) = rest.split_at_mut(kc * ncp);
                rest = tail;
                blocks.push((jc, nc, pc, kc, blk));
            }
        }
        let pack = |(jc, nc, pc, kc, blk): (usize, usize, usize, usize, &mut [f32])| {
            pack_b(&kern, b, pc, kc, jc, nc, blk)
        };
        if blocks.len() > 1 && len >= PAR_MIN_PACK {
            use rayon::prelude::*;
            blocks.into_par_iter().for_each(pack);
        } else {
            blocks.into_iter().for_each(pack);
        }
        p
    }

    /// The micro-panel (`kc x nr`, `kc` the depth of block `pc`) holding packed column `j` (a
    /// multiple of `nr`, `< n`) at depth block `pc` (a multiple of `kern.kc`, `< k`).
    fn panel(&self, pc: usize, j: usize) -> *const f32 {
        let kern = &self.kern;
        let jc = j - j % kern.nc;
        let ncp = kern.nc.min(self.n - jc).next_multiple_of(kern.nr);
        let kc = kern.kc.min(self.k - pc);
        let at = jc * self.k + pc * ncp + (j - jc) * kc;
        self.buf[self.off + at..self.off + at + kc * kern.nr].as_ptr()
    }
}

/// Packed floats above which [`PackedPanels::new`] packs its blocks in parallel.
const PAR_MIN_PACK: usize = 1 << 16;

/// `C = alpha * A @ B (+ C)` for `m, n, k >= 1` and views already checked to be in bounds
/// (`c` holds the `m x n` block with leading dimension `ldc >= n` when `m > 1`; a packed `b`
/// was packed for `kern` with at least `k` rows and `n` columns). Without `accumulate`, C may
/// start uninitialised: every element of the block is written before it is read.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    kern: &Kernel,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: MatRef<'_>,
    b: BSrc<'_>,
    accumulate: bool,
    c: &mut [MaybeUninit<f32>],
    ldc: usize,
    parallel: bool,
) {
    let threads = if parallel && m * n * k >= PAR_MIN_WORK {
        rayon::current_num_threads()
    } else {
        1
    };
    // C is only written through this pointer: without `accumulate` every element of the
    // `m x n` block is stored before it is ever read, so C may start uninitialised.
    let cp = CPtr(c.as_mut_ptr().cast::<f32>());
    if threads <= 1 {
        // SAFETY: the whole of C is ours for the duration of the call.
        unsafe { gemm_block(kern, m, n, k, alpha, a, b, accumulate, cp, ldc) };
        return;
    }
    // Split the larger dimension: each task packs all of the other operand, so this keeps the
    // duplicated packing small. Chunks are whole register tiles.
    let (split_m, tile, len) = if m >= n {
        (true, kern.mr, m)
    } else {
        (false, kern.nr, n)
    };
    let tiles = len.div_ceil(tile);
    let tasks = threads.min(tiles);
    let per = tiles.div_ceil(tasks) * tile;
    let tasks = len.div_ceil(per);
    use rayon::prelude::*;
    (0..tasks).into_par_iter().for_each(|t| {
        let lo = t * per;
        let hi = (lo + per).min(len);
        if split_m {
            let a_sub = MatRef::new(&a.data[lo * a.row_stride..], a.row_stride, a.col_stride);
            // SAFETY: rows `lo..hi` of C belong to this task only; the offset stays inside C.
            unsafe {
                let c_sub = CPtr(cp.get().add(lo * ldc));
                gemm_block(kern, hi - lo, n, k, alpha, a_sub, b, accumulate, c_sub, ldc);
            }
        } else {
            // `lo` is a multiple of `nr`, so packed columns stay on micro-panel boundaries.
            let b_sub = b.cols_from(lo);
            // SAFETY: columns `lo..hi` of C belong to this task only; the offset stays inside C.
            unsafe {
                let c_sub = CPtr(cp.get().add(lo));
                gemm_block(kern, m, hi - lo, k, alpha, a, b_sub, accumulate, c_sub, ldc);
            }
        }
    });
}

/// One task's share: the full blocked loop nest on the calling thread.
///
/// # Safety
/// `c` must be exclusively writable at `c[i * ldc + j]` for `i < m`, `j < n`, and the views must
/// address only elements inside their slices for `i < m`, `j < n`, `p < k`; a packed `b` must
/// have been packed for `kern`, with `col0` a multiple of `nr` and `col0 + n` columns at most.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_block(
    kern: &Kernel,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: MatRef<'_>,
    b: BSrc<'_>,
    accumulate: bool,
    c: CPtr,
    ldc: usize,
) {
    let (mr, nr) = (kern.mr, kern.nr);
    let kc_max = kern.kc.min(k);
    let mc_max = kern.mc.min(m.next_multiple_of(mr));
    let nc_max = match b {
        BSrc::View(_) => kern.nc.min(n.next_multiple_of(nr)),
        BSrc::Packed { .. } => 0,
    };
    BUFS.with(|cell| {
        // A nested call on this thread (not expected: nothing below re-enters) gets fresh buffers.
        let mut fresh = None;
        let mut guard = cell.try_borrow_mut().ok();
        let (abuf, bbuf) = match guard.as_deref_mut() {
            Some((ab, bb)) => (ab, bb),
            None => {
                let f = fresh.insert((AlignedBuf::default(), AlignedBuf::default()));
                (&mut f.0, &mut f.1)
            }
        };
        let ap = abuf.get(mc_max * kc_max);
        let bp = bbuf.get(nc_max * kc_max);
        // A row-major B is read in place (no packing) where the kernel can.
        let b_in_place = match b {
            BSrc::View(v)
                if kern.run_strided.is_some()
                    && v.col_stride == 1
                    && (1..=IN_PLACE_B_MAX_STRIDE).contains(&v.row_stride) =>
            {
                Some(v)
            }
            _ => None,
        };
        for jc in (0..n).step_by(kern.nc) {
            let nc = kern.nc.min(n - jc);
            // A row- or column-major A is read in place when this block is narrow:
            // (row stride, depth stride) of its elements.
            let narrow = kern.run_strided.is_some() && nc <= IN_PLACE_A_MAX_COLS;
            let a_in_place = match (a.col_stride, a.row_stride) {
                (1, rs) if narrow => Some((rs, 1)),
                (cs, 1) if narrow && cs > 0 => Some((1, cs)),
                _ => None,
            };
            // The kernel that reads operands in place, when either one is.
            let strided = kern
                .run_strided
                .filter(|_| a_in_place.is_some() || b_in_place.is_some());
            for pc in (0..k).step_by(kern.kc) {
                let kc = kern.kc.min(k - pc);
                let acc = accumulate || pc > 0;
                // The B micro-panel of columns `jc + jr ..`, and its row stride when in place.
                let b_panel: &dyn Fn(usize) -> (*const f32, usize) = match (b, b_in_place) {
                    (_, Some(v)) => {
                        &move |jr| (v.data[pc * v.row_stride + jc + jr..].as_ptr(), v.row_stride)
                    }
                    (BSrc::View(v), None) => {
                        pack_b(kern, v, pc, kc, jc, nc, bp);
                        &|jr| (bp[jr * kc..(jr + nr) * kc].as_ptr(), 0)
                    }
                    (BSrc::Packed { b, col0 }, None) => &move |jr| (b.panel(pc, col0 + jc + jr), 0),
                };
                for ic in (0..m).step_by(kern.mc) {
                    let mc = kern.mc.min(m - ic);
                    if a_in_place.is_none() {
                        pack_a(kern, a, ic, mc, pc, kc, ap);
                    }
                    // A micro-panel outer: it stays in L1 while B micro-panels stream from L2.
                    for ir in (0..mc).step_by(mr) {
                        let mrr = mr.min(mc - ir);
                        // The A micro-panel and its (row, depth) strides; (_, 0) when packed.
                        let (a_panel, a_rs, a_ps) = match a_in_place {
                            Some((rs, ps)) => (a.data[(ic + ir) * rs + pc * ps..].as_ptr(), rs, ps),
                            None => (ap[ir * kc..].as_ptr(), 1, 0),
                        };
                        for jr in (0..nc).step_by(nr) {
                            let nrr = nr.min(nc - jr);
                            let (b_ptr, ldb) = b_panel(jr);
                            let c_tile = c.0.wrapping_add((ic + ir) * ldc + jc + jr);
                            match strided {
                                // SAFETY: packed panels as below; an in-place A's rows
                                // `ic + ir ..+ mrr` and depths `pc ..+ kc`, and an in-place
                                // B's rows `pc ..+ kc` and columns `jc + jr ..+ nrr`, are
                                // elements of views checked to cover `m x k` and `k x n`, so
                                // every read the kernel makes at its strides is inside them.
                                Some(run) => unsafe {
                                    run(
                                        kc, a_panel, a_rs, a_ps, b_ptr, ldb, c_tile, ldc, mrr, nrr,
                                        alpha, acc,
                                    )
                                },
                                // SAFETY: the packed panels hold `kc * mr` / `kc * nr` floats
                                // at these offsets (B panels start 64-byte aligned: buffers are
                                // aligned and every panel offset is a multiple of 16 floats),
                                // the kernel matches the ISA chosen at dispatch (a packed B was
                                // packed for `kern`), and the C tile at (ic + ir, jc + jr) of
                                // size `mrr x nrr` is inside our exclusively owned `m x n` block.
                                None => unsafe {
                                    (kern.run)(
                                        kc, a_panel, b_ptr, c_tile, ldc, mrr, nrr, alpha, acc,
                                    )
                                },
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Packs rows `i0 .. i0 + mc`, depth `p0 .. p0 + kc` of A into micro-panels of `mr` rows:
/// panel `s` holds `dst[s * mr * kc + p * mr + i] = a(i0 + s * mr + i, p0 + p)`. Rows past `mc`
/// in the last panel are left as is (the kernel never reads them).
fn pack_a(
    kern: &Kernel,
    a: MatRef<'_>,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    dst: &mut [f32],
) {
    let mr = kern.mr;
    let (rs, cs) = (a.row_stride, a.col_stride);
    for (s, ib) in (0..mc).step_by(mr).enumerate() {
        let rows = mr.min(mc - ib);
        let panel = &mut dst[s * mr * kc..(s + 1) * mr * kc];
        if cs == 1 {
            // Row-major A: a transpose of `rows` contiguous rows into stride-`mr` groups.
            let src = &a.data[(i0 + ib) * rs + p0..];
            transpose_into(kern.transpose, src, rs, rows, kc, panel, mr);
        } else if rs == 1 {
            // Column-major (transposed) A: each depth step is a contiguous run of rows.
            for p in 0..kc {
                let src = &a.data[(p0 + p) * cs + i0 + ib..][..rows];
                panel[p * mr..p * mr + rows].copy_from_slice(src);
            }
        } else {
            for p in 0..kc {
                for i in 0..rows {
                    panel[p * mr + i] = a.data[(i0 + ib + i) * rs + (p0 + p) * cs];
                }
            }
        }
    }
}

/// Packs depth `p0 .. p0 + kc`, columns `j0 .. j0 + nc` of B into micro-panels of `nr`
/// columns: panel `t` holds `dst[t * nr * kc + p * nr + j] = b(p0 + p, j0 + t * nr + j)`,
/// zero-padded past `nc` (the kernel reads whole rows of `nr`).
fn pack_b(
    kern: &Kernel,
    b: MatRef<'_>,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    dst: &mut [f32],
) {
    let nr = kern.nr;
    let (rs, cs) = (b.row_stride, b.col_stride);
    for (t, jb) in (0..nc).step_by(nr).enumerate() {
        let cols = nr.min(nc - jb);
        let panel = &mut dst[t * nr * kc..(t + 1) * nr * kc];
        if cs == 1 {
            // Row-major B: each depth step is a contiguous run of columns.
            for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                let src = &b.data[(p0 + p) * rs + j0 + jb..][..cols];
                row[..cols].copy_from_slice(src);
                row[cols..].fill(0.0);
            }
        } else if rs == 1 {
            // Transposed B: read each column contiguously, write with stride `nr`.
            if cols < nr {
                panel.fill(0.0);
            }
            // Transposed B: columns are contiguous; transpose them 16 at a time.
            for j in (0..cols).step_by(16) {
                let src = &b.data[(j0 + jb + j) * cs + p0..];
                transpose_into(
                    kern.transpose,
                    src,
                    cs,
                    (cols - j).min(16),
                    kc,
                    &mut panel[j..],
                    nr,
                );
            }
        } else {
            for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                for (j, d) in row.iter_mut().enumerate() {
                    *d = if j < cols {
                        b.data[(p0 + p) * rs + (j0 + jb + j) * cs]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}
