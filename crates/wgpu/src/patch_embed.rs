//! Patch embedding (a convolution whose stride equals its kernel) and its gradients, with the
//! kernels of `kernels/wgsl/patch_embed.wgsl`: tiled GEMMs that gather patches straight from
//! the (B, C, H, W) images of any strides (no im2col buffer), the forward with bias, class row
//! and position embedding in its epilogue; the backward's weight and image gradients as two
//! more such GEMMs (the image gradient scattered back to its pixels, the uncovered edge zeroed
//! by a small kernel) and the bias, class and position gradients as column sums of `d_out`.
//! Every input is read through its strides (nothing is copied first) and every output is
//! written whole, in the images' dtype, with f32 accumulation.

use glimpse_tensor::{Error, PatchEmbedGrads, PatchEmbedOptions, Result, Shape, Tensor};

use crate::backend::{Elem, Kernel, Params, WgpuBackend, workgroups_for};
use crate::storage::storage_of;

const FILE: &str = "patch_embed.wgsl";

/// The GEMM tiling (`TX`, `TY`, `BK` overrides; `TM` = `TN` = 4 are consts of the shader):
/// 64 x 64 output tiles, 256 threads, 16-deep reduction steps.
const TX: u32 = 16;
const TY: u32 = 16;
const BK: u32 = 16;
const TM: usize = 4;
const TN: usize = 4;
const GEMM: &[(&str, u32)] = &[("TX", TX), ("TY", TY), ("BK", BK)];
/// Row tile and column tile of the GEMMs.
const BM: usize = TY as usize * TM;
const BN: usize = TX as usize * TN;

/// Columns per workgroup and threads per column of `patch_embed_colsum`.
const CW: u32 = 32;
const CR: u32 = 8;
/// Threads of `patch_embed_edge`.
const WG: u32 = 256;

/// The largest workgroup count of one grid dimension.
const MAX_GROUPS: usize = 65_535;

/// The geometry of one patch embedding.
struct Geometry {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    p: usize,
    gw: usize,
    np: usize,
    e: usize,
    first: usize,
}

impl Geometry {
    fn new(images: &Tensor, weight: &Tensor, opts: &PatchEmbedOptions) -> Self {
        let d = images.dims();
        let p = opts.patch_size;
        let (gh, gw) = (d[2] / p, d[3] / p);
        Geometry {
            b: d[0],
            c: d[1],
            h: d[2],
            w: d[3],
            p,
            gw,
            np: gh * gw,
            e: weight.dims()[0],
            first: usize::from(opts.class_embedding.is_some()),
        }
    }

    /// Output rows per image.
    fn rows(&self) -> usize {
        self.first + self.np
    }

    /// Columns of the patch matrix, C*P*P.
    fn k(&self) -> usize {
        self.c * self.p * self.p
    }

    /// Params words 0..20: geometry, flags, images and weight views.
    fn params(&self, flags: u32, images: &Tensor, weight: &Tensor) -> Result<Params> {
        let mut p = Params::new();
        for v in [self.b, self.c, self.p, self.gw, self.np, self.e, self.first] {
            p.usize(v)?;
        }
        p.u32(flags);
        p.usize(self.h)?.usize(self.w)?;
        // Words 10..15 and 15..20: offset and the four strides of each.
        for t in [images, weight] {
            p.usize(t.layout().offset())?;
            for &s in t.layout().strides() {
                p.usize(s)?;
            }
        }
        debug_assert_eq!(p.len(), 20);
        Ok(p)
    }
}

/// The grid of a GEMM with `cols` column tiles and `rows` row tiles (row tiles along y and z).
fn gemm_grid(cols: usize, rows: usize) -> Result<[u32; 3]> {
    if cols > MAX_GROUPS {
        return Err(Error::backend(
            "wgpu",
            format!("patch_embed: {cols} column tiles exceed one grid dimension"),
        ));
    }
    let y = rows.min(MAX_GROUPS);
    let z = rows.div_ceil(MAX_GROUPS);
    Ok([cols as u32, y as u32, z as u32])
}

