//! ViT / CLIP patch embedding: a `p x p` convolution with stride `p` (+ bias), optionally
//! preceded by a class token, plus position embeddings — one GEMM, no whole-batch im2col.
//!
//! Shapes: `images` is `(B, C, H, W)`; `weight` is `(E, C, p, p)` = `(E, C*p*p)`; `bias`,
//! `class_embedding` are `(E)`; `position_embedding` is `(rows, E)`; `out` is `(B, rows, E)` with
//! `patches = (H / p) * (W / p)` (floor: leftover pixels are ignored, as conv2d does) and
//! `rows = patches + (1 if class_embedding)`. Row 0 is `class + pos[0]` when the class token is
//! present; patch row `t` (raster order) is `conv_t + bias + pos[t + has_class]`.
//!
//! Algorithm: rayon tasks over (image, block of patch rows) with at most ~256 patches per task.
//! Each task gathers its patches into a small packed `(patches_in_block, C*p*p)` buffer (`p`
//! contiguous pixels per copy), calls [`sgemm_packed_b`] against the weight viewed as its
//! transpose `(C*p*p, E)`, packed once per call into the GEMM's panel layout ([`PackedB`]) and
//! shared by every task, accumulating straight into `out` rows pre-filled with bias and
//! positions.
//!
//! The weight gradient `d_W = sum_patches d_out_t^T patch_t` is computed the same way, with tasks
//! over blocks of `E` (each owning rows of `d_W`) looping over the gathered patch blocks.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::gemm::{MatRef, PackedB, sgemm, sgemm_packed_b};

/// Sizes of a patch-embedding call.
#[derive(Clone, Copy, Debug)]
pub struct PatchDims {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub patch: usize,
    pub embed: usize,
}

/// Patches per task, upper bound.
const MAX_BLOCK_PATCHES: usize = 256;

struct Geometry {
    gw: usize,
    patches: usize,
    cpp: usize,
    /// Patch rows per task.
    prows: usize,
}

fn geometry(dims: &PatchDims) -> Geometry {
    let p = dims.patch;
    assert!(p > 0, "patch_embed: patch must be positive");
    let (gh, gw) = (dims.height / p, dims.width / p);
    let cap = (MAX_BLOCK_PATCHES / gw.max(1)).max(1);
    let want_tasks = 2 * rayon::current_num_threads();
    let prows = (dims.batch * gh)
        .div_ceil(want_tasks)
        .clamp(1, cap.min(gh.max(1)));
    Geometry {
        gw,
        patches: gh * gw,
        cpp: dims.channels * p * p,
        prows,
    }
}

/// Copies patches `[t0, t0 + count)` (raster order) of image `b` into `a`, one `C*p*p` row each.
fn gather(
    images: &[f32],
    dims: &PatchDims,
    g: &Geometry,
    b: usize,
    t0: usize,
    count: usize,
    a: &mut [f32],
) {
    let (c_n, h, w, p) = (dims.channels, dims.height, dims.width, dims.patch);
    let img = &images[b * c_n * h * w..(b + 1) * c_n * h * w];
    for (t, dst) in a.chunks_exact_mut(g.cpp).take(count).enumerate() {
        let (py, px) = ((t0 + t) / g.gw, (t0 + t) % g.gw);
        for c in 0..c_n {
            for ky in 0..p {
                let src = c * h * w + (py * p + ky) * w + px * p;
                let d0 = (c * p + ky) * p;
                copy_row(&mut dst[d0..d0 + p], &img[src..src + p]);
            }
        }
    }
}

