// activation.wgsl: the GELU activations and their gradients, element-wise (T is f32 or f16,
// arithmetic in f32).
//
//   gelu:           kind 0 (erf):   x / 2 (1 + erf(x / sqrt 2))
//                   kind 1 (tanh):  x / 2 (1 + tanh(u)), u = sqrt(2 / pi) (x + 0.044715 x^3),
//                                   evaluated as x sigmoid(2 u)
//                   kind 2 (quick): x sigmoid(1.702 x)
//   gelu_backward:  out = d_out * GELU'(x), the exact derivative of each kind:
//                   erf:   Phi(x) + x phi(x)
//                   tanh:  (1 + t) / 2 + x (1 - t^2) c (1 + 3 * 0.044715 x^2) / 2, t = tanh(u)
//                   quick: s + 1.702 x s (1 - s), s = sigmoid(1.702 x)
//
// Shapes: x and d_out are read through strided views of n elements (any strides, common.wgsl
// layout); out is contiguous (n).
// Params: gelu: 0 n, 1 kind, 2.. x view. gelu_backward: 0 n, 1 kind, 2.. x view, then the
// d_out view. Bindings: 1 out, 2 x, 3 d_out.
// Launch: 1-D, WG invocations per workgroup, any number of workgroups (grid-stride loops).
//
// erf and tanh are written out here (WGSL has no erf, and tanh of large arguments is NaN on
// some drivers): erf uses the CPU backend's fits (max abs error about 1.2e-7), tanh a
// polynomial below 0.625 and 1 - 2 / (e^{2|x|} + 1) above. Exponent arguments are clamped so
// that nothing overflows to inf.
//
// variants (T/U): f32/f32 f16/f16

override WG: u32 = 256u;

@group(0) @binding(1) var<storage, read_write> out: array<T>;
@group(0) @binding(2) var<storage, read> x: array<T>;
@group(0) @binding(3) var<storage, read> d_out: array<T>;

const SQRT_2_OVER_PI: f32 = 0.7978846;
const GELU_A: f32 = 0.044715;
const FRAC_1_SQRT_2: f32 = 0.70710678;
const INV_SQRT_2PI: f32 = 0.3989423;

// Not elementwise.wgsl's erf_f / tanh_f (~2 ulp, costlier): GELU keeps its own cheaper fits.
// The error function: z P(z^2) for |z| < 0.921875, else sign(z) (1 - e^{-z^2} Q(|z| - 2))
// with |z| clamped to 4 (where erf rounds to 1 in f32). NaN propagates.
fn erf_f32(z: f32) -> f32 {
    if z != z {
        return z;
    }
    let a = abs(z);
    if a < 0.921875 {
        let u = z * z;
        var s = -0.00058595865;
        s = fma(s, u, 0.0049624364);
        s = fma(s, u, -0.026740445);
        s = fma(s, u, 0.11280843);
        s = fma(s, u, -0.37612346);
        s = fma(s, u, 1.1283791);
        return z * s;
    }
    let ac = min(a, 4.0);
    let t = ac - 2.0;
    var q = 0.00011706049;
    q = fma(q, t, -0.0001912511);
    q = fma(q, t, 0.000489432);
    q = fma(q, t, -0.0018755471);
    q = fma(q, t, 0.005477356);
    q = fma(q, t, -0.015436808);
    q = fma(q, t, 0.04180245);
    q = fma(q, t, -0.10679812);
    q = fma(q, t, 0.25539556);
    let r = 1.0 - exp(-(ac * ac)) * q;
    return select(r, -r, z < 0.0);
}

// tanh: z + z^3 P(z^2) below |z| = 0.625, else 1 - 2 / (e^{2|z|} + 1) with |z| clamped to 10.
fn tanh_f32(z: f32) -> f32 {
    if z != z {
        return z;
    }
    let a = abs(z);
    if a < 0.625 {
        let u = z * z;
        var s = -5.70498872745e-3;
        s = fma(s, u, 2.06390887954e-2);
        s = fma(s, u, -5.37397155531e-2);
        s = fma(s, u, 1.33314422036e-1);
        s = fma(s, u, -3.33332819422e-1);
        return fma(z * u, s, z);
    }
    let t = 1.0 - 2.0 / (exp(2.0 * min(a, 10.0)) + 1.0);
    return select(t, -t, z < 0.0);
}

// 1 / (1 + e^{-z}), the exponent clamped below overflow.
fn sigmoid_f32(z: f32) -> f32 {
    return 1.0 / (1.0 + exp(min(-z, 88.0)));
}

fn gelu_of(v: f32, kind: u32) -> f32 {
    switch kind {
        case 0u: {
            return 0.5 * v * (1.0 + erf_f32(v * FRAC_1_SQRT_2));
        }
        case 1u: {
            let u = SQRT_2_OVER_PI * fma(GELU_A * v, v * v, v);
            return v * sigmoid_f32(2.0 * u);
        }
        default: {
            return v * sigmoid_f32(1.702 * v);
        }
    }
}

fn gelu_grad_of(v: f32, kind: u32) -> f32 {
    switch kind {
        case 0u: {
            let cdf = fma(0.5, erf_f32(v * FRAC_1_SQRT_2), 0.5);
            let pdf = INV_SQRT_2PI * exp(-0.5 * v * v);
            return fma(v, pdf, cdf);
        }
        case 1u: {
            let v2 = v * v;
            let t = tanh_f32(SQRT_2_OVER_PI * fma(GELU_A * v, v2, v));
            let du = SQRT_2_OVER_PI * fma(3.0 * GELU_A, v2, 1.0);
            return fma(0.5 * v * (1.0 - t * t), du, fma(0.5, t, 0.5));
        }
        default: {
            let s = sigmoid_f32(1.702 * v);
            return fma(1.702 * v * s, 1.0 - s, s);
        }
    }
}

// out[i] = GELU(x[i]) for the kind in params word 1.
@compute @workgroup_size(WG)
fn gelu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = p[0];
    let kind = p[1];
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        out[i] = T(gelu_of(f32(x[strided_index(2u, i)]), kind));
    }
}

// out[i] = d_out[i] * GELU'(x[i]).
@compute @workgroup_size(WG)
fn gelu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = p[0];
    let kind = p[1];
    let gview = 2u + view_words(2u);
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        let v = f32(x[strided_index(2u, i)]);
        let g = f32(d_out[strided_index(gview, i)]);
        out[i] = T(g * gelu_grad_of(v, kind));
    }
}
