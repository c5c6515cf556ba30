//! Shared helpers: random weights built through `VarBuilder::from_tensors`, and naive f64
//! references of every layer written as plain loops.
#![allow(dead_code)]

use std::collections::HashMap;

use glimpse_nn::{Activation, AttentionKeys, EncoderConfig, EncoderLayerKeys, MlpKeys};
use glimpse_tensor::{DType, Device, Tensor, VarBuilder};

pub fn dev() -> Device {
    glimpse_cpu::device()
}

/// Random F64 tensor.
pub fn randn(dims: &[usize], std: f64, seed: u64) -> Tensor {
    Tensor::rand_normal(0.0, std, dims.to_vec(), DType::F64, seed, &dev()).unwrap()
}

/// Tolerance for a layer run in `dtype` against an f64 reference.
pub fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-9,
        _ => 2e-4,
    }
}

pub fn assert_close(got: &Tensor, want_dims: &[usize], want: &[f64], tol: f64) {
    assert_eq!(got.dims(), want_dims, "shape");
    let g = got.to_f64_vec().unwrap();
    assert_eq!(g.len(), want.len());
    let mut worst = 0.0f64;
    for (a, b) in g.iter().zip(want) {
        worst = worst.max((a - b).abs());
    }
    assert!(worst <= tol, "max abs diff {worst} > {tol}");
}

/// Random weights by key, stored as F64.
#[derive(Default)]
pub struct Weights {
    pub map: HashMap<String, Tensor>,
    seed: u64,
}

impl Weights {
    pub fn new() -> Self {
        Self {
            map: HashMap::new(),
            seed: 1000,
        }
    }

    pub fn add(&mut self, key: &str, dims: &[usize], mean: f64, std: f64) {
        self.seed += 1;
        let t =
            Tensor::rand_normal(mean, std, dims.to_vec(), DType::F64, self.seed, &dev()).unwrap();
        self.map.insert(key.to_string(), t);
    }

    pub fn vals(&self, key: &str) -> Vec<f64> {
        self.map[key].to_f64_vec().unwrap()
    }

    pub fn opt(&self, key: &str) -> Option<Vec<f64>> {
        self.map.get(key).map(|t| t.to_f64_vec().unwrap())
    }

    pub fn vb(&self, dtype: DType) -> VarBuilder {
        VarBuilder::from_tensors(self.map.clone(), dtype, &dev())
    }

    pub fn add_linear(&mut self, prefix: &str, inp: usize, out: usize, bias: bool) {
        self.add(
            &key(prefix, "weight"),
            &[out, inp],
            0.0,
            1.0 / (inp as f64).sqrt(),
        );
        if bias {
            self.add(&key(prefix, "bias"), &[out], 0.0, 0.1);
        }
    }

    pub fn add_ln(&mut self, prefix: &str, dim: usize) {
        self.add(&key(prefix, "weight"), &[dim], 1.0, 0.1);
        self.add(&key(prefix, "bias"), &[dim], 0.0, 0.1);
    }

    pub fn add_mlp(&mut self, prefix: &str, keys: &MlpKeys, dim: usize, hidden: usize) {
        self.add_linear(&key(prefix, &keys.fc1), dim, hidden, true);
        self.add_linear(&key(prefix, &keys.fc2), hidden, dim, true);
    }

    pub fn add_attention(
        &mut self,
        prefix: &str,
        keys: &AttentionKeys,
        dim: usize,
        kv_dim: usize,
        bias: bool,
    ) {
        self.add_linear(&key(prefix, &keys.q), dim, dim, bias);
        self.add_linear(&key(prefix, &keys.k), kv_dim, dim, bias);
        self.add_linear(&key(prefix, &keys.v), kv_dim, dim, bias);
        self.add_linear(&key(prefix, &keys.out), dim, dim, bias);
    }