/// `dst.copy_from_slice(src)` with the common patch widths as fixed-size (inlined) copies rather
/// than `memcpy` calls.
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
        let d: &mut [f32; N] = dst.try_into().expect("length checked by the caller");
        let s: &[f32; N] = src.try_into().expect("length checked by the caller");
        *d = *s;
    }
    match dst.len() {
        14 => fixed::<14>(dst, src),
        16 => fixed::<16>(dst, src),
        32 => fixed::<32>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// Patch embedding forward (see the module docs).
///
/// # Panics
/// If a slice length does not match `dims` (`images`: `B*C*H*W`, `weight`: `E*C*p*p`, `bias` /
/// `class_embedding`: `E`, `position_embedding`: `rows*E`, `out`: `B*rows*E`) or `patch == 0`.
#[allow(clippy::too_many_arguments)]
pub fn patch_embed(
    images: &[f32],
    dims: PatchDims,
    weight: &[f32],
    bias: Option<&[f32]>,
    class_embedding: Option<&[f32]>,
    position_embedding: Option<&[f32]>,
    out: &mut [f32],
) {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and `patch_embed_uninit` only ever
    // stores initialised values, so `out` stays initialised.
    let out = unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) };
    patch_embed_uninit(
        images,
        dims,
        weight,
        bias,
        class_embedding,
        position_embedding,
        out,
    );
}

/// [`patch_embed`] into an output that need not be initialised: every element of `out` is
/// written (so callers can skip zero-filling a fresh buffer).
///
/// # Panics
/// As [`patch_embed`].
#[allow(clippy::too_many_arguments)]
pub fn patch_embed_uninit(
    images: &[f32],
    dims: PatchDims,
    weight: &[f32],
    bias: Option<&[f32]>,
    class_embedding: Option<&[f32]>,
    position_embedding: Option<&[f32]>,
    out: &mut [MaybeUninit<f32>],
) {
    let g = geometry(&dims);
    let e = dims.embed;
    let has_class = usize::from(class_embedding.is_some());
    let rows = g.patches + has_class;
    assert_eq!(
        images.len(),
        dims.batch * dims.channels * dims.height * dims.width,
        "patch_embed: images length"
    );
    assert_eq!(weight.len(), e * g.cpp, "patch_embed: weight length");
    assert!(
        bias.is_none_or(|b| b.len() == e),
        "patch_embed: bias length"
    );
    assert!(
        class_embedding.is_none_or(|c| c.len() == e),
        "patch_embed: class_embedding length"
    );
    assert!(
        position_embedding.is_none_or(|p| p.len() == rows * e),
        "patch_embed: position_embedding length"
    );
    assert_eq!(out.len(), dims.batch * rows * e, "patch_embed: out length");
    if e == 0 || dims.batch == 0 {
        return;
    }
    let block = g.prows * g.gw;
    let mut tasks = Vec::new();
    for (b, o) in out.chunks_mut(rows * e).enumerate() {
        let (cls, patches) = o.split_at_mut(has_class * e);
        if let Some(c) = class_embedding {
            for (k, o) in cls.iter_mut().enumerate() {
                o.write(c[k] + position_embedding.map_or(0.0, |pos| pos[k]));
            }
        }
        if block > 0 {
            for (t, o) in patches.chunks_mut(block * e).enumerate() {
                tasks.push((b, t * block, o));
            }
        }
    }
    if tasks.is_empty() {
        return;
    }
    // The weight viewed as its transpose `(C*p*p, E)`, packed once for every task.
    let wt = PackedB::new(g.cpp, e, MatRef::new(weight, 1, g.cpp));
    tasks.into_par_iter().for_each(|(b, t0, o)| {
        super::simd::with_scratch(block * g.cpp, |a| {
            let count = o.len() / e;
            gather(images, &dims, &g, b, t0, count, a);
            // Bias and positions (or zeros) first, so the GEMM adds the product onto them and
            // C is written once instead of twice.
            for (t, row) in o.chunks_exact_mut(e).enumerate() {
                let pr = (has_class + t0 + t) * e;
                match (bias, position_embedding) {
                    (Some(bias), Some(pos)) => row
                        .iter_mut()
                        .zip(bias.iter().zip(&pos[pr..pr + e]))
                        .for_each(|(o, (&b, &p))| {
                            o.write(b + p);
                        }),
                    (Some(bias), None) => row.iter_mut().zip(bias).for_each(|(o, &b)| {
                        o.write(b);
                    }),
                    (None, Some(pos)) => {
                        row.iter_mut().zip(&pos[pr..pr + e]).for_each(|(o, &p)| {
                            o.write(p);
                        })
                    }
                    (None, None) => row.fill(MaybeUninit::new(0.0)),
                }
            }
            // SAFETY: every element of `o` was initialised by the loop above, and
            // `MaybeUninit<f32>` has the layout of `f32`.
            let o = unsafe { &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]) };
            sgemm_packed_b(
                count,
                1.0,
                MatRef::row_major(a, g.cpp),
                &wt,
                true,
                o,
                e,
                false,
            );
        })
    });
}