/// Pushes `t`'s offset and its strides.
fn push_strided(p: &mut Params, t: &Tensor) -> Result<()> {
    p.usize(t.layout().offset())?;
    for &s in t.layout().strides() {
        p.usize(s)?;
    }
    Ok(())
}

/// `(B, C, H, W)` images, `(E, C, P, P)` weight, `(E)` bias -> `(B, [1 +] np, E)`.
pub(crate) fn patch_embed(
    be: &WgpuBackend,
    images: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: &PatchEmbedOptions,
) -> Result<Tensor> {
    let t = be.elem(images.dtype(), "patch_embed")?;
    let g = Geometry::new(images, weight, opts);
    let rows = g.rows();
    let cls = opts.class_embedding.as_ref();
    let pos = opts.position_embedding.as_ref();
    let flags = u32::from(bias.is_some()) | (u32::from(pos.is_some()) << 1);
    let mut p = g.params(flags, images, weight)?;
    // Words 20..27: bias (offset, stride), cls (offset, stride), pos (offset, 2 strides); an
    // absent one reads nothing (its words are zero and the weight is bound in its place).
    for (t, rank) in [(bias, 1), (cls, 1), (pos, 2)] {
        match t {
            Some(t) => push_strided(&mut p, t)?,
            None => {
                for _ in 0..=rank {
                    p.u32(0);
                }
            }
        }
    }
    let out = be.alloc(images.dtype(), g.b * rows * g.e)?;
    let w = storage_of(weight)?;
    // An absent operand binds the weight in its place (its params words are zero).
    let buf = |t: Option<&'_ Tensor>| -> Result<wgpu::Buffer> {
        Ok(match t {
            Some(t) => storage_of(t)?.buffer().clone(),
            None => w.buffer().clone(),
        })
    };
    let (bias_buf, cls_buf, pos_buf) = (buf(bias)?, buf(cls)?, buf(pos)?);
    // out (B*rows, E) = gathered patches (B*rows, K) @ W^T (K, E), tiles of BM x BN.
    be.dispatch(
        &Kernel::new(FILE, "patch_embed_fwd", t).with_constants(GEMM),
        &p,
        &[
            out.buffer(),
            storage_of(images)?.buffer(),
            w.buffer(),
            &bias_buf,
            &cls_buf,
            &pos_buf,
        ],
        gemm_grid(g.e.div_ceil(BN), (g.b * rows).div_ceil(BM))?,
    )?;
    out.into_tensor([g.b, rows, g.e], images)
}

/// `out[j] = sum_i d_out[...]` over a view of `d_out` (see `patch_embed_colsum`): `j < cols`
/// splits as `(j / cols2, j % cols2)` with strides `(sj1, sj2)`, the summed `i < sums` as
/// `(i / sums2, i % sums2)` with strides `(si1, si2)`.
struct ColSum {
    cols: usize,
    cols2: usize,
    sums: usize,
    sums2: usize,
    base: usize,
    sj: [usize; 2],
    si: [usize; 2],
}

fn col_sum(be: &WgpuBackend, t: Elem, d_out: &Tensor, s: ColSum, shape: &Shape) -> Result<Tensor> {
    let out = be.alloc(d_out.dtype(), s.cols)?;
    let mut p = Params::new();
    for v in [
        s.cols,
        s.cols2.max(1),
        s.sums,
        s.sums2.max(1),
        s.base,
        s.sj[0],
        s.sj[1],
        s.si[0],
        s.si[1],
    ] {
        p.usize(v)?;
    }
    be.dispatch(
        &Kernel::new(FILE, "patch_embed_colsum", t).with_constants(&[("CW", CW), ("CR", CR)]),
        &p,
        &[out.buffer(), storage_of(d_out)?.buffer()],
        workgroups_for(s.cols, CW),
    )?;
    out.into_tensor(shape.clone(), d_out)
}