    pub fn add_encoder_layer(
        &mut self,
        prefix: &str,
        keys: &EncoderLayerKeys,
        cfg: &EncoderConfig,
    ) {
        self.add_ln(&key(prefix, &keys.ln1), cfg.dim);
        self.add_ln(&key(prefix, &keys.ln2), cfg.dim);
        self.add_attention(prefix, &keys.attention, cfg.dim, cfg.dim, cfg.qkv_bias);
        self.add_mlp(
            &key(prefix, &keys.mlp),
            &keys.mlp_keys,
            cfg.dim,
            cfg.mlp_dim,
        );
    }
}

pub fn key(prefix: &str, name: &str) -> String {
    match (prefix.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (false, true) => prefix.to_string(),
        _ => format!("{prefix}.{name}"),
    }
}

// ---------------------------------------------------------------- naive references

/// x is (rows, inp), w is (out, inp): y = x w^T + b, (rows, out).
pub fn linear(
    x: &[f64],
    rows: usize,
    w: &[f64],
    b: Option<&[f64]>,
    inp: usize,
    out: usize,
) -> Vec<f64> {
    let mut y = vec![0.0; rows * out];
    for r in 0..rows {
        for o in 0..out {
            let mut s = b.map_or(0.0, |b| b[o]);
            for i in 0..inp {
                s += x[r * inp + i] * w[o * inp + i];
            }
            y[r * out + o] = s;
        }
    }
    y
}

/// Reference linear from the weights under `prefix`.
pub fn linear_w(
    w: &Weights,
    prefix: &str,
    x: &[f64],
    rows: usize,
    inp: usize,
    out: usize,
) -> Vec<f64> {
    let b = w.opt(&key(prefix, "bias"));
    linear(
        x,
        rows,
        &w.vals(&key(prefix, "weight")),
        b.as_deref(),
        inp,
        out,
    )
}

pub fn layer_norm(x: &[f64], dim: usize, g: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for (xr, yr) in x.chunks(dim).zip(y.chunks_mut(dim)) {
        let mean = xr.iter().sum::<f64>() / dim as f64;
        let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for i in 0..dim {
            yr[i] = (xr[i] - mean) * inv * g[i] + b[i];
        }
    }
    y
}

pub fn layer_norm_w(w: &Weights, prefix: &str, x: &[f64], dim: usize, eps: f64) -> Vec<f64> {
    layer_norm(
        x,
        dim,
        &w.vals(&key(prefix, "weight")),
        &w.vals(&key(prefix, "bias")),
        eps,
    )
}

/// erf by its Maclaurin series (|x| small) or continued fraction tail; accurate to ~1e-13.
pub fn erf(x: f64) -> f64 {
    if x.abs() > 6.0 {
        return x.signum();
    }
    // Series: erf(x) = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1)); fine for |x| <= 6 in f64
    // only up to ~3, so use the complementary continued fraction beyond.
    if x.abs() <= 3.0 {
        let mut sum = 0.0;
        let mut term = x; // x^(2n+1)/n!
        let mut n = 0.0;
        loop {
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
            n += 1.0;
            term *= -x * x / n;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc continued fraction (Lentz), x > 3.
        let a = x.abs();
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = (k as f64 / 2.0) / (a + f);
        }
        let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f);
        x.signum() * (1.0 - erfc)
    }
}

pub fn act(a: Activation, x: f64) -> f64 {
    match a {
        Activation::GeluErf => 0.5 * x * (1.0 + erf(x / 2f64.sqrt())),
        Activation::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
        Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        Activation::Relu => x.max(0.0),
    }
}

#[allow(clippy::too_many_arguments)]
pub fn mlp_w(
    w: &Weights,
    prefix: &str,
    keys: &MlpKeys,
    a: Activation,
    x: &[f64],
    rows: usize,
    dim: usize,
    hidden: usize,
) -> Vec<f64> {
    let h: Vec<f64> = linear_w(w, &key(prefix, &keys.fc1), x, rows, dim, hidden)
        .into_iter()
        .map(|v| act(a, v))
        .collect();
    linear_w(w, &key(prefix, &keys.fc2), &h, rows, hidden, dim)
}