/// Gradients of [`patch_embed`] with respect to the weight `(E, C*p*p)` and the bias `(E)`,
/// given `d_out` `(B, rows, E)` (`has_class`: whether row 0 of each image is the class token,
/// which does not depend on the weight).
///
/// # Panics
/// If `images` or `d_out` do not match `dims`, or `patch == 0`.
pub fn patch_embed_weight_grad(
    images: &[f32],
    dims: PatchDims,
    d_out: &[f32],
    has_class: bool,
) -> (Vec<f32>, Vec<f32>) {
    let g = geometry(&dims);
    let e = dims.embed;
    let hc = usize::from(has_class);
    let rows = g.patches + hc;
    assert_eq!(
        images.len(),
        dims.batch * dims.channels * dims.height * dims.width,
        "patch_embed: images length"
    );
    assert_eq!(
        d_out.len(),
        dims.batch * rows * e,
        "patch_embed: d_out length"
    );
    let mut d_weight = vec![0.0f32; e * g.cpp];
    let mut d_bias = vec![0.0f32; e];
    if e == 0 || g.cpp == 0 {
        return (d_weight, d_bias);
    }
    let block = (MAX_BLOCK_PATCHES / g.gw.max(1)).max(1) * g.gw;
    let threads = rayon::current_num_threads();
    let ec = e.div_ceil(2 * threads).clamp(16.min(e), e);
    d_weight
        .par_chunks_mut(ec * g.cpp)
        .zip(d_bias.par_chunks_mut(ec))
        .enumerate()
        .for_each(|(ci, (dw, db))| {
            let e0 = ci * ec;
            let ecount = db.len();
            super::simd::with_scratch(block.max(1) * g.cpp, |a| {
                for b in 0..dims.batch {
                    for t0 in (0..g.patches).step_by(block.max(1)) {
                        let count = block.min(g.patches - t0);
                        gather(images, &dims, &g, b, t0, count, a);
                        let start = (b * rows + hc + t0) * e + e0;
                        // d_out block transposed: element (e, t) = d_out[start + t * E + e].
                        let dyt = MatRef::new(&d_out[start..], 1, e);
                        sgemm(
                            ecount,
                            g.cpp,
                            count,
                            1.0,
                            dyt,
                            MatRef::row_major(a, g.cpp),
                            true,
                            dw,
                            g.cpp,
                            false,
                        );
                        for t in 0..count {
                            let r = &d_out[start + t * e..start + t * e + ecount];
                            db.iter_mut().zip(r).for_each(|(d, &x)| *d += x);
                        }
                    }
                }
            });
        });
    (d_weight, d_bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{assert_close, rand_vec};
    use proptest::prelude::*;

    /// Direct f64 convolution reference: `(B, rows, E)`.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f32],
        dm: &PatchDims,
        w: &[f32],
        bias: Option<&[f32]>,
        cls: Option<&[f32]>,
        pos: Option<&[f32]>,
    ) -> Vec<f32> {
        let PatchDims {
            batch,
            channels: c_n,
            height: h,
            width: wd,
            patch: p,
            embed: e,
        } = *dm;
        let (gh, gw) = (h / p, wd / p);
        let hc = usize::from(cls.is_some());
        let rows = gh * gw + hc;
        let mut out = vec![0.0f32; batch * rows * e];
        for b in 0..batch {
            for r in 0..rows {
                for o in 0..e {
                    let mut v = pos.map_or(0.0, |p| p[r * e + o] as f64);
                    if r < hc {
                        v += cls.unwrap()[o] as f64;
                    } else {
                        let t = r - hc;
                        let (py, px) = (t / gw, t % gw);
                        v += bias.map_or(0.0, |b| b[o] as f64);
                        for c in 0..c_n {
                            for ky in 0..p {
                                for kx in 0..p {
                                    let xi = ((b * c_n + c) * h + py * p + ky) * wd + px * p + kx;
                                    v += x[xi] as f64 * w[((o * c_n + c) * p + ky) * p + kx] as f64;
                                }
                            }
                        }
                    }
                    out[(b * rows + r) * e + o] = v as f32;
                }
            }
        }
        out
    }

    // Tolerance: abs 1e-4 + rel 1e-4 (sums of up to C*p*p = 768 products of O(1) values).
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn forward_and_grad_match_reference(batch in 1usize..3, c_n in 1usize..4, p in 1usize..9,
                gh in 1usize..6, gw in 1usize..25, extra_h in 0usize..3, extra_w in 0usize..3,
                e in 1usize..40, has_cls in any::<bool>(), has_pos in any::<bool>(), has_bias in any::<bool>(),
                seed in any::<u64>()) {
            let dm = PatchDims { batch, channels: c_n, height: gh * p + extra_h.min(p - 1),
                                 width: gw * p + extra_w.min(p - 1), patch: p, embed: e };
            let x = rand_vec(batch * c_n * dm.height * dm.width, seed, 1.0);
            let w = rand_vec(e * c_n * p * p, seed ^ 1, 1.0);
            let bias = rand_vec(e, seed ^ 2, 1.0);
            let cls = rand_vec(e, seed ^ 3, 1.0);
            let rows = gh * gw + usize::from(has_cls);
            let pos = rand_vec(rows * e, seed ^ 4, 1.0);
            let (bias, cls, pos) = (has_bias.then_some(&bias[..]), has_cls.then_some(&cls[..]), has_pos.then_some(&pos[..]));
            let mut out = vec![f32::NAN; batch * rows * e];
            patch_embed(&x, dm, &w, bias, cls, pos, &mut out);
            assert_close(&out, &reference(&x, &dm, &w, bias, cls, pos), 1e-4, 1e-4, "patch_embed");

            // Weight gradient: d_W[o, (c,ky,kx)] = sum_{b,t} dY[b, t, o] * patch_t[(c,ky,kx)].
            let dy = rand_vec(out.len(), seed ^ 5, 1.0);
            let (dw, db) = patch_embed_weight_grad(&x, dm, &dy, has_cls);
            let hc = usize::from(has_cls);
            let cpp = c_n * p * p;
            let mut want_w = vec![0.0f64; e * cpp];
            let mut want_b = vec![0.0f64; e];
            for b in 0..batch {
                for t in 0..gh * gw {
                    let (py, px) = (t / gw, t % gw);
                    for o in 0..e {
                        let g = dy[(b * rows + hc + t) * e + o] as f64;
                        want_b[o] += g;
                        for c in 0..c_n {
                            for ky in 0..p {
                                for kx in 0..p {
                                    let xi = ((b * c_n + c) * dm.height + py * p + ky) * dm.width + px * p + kx;
                                    want_w[o * cpp + (c * p + ky) * p + kx] += g * x[xi] as f64;
                                }
                            }
                        }
                    }
                }
            }
            let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
            assert_close(&dw, &f(want_w), 1e-4, 1e-4, "d_weight");
            assert_close(&db, &f(want_b), 1e-4, 1e-4, "d_bias");
        }
    }

    #[test]
    fn vit_sized() {
        let dm = PatchDims {
            batch: 2,
            channels: 3,
            height: 64,
            width: 70,
            patch: 16,
            embed: 48,
        };
        let x = rand_vec(2 * 3 * 64 * 70, 1, 1.0);
        let w = rand_vec(48 * 768, 2, 0.1);
        let cls = rand_vec(48, 3, 1.0);
        let pos = rand_vec(17 * 48, 4, 1.0);
        let mut out = vec![0.0; 2 * 17 * 48];
        patch_embed(&x, dm, &w, None, Some(&cls), Some(&pos), &mut out);
        assert_close(
            &out,
            &reference(&x, &dm, &w, None, Some(&cls), Some(&pos)),
            1e-4,
            1e-4,
            "vit",
        );
    }
}