/// Gradients of [`patch_embed`] given `d_out` `(B, rows, E)`.
pub(crate) fn patch_embed_backward(
    be: &WgpuBackend,
    images: &Tensor,
    weight: &Tensor,
    opts: &PatchEmbedOptions,
    d_out: &Tensor,
    need_images: bool,
) -> Result<PatchEmbedGrads> {
    let t = be.elem(images.dtype(), "patch_embed_backward")?;
    let g = Geometry::new(images, weight, opts);
    let k = g.k();
    let mut p = g.params(0, images, weight)?;
    // Words 20..24: the d_out view (offset, strides b, r, e).
    push_strided(&mut p, d_out)?;
    let img = storage_of(images)?;
    let w = storage_of(weight)?;
    let go = storage_of(d_out)?;
    let [sb, sr, se] = [
        d_out.layout().strides()[0],
        d_out.layout().strides()[1],
        d_out.layout().strides()[2],
    ];
    let off = d_out.layout().offset();

    // d_weight (E, K) = G^T (E, B*np) @ patches (B*np, K).
    let d_weight = be.alloc(weight.dtype(), g.e * k)?;
    be.dispatch(
        &Kernel::new(FILE, "patch_embed_dweight", t).with_constants(GEMM),
        &p,
        &[d_weight.buffer(), img.buffer(), go.buffer()],
        gemm_grid(k.div_ceil(BN), g.e.div_ceil(BM))?,
    )?;
    let d_weight = d_weight.into_tensor(weight.shape().clone(), images)?;

    // d_bias (E): sums over the B*np patch rows.
    let d_bias = col_sum(
        be,
        t,
        d_out,
        ColSum {
            cols: g.e,
            cols2: g.e,
            sums: g.b * g.np,
            sums2: g.np,
            base: off + g.first * sr,
            sj: [0, se],
            si: [sb, sr],
        },
        &Shape::from([g.e]),
    )?;
    // d_class (E): sums of the class rows; d_position (rows, E): sums over the batch.
    let d_class = match &opts.class_embedding {
        Some(cls) => Some(col_sum(
            be,
            t,
            d_out,
            ColSum {
                cols: g.e,
                cols2: g.e,
                sums: g.b,
                sums2: 1,
                base: off,
                sj: [0, se],
                si: [sb, 0],
            },
            cls.shape(),
        )?),
        None => None,
    };
    let d_position = match &opts.position_embedding {
        Some(pos) => Some(col_sum(
            be,
            t,
            d_out,
            ColSum {
                cols: g.rows() * g.e,
                cols2: g.e,
                sums: g.b,
                sums2: 1,
                base: off,
                sj: [sr, se],
                si: [sb, 0],
            },
            pos.shape(),
        )?),
        None => None,
    };

    // d_images (B, C, H, W): (G @ W) scattered to the patches' pixels, the rest zeroed.
    let d_images = if need_images {
        let out = be.alloc(images.dtype(), g.b * g.c * g.h * g.w)?;
        be.dispatch(
            &Kernel::new(FILE, "patch_embed_dimages", t).with_constants(GEMM),
            &p,
            &[out.buffer(), go.buffer(), w.buffer()],
            gemm_grid(k.div_ceil(BN), (g.b * g.np).div_ceil(BM))?,
        )?;
        let (hp, wp) = ((g.h / g.p) * g.p, g.gw * g.p);
        let edge = g.b * g.c * (g.h * g.w - hp * wp);
        if edge > 0 {
            let mut q = Params::new();
            for v in [g.b * g.c, g.h, g.w, hp, wp] {
                q.usize(v)?;
            }
            be.dispatch(
                &Kernel::new(FILE, "patch_embed_edge", t).with_constants(&[("WG", WG)]),
                &q,
                &[out.buffer()],
                workgroups_for(edge, WG),
            )?;
        }
        Some(out.into_tensor(images.shape().clone(), images)?)
    } else {
        None
    };
    Ok(PatchEmbedGrads {
        d_images,
        d_weight,
        d_bias,
        d_class,
        d_position,
    })
}
