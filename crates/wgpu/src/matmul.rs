//! Matrix products: the batched, strided `matmul` primitive and the fused `linear` layer, both
//! on the tiled kernel of `kernels/wgsl/matmul.wgsl`.
//!
//! The kernel reads each operand through a (row stride, column stride) pair plus per-batch
//! strides, so transposed, narrowed and broadcast views are multiplied in place (no copies);
//! the output is contiguous. `linear` is the same kernel with the bias added in its epilogue
//! and the weight `(N, K)` read as the transposed `(K, N)` operand.

use glimpse_tensor::merge::{Merged, contiguous_strides};
use glimpse_tensor::{BackendStorage, DType, Error, Layout, Result, Tensor, compose};

use crate::backend::{Elem, Kernel, Params, WgpuBackend, unsupported};
use crate::storage::{WgpuStorage, storage_of};

/// The most workgroups of one dispatch along a dimension (larger grids are split).
const MAX_GROUPS: usize = 65_535;
/// Per-invocation register block of the kernel (`TM`, `TN`).
const REG_BLOCK: usize = 4;

/// One matrix operand of the kernel: element `(i, l)` of batch entry `b` is at
/// `offset + batch_offset(b) + i * rs + l * cs`.
struct Operand<'a> {
    storage: &'a WgpuStorage,
    offset: usize,
    rs: usize,
    cs: usize,
}

/// A bias vector read at `offset + j * stride`.
struct Bias<'a> {
    storage: &'a WgpuStorage,
    offset: usize,
    stride: usize,
}

/// One call of the kernel: `C (batch.., m, n) = A (batch.., m, k) B (batch.., k, n) [+ bias]`.
struct Gemm<'a> {
    a: Operand<'a>,
    b: Operand<'a>,
    m: usize,
    k: usize,
    n: usize,
    /// Batch dims and each operand's strides along them (any rank; merged here).
    batch: Vec<usize>,
    a_batch: Vec<usize>,
    b_batch: Vec<usize>,
    bias: Option<Bias<'a>>,
}

/// Fails unless every element index of `layout` fits the kernels' 32-bit indices.
fn check_indices(layout: &Layout, op: &str) -> Result<()> {
    match layout.checked_max_index() {
        // One past the largest index.
        Some(i) if i.saturating_sub(1) <= u32::MAX as usize => Ok(()),
        _ => Err(Error::backend(
            "wgpu",
            format!("{op}: the view {layout:?} exceeds the kernels' 32-bit indices"),
        )),
    }
}

impl WgpuBackend {
    /// The matmul kernel's element type for `dtype` (f32 and f16).
    fn gemm_elem(&self, dtype: DType, op: &'static str) -> Result<Elem> {
        match self.elem(dtype, op)? {
            Elem::U32 => Err(unsupported(op, dtype)),
            e => Ok(e),
        }
    }

    /// Records the dispatches of one product into a fresh contiguous output.
    fn gemm(&self, dtype: DType, g: &Gemm<'_>) -> Result<WgpuStorage> {
        let t = self.gemm_elem(dtype, "matmul")?;
        let batches: usize = g.batch.iter().product();
        let total = batches * g.m * g.n;
        if total > u32::MAX as usize {
            return Err(Error::backend(
                "wgpu",
                format!("matmul: {total} output elements exceed the kernel's 32-bit indices"),
            ));
        }
        let out = self.alloc(dtype, total)?;
        if total == 0 {
            return Ok(out);
        }
        // Batch dims merged over A, B and the contiguous C (which keeps C's order, so the
        // kernel's batch index times m n is C's offset).
        let c_batch: Vec<usize> = contiguous_strides(&g.batch)
            .into_iter()
            .map(|s| s * g.m * g.n)
            .collect();
        let merged = Merged::new(&g.batch, &[&g.a_batch, &g.b_batch, &c_batch], None);

        // Small products take 32 x 32 tiles (64 invocations), the rest 64 x 64 (256).
        let (wx, wy) = if g.m.max(g.n) <= 32 { (8, 8) } else { (16, 16) };
        let constants = [("WX", wx as u32), ("WY", wy as u32)];
        let kernel = Kernel::new("matmul.wgsl", "matmul", t).with_constants(&constants);
        let tiles = [
            g.n.div_ceil(REG_BLOCK * wx),
            g.m.div_ceil(REG_BLOCK * wy),
            batches,
        ];
        let (bias_buf, bias_off, bias_stride) = match &g.bias {
            Some(b) => (b.storage.buffer(), b.offset, b.stride),
            // Unread without the flag; any T buffer fills the binding.
            None => (g.a.storage.buffer(), 0, 0),
        };
        // The parameters of the dispatch whose first tiles are `first` (column, row, batch).
        let params = |first: [usize; 3]| -> Result<Params> {
            let mut p = Params::new();
            for v in [
                g.m, g.k, g.n, g.a.rs, g.a.cs, g.b.rs, g.b.cs, g.a.offset, g.b.offset,
            ] {
                p.usize(v)?;
            }
            for v in first {
                p.usize(v)?;
            }
            p.u32(u32::from(g.bias.is_some()));
            p.usize(bias_off)?.usize(bias_stride)?;
            p.usize(merged.dims.len())?;
            let batch_words = merged.dims.iter().chain(&merged.strides[0]);
            for &v in batch_words.chain(&merged.strides[1]) {
                p.usize(v)?;
            }
            Ok(p)
        };
        let buffers = [
            out.buffer(),
            g.a.storage.buffer(),
            g.b.storage.buffer(),
            bias_buf,
        ];
        for z0 in (0..tiles[2]).step_by(MAX_GROUPS) {
            for y0 in (0..tiles[1]).step_by(MAX_GROUPS) {
                for x0 in (0..tiles[0]).step_by(MAX_GROUPS) {
                    let groups = [
                        (tiles[0] - x0).min(MAX_GROUPS) as u32,
                        (tiles[1] - y0).min(MAX_GROUPS) as u32,
                        (tiles[2] - z0).min(MAX_GROUPS) as u32,
                    ];
                    self.dispatch(&kernel, &params([x0, y0, z0])?, &buffers, groups)?;
                }
            }
        }
        Ok(out)
    }