/// Naive per-head softmax attention. q is (B, Nq, H*D), k and v are (B, Nk, H*D) (heads
/// interleaved in the last dimension, as projections produce them); returns (B, Nq, H*D).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    b: usize,
    nq: usize,
    nk: usize,
    h: usize,
    d: usize,
    causal: bool,
    pad: Option<&[u32]>,
) -> Vec<f64> {
    let e = h * d;
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; b * nq * e];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..nq {
                let mut scores = vec![f64::NEG_INFINITY; nk];
                for (j, s) in scores.iter_mut().enumerate() {
                    let causal_ok = !causal || j + nq <= i + nk;
                    let pad_ok = pad.is_none_or(|p| p[bi * nk + j] != 0);
                    if causal_ok && pad_ok {
                        let mut dot = 0.0;
                        for di in 0..d {
                            dot += q[(bi * nq + i) * e + hi * d + di]
                                * k[(bi * nk + j) * e + hi * d + di];
                        }
                        *s = dot * scale;
                    }
                }
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    continue; // no key visible: zero row
                }
                let p: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = p.iter().sum();
                for di in 0..d {
                    let mut acc = 0.0;
                    for j in 0..nk {
                        acc += p[j] / z * v[(bi * nk + j) * e + hi * d + di];
                    }
                    out[(bi * nq + i) * e + hi * d + di] = acc;
                }
            }
        }
    }
    out
}

/// Reference multi-head attention: x (B, Nq, E), ctx (B, Nk, C).
#[allow(clippy::too_many_arguments)]
pub fn mha_w(
    w: &Weights,
    prefix: &str,
    keys: &AttentionKeys,
    x: &[f64],
    ctx: Option<(&[f64], usize, usize)>,
    b: usize,
    nq: usize,
    e: usize,
    h: usize,
    causal: bool,
    pad: Option<&[u32]>,
) -> Vec<f64> {
    let (c, nk, cd) = ctx.unwrap_or((x, nq, e));
    let q = linear_w(w, &key(prefix, &keys.q), x, b * nq, e, e);
    let k = linear_w(w, &key(prefix, &keys.k), c, b * nk, cd, e);
    let v = linear_w(w, &key(prefix, &keys.v), c, b * nk, cd, e);
    let a = attention(&q, &k, &v, b, nq, nk, h, e / h, causal, pad);
    linear_w(w, &key(prefix, &keys.out), &a, b * nq, e, e)
}

/// Reference pre-norm encoder layer on x (B, N, E).
#[allow(clippy::too_many_arguments)]
pub fn encoder_layer_w(
    w: &Weights,
    prefix: &str,
    keys: &EncoderLayerKeys,
    cfg: &EncoderConfig,
    x: &[f64],
    b: usize,
    n: usize,
    causal: bool,
    pad: Option<&[u32]>,
) -> Vec<f64> {
    let e = cfg.dim;
    let h1 = layer_norm_w(w, &key(prefix, &keys.ln1), x, e, cfg.layer_norm_eps);
    let a = mha_w(
        w,
        prefix,
        &keys.attention,
        &h1,
        None,
        b,
        n,
        e,
        cfg.num_heads,
        causal,
        pad,
    );
    let x1: Vec<f64> = x.iter().zip(&a).map(|(p, q)| p + q).collect();
    let h2 = layer_norm_w(w, &key(prefix, &keys.ln2), &x1, e, cfg.layer_norm_eps);
    let m = mlp_w(
        w,
        &key(prefix, &keys.mlp),
        &keys.mlp_keys,
        cfg.activation,
        &h2,
        b * n,
        e,
        cfg.mlp_dim,
    );
    x1.iter().zip(&m).map(|(p, q)| p + q).collect()
}