    /// `lhs (batch.., m, k) @ rhs (batch.., k, n)`, both of any strides (zero-strided batch
    /// dims included); the output is contiguous `(batch.., m, n)`.
    pub(crate) fn op_matmul(
        &self,
        lhs: &WgpuStorage,
        lhs_layout: &Layout,
        rhs: &WgpuStorage,
        rhs_layout: &Layout,
    ) -> Result<WgpuStorage> {
        let dtype = lhs.dtype();
        if rhs.dtype() != dtype {
            return Err(Error::backend(
                "wgpu",
                "matmul: operands of different dtypes reached the backend",
            ));
        }
        self.gemm_elem(dtype, "matmul")?;
        let (ld, rd) = (lhs_layout.dims(), rhs_layout.dims());
        let r = ld.len();
        if r < 2 || rd.len() != r || ld[..r - 2] != rd[..r - 2] || ld[r - 1] != rd[r - 2] {
            return Err(Error::backend(
                "wgpu",
                format!("matmul: layouts {ld:?} and {rd:?} do not fit"),
            ));
        }
        check_indices(lhs_layout, "matmul")?;
        check_indices(rhs_layout, "matmul")?;
        let (ls, rs) = (lhs_layout.strides(), rhs_layout.strides());
        self.gemm(
            dtype,
            &Gemm {
                a: Operand {
                    storage: lhs,
                    offset: lhs_layout.offset(),
                    rs: ls[r - 2],
                    cs: ls[r - 1],
                },
                b: Operand {
                    storage: rhs,
                    offset: rhs_layout.offset(),
                    rs: rs[r - 2],
                    cs: rs[r - 1],
                },
                m: ld[r - 2],
                k: ld[r - 1],
                n: rd[r - 1],
                batch: ld[..r - 2].to_vec(),
                a_batch: ls[..r - 2].to_vec(),
                b_batch: rs[..r - 2].to_vec(),
                bias: None,
            },
        )
    }
}

/// `x @ weight^T + bias`: `x` is `(.., K)` (the leading dims flattened into rows, in place when
/// the view allows it), `weight` `(N, K)`, `bias` `(N)`; the output is `(.., N)`. One kernel
/// pass: the weight is read transposed through its strides and the bias is added in the
/// epilogue.
pub(crate) fn linear(
    be: &WgpuBackend,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let dtype = x.dtype();
    let shapes_fit = x.rank() >= 2
        && weight.rank() == 2
        && x.dims()[x.rank() - 1] == weight.dims()[1]
        && weight.dtype() == dtype
        && bias.is_none_or(|b| b.dims() == [weight.dims()[0]] && b.dtype() == dtype);
    if !shapes_fit {
        // The composition reports the error (or broadcasts as `matmul` does).
        return compose::linear(x, weight, bias);
    }
    be.gemm_elem(dtype, "linear")?;
    let k = weight.dims()[1];
    let n = weight.dims()[0];
    let lead = &x.dims()[..x.rank() - 1];
    let rows: usize = lead.iter().product();
    // x as a (rows, K) matrix: in place when its leading dims merge into one, else a
    // contiguous copy.
    let merged = Merged::new(lead, &[&x.layout().strides()[..x.rank() - 1]], None);
    let col_stride = x.layout().strides()[x.rank() - 1];
    let (x, x_layout) = match merged.strides[0].as_slice() {
        [] => (x.clone(), (0, col_stride, x.layout().offset())),
        [rs] => (x.clone(), (*rs, col_stride, x.layout().offset())),
        _ => {
            let c = x.contiguous()?;
            let offset = c.layout().offset();
            (c, (k, 1, offset))
        }
    };
    check_indices(x.layout(), "linear")?;
    check_indices(weight.layout(), "linear")?;
    let ws = weight.layout().strides();
    let bias = match bias {
        Some(b) => {
            check_indices(b.layout(), "linear")?;
            Some(Bias {
                storage: storage_of(b)?,
                offset: b.layout().offset(),
                stride: b.layout().strides()[0],
            })
        }
        None => None,
    };
    let out = be.gemm(
        dtype,
        &Gemm {
            a: Operand {
                storage: storage_of(&x)?,
                offset: x_layout.2,
                rs: x_layout.0,
                cs: x_layout.1,
            },
            // weight^T: element (l, j) is weight[j, l].
            b: Operand {
                storage: storage_of(weight)?,
                offset: weight.layout().offset(),
                rs: ws[1],
                cs: ws[0],
            },
            m: rows,
            k,
            n,
            batch: Vec::new(),
            a_batch: Vec::new(),
            b_batch: Vec::new(),
            bias,
        },
    )?;
    let mut dims = x.dims()[..x.rank() - 1].to_vec();
    dims.push(n);
    out.into_tensor(dims, &x)
}
