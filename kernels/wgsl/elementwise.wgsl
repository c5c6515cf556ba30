// elementwise.wgsl: the element-wise primitives: unary ops, binary ops, comparisons, where,
// casts between f32 / f16 / u32, and strided copies into a strided destination (concat).
//
// Shapes: every kernel walks n output elements in row-major order; the output is contiguous
// (copy_view excepted: it writes a strided view of its output). Inputs are strided views (any
// strides, zero strides for broadcasting) merged jointly by the backend, so that a contiguous
// input is one rank-1 view and `vidx` reads it without a div/mod walk.
//
// Arithmetic: T is the input element type and U the output element type (equal except for
// compare, where U is u32, and cast). Floats are computed in f32 and rounded once to the output
// type; an f16 output rounds to nearest even with overflow to infinity (`to_u`), exactly as the
// CPU backend (the `half` crate) rounds, rather than as a WGSL conversion may. NaN and infinity
// tests use the bits (`is_nan`), since drivers may assume floats are never NaN. The functions
// whose precision the Vulkan / Metal specs leave loose are written out here, good to a few ulps
// for every argument: tanh, erf and erfc (f32 polynomials), sin and cos (polynomials after a
// Payne-Hanek reduction of large arguments), exp (own argument reduction around the builtin).
// log, log2, exp2 and sqrt are the builtins, guarded at their special values; pow is exact by
// squaring for integer exponents up to 64 and exp2(e log2 x) otherwise (about |e log2 x| ulps).
//
// Entry points and params (p = binding 0; views are written by `Params::view`):
//   unary     out[i] = f(x[view(i)]).      n, op, a, b, c, d, x view (word 6).
//             op 0..18 are the float ops (table at `unary_f`; a, b are f32 parameters),
//             op 32..36 the u32 ones (table at `unary_u`).
//   binary    out[i] = f(x[va(i)], y[vb(i)]).  n, op, x view (word 2), y view.
//             op: 0 add, 1 sub, 2 mul, 3 div, 4 maximum, 5 minimum, 6 pow.
//   compare   out[i] = u32(x[va(i)] OP y[vb(i)]) (U = u32).  Params as binary;
//             op: 0 eq, 1 ne, 2 lt, 3 le, 4 gt, 5 ge (false for NaN, except ne).
//   where_cond out[i] = cond[vc(i)] != 0 ? on_true[vt(i)] : on_false[vf(i)] (bits copied).
//             n, cond view (word 1), true view, false view.
//   cast_to   out[i] = convert(x[view(i)]): floats round to nearest even (overflow to
//             infinity), float -> u32 truncates and saturates (NaN -> 0), u32 -> float rounds
//             to nearest even.  n, x view (word 1).
//   copy_view out[dview(i)] = x[sview(i)]: one part of a concatenation.  n, source view
//             (word 1), destination view (the part's place in the output).
//
// Launch: 1-D, WG threads per workgroup, any number of workgroups (grid-stride loops).
//
// variants (T/U): f32/f32 f16/f16 u32/u32 f32/u32 f16/u32 f32/f16 f16/f32 u32/f32 u32/f16

override WG: u32 = 256u;

@group(0) @binding(1) var<storage, read_write> out: array<U>;
@group(0) @binding(2) var<storage, read> xa: array<T>;
@group(0) @binding(3) var<storage, read> xb: array<T>;
// where_cond binds these instead of xa and xb.
@group(0) @binding(2) var<storage, read> cond: array<u32>;
@group(0) @binding(3) var<storage, read> on_true: array<T>;
@group(0) @binding(4) var<storage, read> on_false: array<T>;

// ------------------------------------------------------------------ shared helpers
// (vidx, T_FLOAT / U_FLOAT / U_HALF, is_nan, nan_f32, inf_f32, copysign and round_f16 are in
// common.wgsl.)

// An f32 result in the output type: rounded to nearest even for f16 (see round_f16).
fn to_u(y: f32) -> U {
    if (U_HALF) {
        return U(round_f16(y));
    }
    return U(y);
}

// ------------------------------------------------------------------ float math

// e^x: x = k ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, k ln2_hi exact), e^r by the
// builtin (accurate on a small argument), then scaled by 2^k; the builtin alone may lose
// |x| ulps in its own reduction.
fn exp_f(x: f32) -> f32 {
    if (is_nan(x)) {
        return x;
    }
    if (x >= 89.0) {
        return inf_f32();
    }
    if (x <= -104.0) {
        return 0.0;
    }
    let k = round(x * 1.4426950408889634);
    let r = (x - k * 0.693145751953125) - k * 1.4286068203094172e-6;
    return ldexp(exp(r), i32(k));
}

fn log_f(x: f32) -> f32 {
    if (is_nan(x) || x < 0.0) {
        return nan_f32();
    }
    if (x == 0.0) {
        return -inf_f32();
    }
    if (x > 3.4028234e38) {
        return x;
    }
    return log(x);
}

fn sqrt_f(x: f32) -> f32 {
    if (is_nan(x) || x < 0.0) {
        return nan_f32();
    }
    return sqrt(x);
}

// tanh: Cephes tanhf (odd polynomial below 0.625, 1 - 2 / (e^2|x| + 1) above); ~1 ulp.
fn tanh_f(x: f32) -> f32 {
    let z = abs(x);
    if (is_nan(x)) {
        return x;
    }
    if (z > 0.625) {
        let s = exp_f(2.0 * z);
        return copysign(1.0 - 2.0 / (s + 1.0), x);
    }
    let s = x * x;
    let q = ((((-5.70498872745e-3 * s + 2.06390887954e-2) * s - 5.37397155531e-2) * s
        + 1.33314422036e-1) * s - 3.33332819422e-1);
    return q * s * x + x;
}

// The bits of 2/pi after the point, for the argument reduction of large sines and cosines.
var<private> TWO_OVER_PI: array<u32, 11> = array<u32, 11>(
    0xA2F9836Eu, 0x4E441529u, 0xFC2757D1u, 0xF534DDC0u, 0xDB629599u, 0x3C439041u, 0xFE5163ABu,
    0xDEBBC561u, 0xB7246E3Au, 0x424DD2E0u, 0x06492EEAu,
);

// 32 bits of 2/pi from bit k (bit 1 is the first after the point; bits before it are 0).
fn two_over_pi_bits(k: i32) -> u32 {
    let j = k - 1;
    if (j <= -32) {
        return 0u;
    }
    if (j < 0) {
        return TWO_OVER_PI[0] >> u32(-j);
    }
    let q = u32(j) / 32u;
    let r = u32(j) % 32u;
    if (r == 0u) {
        return TWO_OVER_PI[q];
    }
    return (TWO_OVER_PI[q] << r) | (TWO_OVER_PI[q + 1u] >> (32u - r));
}

// a = |x| as q pi/2 + z, z in [-pi/4, pi/4].
struct Reduced {
    q: u32,
    z: f32,
}

// Payne-Hanek reduction of a >= 8192, exact to f32 precision for every finite a: a = m 2^e
// (m the 24-bit significand) times the 96 bits of 2/pi that matter (earlier bits make
// multiples of 4, later ones fall below the precision) in 32-bit integer arithmetic; the two
// bits above the binary point are the quadrant, the 62 below it the fraction.
fn reduce_large(a: f32) -> Reduced {
    let ia = bitcast<u32>(a);
    let m = (ia & 0x7fffffu) | 0x800000u;
    let k0 = i32((ia >> 23u) & 0xffu) - 151;
    let p2 = mul_wide(m, two_over_pi_bits(k0 + 64));
    let p1 = mul_wide(m, two_over_pi_bits(k0 + 32));
    let p0 = mul_wide(m, two_over_pi_bits(k0));
    // The product's words 0..2 (bit 94 is the ones bit of a * 2/pi).
    let r1 = p2.y + p1.x;
    let t = p1.y + p0.x + select(0u, 1u, r1 < p2.y);
    var q = (t >> 30u) & 3u;
    var hi = (t << 2u) | (r1 >> 30u);
    var lo = (r1 << 2u) | (p2.x >> 30u);
    // A fraction of 1/2 or more goes to the next quadrant, as fraction - 1.
    let neg = hi >= 0x80000000u;
    if (neg) {
        q = (q + 1u) & 3u;
        lo = ~lo + 1u;
        hi = ~hi + select(0u, 1u, lo == 0u);
    }
    let phi = f32(hi) * 2.3283064365386963e-10 + f32(lo) * 5.421010862427522e-20;
    let z = phi * 1.5707963267948966;
    return Reduced(q, select(z, -z, neg));
}

// sin (cos when want_cos), about 1 ulp of 1 for every finite x: |x| reduced by pi/2 (Cephes'
// three-part pi/4 reduction below 8192, Payne-Hanek above), then Cephes sinf / cosf
// polynomials on [-pi/4, pi/4].
fn sincos_f(x: f32, want_cos: bool) -> f32 {
    let a = abs(x);
    if (is_nan(x) || a > 3.4028234e38) {
        return nan_f32();
    }
    var r: Reduced;
    if (a < 8192.0) {
        var j = u32(a * 1.27323954473516);
        var y = f32(j);
        if ((j & 1u) == 1u) {
            j += 1u;
            y += 1.0;
        }
        r = Reduced((j >> 1u) & 3u,
            ((a - y * 0.78515625) - y * 2.4187564849853515625e-4) - y * 3.77489497744594108e-8);
    } else {
        r = reduce_large(a);
    }
    let z = r.z;
    let zz = z * z;
    let s = ((-1.9515295891e-4 * zz + 8.3321608736e-3) * zz - 1.6666654611e-1) * zz * z + z;
    let c = ((2.443315711809948e-5 * zz - 1.388731625493765e-3) * zz + 4.166664568298827e-2)
        * zz * zz - 0.5 * zz + 1.0;
    // Quadrants 0..3: sin(a) is s, c, -s, -c; cos(a) is c, -s, -c, s; sin is odd, cos even.
    if (want_cos) {
        let v = select(c, s, (r.q & 1u) == 1u);
        return select(v, -v, r.q == 1u || r.q == 2u);
    }
    let v = select(s, c, (r.q & 1u) == 1u);
    return select(v, -v, (r.q >= 2u) != (x < 0.0));
}

// erfc(t) for 1 <= t, about 2 ulps, where t^2 = c v^2 (c = 1 or 1/2) for an exact v:
// exp(-t^2) exp(R(t)), R a Chebyshev fit of log(erfc(t)) + t^2 on [1, 4] and on [4, 10.5]
// (erfc(10.5) is below the smallest f32). exp(-t^2) is taken as exp(-c vh^2) exp(-c (2 vh +
// vl) vl) with v = vh + vl and vh's low 12 significand bits clear, so that vh^2 is exact:
// rounding t or t^2 would cost about t^2 ulps.
fn erfc_tail(t: f32, v: f32, c: f32) -> f32 {
    let tc = min(t, 10.5);
    var r: f32;
    if (tc < 4.0) {
        let u = tc - 2.5;
        r = -3.834714142e-8;
        r = r * u - 6.614636861e-8;
        r = r * u + 1.829792757e-6;
        r = r * u - 1.297452581e-5;
        r = r * u + 7.696963264e-5;
        r = r * u - 4.207096483e-4;
        r = r * u + 2.165501739e-3;
        r = r * u - 1.085816384e-2;
        r = r * u + 5.610626367e-2;
        r = r * u - 3.526807407e-1;
        r = r * u - 1.556815273;
    } else {
        let u = tc - 7.25;
        r = 1.293834289e-10;
        r = r * u - 1.256748916e-9;
        r = r * u + 8.332011283e-9;
        r = r * u - 7.917338385e-8;
        r = r * u + 7.948616694e-7;
        r = r * u - 7.675993891e-6;
        r = r * u + 7.572294913e-5;
        r = r * u - 7.853369933e-4;
        r = r * u + 9.008796417e-3;
        r = r * u - 1.354236632e-1;
        r = r * u - 2.562662629;
    }
    let a = min(abs(v), 20.0);
    let vh = bitcast<f32>(bitcast<u32>(a) & 0xfffff000u);
    let vl = a - vh;
    return exp_f(-(vh * vh) * c) * exp_f(r - (2.0 * vh + vl) * vl * c);
}

// erf, about 2 ulps: x P(x^2) below 1 (P a Chebyshev fit of erf(x)/x, so tiny x keep their
// relative accuracy), 1 - erfc_tail(|x|) above.
fn erf_f(x: f32) -> f32 {
    let t = abs(x);
    if (is_nan(x)) {
        return x;
    }
    if (t < 1.0) {
        let s = x * x;
        var r = -9.667044571e-6;
        r = r * s + 1.126595903e-4;
        r = r * s - 8.484080406e-4;
        r = r * s + 5.221031808e-3;
        r = r * s - 2.686543073e-2;
        r = r * s + 1.128378250e-1;
        r = r * s - 3.761263847e-1;
        r = r * s + 1.128379167;
        return x * r;
    }
    return copysign(1.0 - erfc_tail(t, x, 1.0), x);
}

// GELU with erf, 0.5 x (1 + erf(x / sqrt 2)); on the negative tail 1 + erf(x / sqrt 2) is
// erfc(|x| / sqrt 2), taken directly rather than by cancellation.
fn gelu_erf_f(x: f32) -> f32 {
    let z = x * 0.70710678118654752;
    if (z <= -1.0) {
        return 0.5 * x * erfc_tail(-z, x, 0.5);
    }
    return 0.5 * x * (1.0 + erf_f(z));
}

// x^e by squaring (|e| a small integer): a few roundings instead of exp2(e log2 x).
fn powi_f(x: f32, e: u32) -> f32 {
    var r = 1.0;
    var b = x;
    var k = e;
    loop {
        if ((k & 1u) == 1u) {
            r *= b;
        }
        k >>= 1u;
        if (k == 0u) {
            break;
        }
        b *= b;
    }
    return r;
}

// x^e with the special cases of C's powf (the CPU backend's): x^0 = 1 and 1^e = 1 even for NaN,
// negative bases only for integer exponents, signed zeros and infinities for odd ones.
fn pow_f(x: f32, e: f32) -> f32 {
    if (e == 0.0 || x == 1.0) {
        return 1.0;
    }
    if (is_nan(x) || is_nan(e)) {
        return nan_f32();
    }
    let ae = abs(e);
    let e_int = ae > 3.4028234e38 || floor(e) == e;
    // Odd integers are below 2^24 (f32 has no odd integer beyond).
    let e_odd = e_int && ae < 16777216.0 && (u32(ae) & 1u) == 1u;
    if (e_int && ae <= 64.0) {
        let r = powi_f(x, u32(ae));
        return select(r, 1.0 / r, e < 0.0);
    }
    let ax = abs(x);
    let x_inf = ax > 3.4028234e38;
    if (x < 0.0 && !e_int && !x_inf) {
        return nan_f32();
    }
    var r: f32;
    if (ae > 3.4028234e38) {
        // e = +-inf: 1 for |x| = 1, else 0 or infinity by which side of 1 |x| is.
        if (ax == 1.0) {
            return 1.0;
        }
        r = select(0.0, inf_f32(), (ax > 1.0) == (e > 0.0));
    } else if (ax == 0.0) {
        r = select(inf_f32(), 0.0, e > 0.0);
    } else if (x_inf) {
        r = select(0.0, inf_f32(), e > 0.0);
    } else {
        r = exp2(e * log2(ax));
    }
    // Odd integer exponents keep the sign of x (of -0 and -inf too).
    return select(r, -r, e_odd && (bitcast<u32>(x) >> 31u) == 1u);
}

// ------------------------------------------------------------------ unary

// The float unary ops (codes as UnaryOp's variants in order). a and b: Affine (mul, add),
// Powf (exponent), Clamp (min, max).
fn unary_f(op: u32, x: f32, a: f32, b: f32) -> f32 {
    switch op {
        case 0u: { return -x; }
        case 1u: { return abs(x); }
        case 2u: { return exp_f(x); }
        case 3u: { return log_f(x); }
        case 4u: { return sqrt_f(x); }
        case 5u: { return x * x; }
        case 6u: { return 1.0 / x; }
        case 7u: { return tanh_f(x); }
        case 8u: { return sincos_f(x, false); }
        case 9u: { return sincos_f(x, true); }
        case 10u: { return erf_f(x); }
        case 11u: { return select(0.0, x, !is_nan(x) && x > 0.0); }
        case 12u: { return 1.0 / (1.0 + exp_f(-x)); }
        case 13u: { return x * a + b; }
        case 14u: { return pow_f(x, a); }
        case 15u: {
            // As the CPU: below min -> min, above max -> max, NaN stays.
            if (is_nan(x)) {
                return x;
            }
            if (x < a) {
                return a;
            }
            return select(x, b, x > b);
        }
        case 16u: { return gelu_erf_f(x); }
        case 17u: {
            // 0.5 x (1 + tanh u) = x / (1 + e^-2u): no cancellation on the negative tail.
            let u = 0.79788456080286536 * (x + 0.044715 * x * x * x);
            return x / (1.0 + exp_f(-2.0 * u));
        }
        default: { return x / (1.0 + exp_f(-(1.702 * x))); }
    }
}

// 64-bit helpers of the exact u32 affine map, (lo, hi) pairs.
fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    return vec2<u32>((p00 & 0xffffu) | (mid << 16u), a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u));
}

fn lt64(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y < b.y || (a.y == b.y && a.x < b.x);
}

// The u32 unary ops:
//   32 copy (abs, relu)   33 x * x (wrapping)
//   34 clamp as a table: x < a -> b, else x > c -> d, else x (the backend derives a..d from
//      the f64 bounds so that this equals the CPU's clamp in f64 then truncating cast)
//   35 affine with an integer mul, exactly: trunc(x mul + add) saturated, as +-x a +-(c, d)
//      + f where a = |mul|, (c, d) = |trunc(add)| as (low, high) words, f the fraction of add,
//      b = sign bits (1: mul < 0, 2: add < 0, 4: f < 0); the backend takes this path only
//      where the CPU's f64 rounding cannot move the result (see unary_u32_words)
//   36 affine with other parameters, in f32: sat(trunc(x * a + b)) with a, b as f32 bits
fn unary_u(op: u32, x: u32, a: u32, b: u32, c: u32, d: u32) -> u32 {
    switch op {
        case 33u: { return x * x; }
        case 34u: {
            if (x < a) {
                return b;
            }
            return select(x, d, x > c);
        }
        case 35u: {
            // R = +-P +-A with P = x |mul| and A = |trunc(add)|, 64-bit sign and magnitude.
            let pr = mul_wide(x, a);
            let ad = vec2<u32>(c, d);
            let pneg = (b & 1u) != 0u;
            let aneg = (b & 2u) != 0u;
            var r: vec2<u32>;
            if (pneg == aneg) {
                if (pneg) {
                    return 0u;
                }
                let lo = pr.x + ad.x;
                let hi = pr.y + ad.y + select(0u, 1u, lo < pr.x);
                if (hi < pr.y) {
                    return 0xffffffffu;
                }
                r = vec2<u32>(lo, hi);
            } else {
                // Opposite signs: the positive term minus the negative one, 0 when negative.
                let pos = select(pr, ad, pneg);
                let neg = select(ad, pr, pneg);
                if (lt64(pos, neg)) {
                    return 0u;
                }
                r = vec2<u32>(pos.x - neg.x, pos.y - neg.y - select(0u, 1u, pos.x < neg.x));
            }
            // A negative fraction of add takes a positive R down by one (truncation).
            if ((b & 4u) != 0u && (r.x | r.y) != 0u) {
                r = vec2<u32>(r.x - 1u, r.y - select(0u, 1u, r.x == 0u));
            }
            return select(r.x, 0xffffffffu, r.y != 0u);
        }
        case 36u: { return sat_u32(f32(x) * bitcast<f32>(a) + bitcast<f32>(b)); }
        default: { return x; }
    }
}

@compute @workgroup_size(WG)
fn unary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // out (n) = op(x view), elementwise.
    let n = p[0];
    let op = p[1];
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        let x = xa[vidx(6u, i)];
        if (T_FLOAT) {
            out[i] = to_u(unary_f(op, f32(x), pf(2u), pf(3u)));
        } else {
            out[i] = U(unary_u(op, u32(x), p[2], p[3], p[4], p[5]));
        }
    }
}

// ------------------------------------------------------------------ binary

// Maximum and minimum propagate NaN from either side, as the CPU's `a.is_nan() || a > b`.
fn binary_f(op: u32, x: f32, y: f32) -> f32 {
    switch op {
        case 0u: { return x + y; }
        case 1u: { return x - y; }
        case 2u: { return x * y; }
        case 3u: { return x / y; }
        case 4u: { return select(y, x, is_nan(x) || (!is_nan(y) && x > y)); }
        case 5u: { return select(y, x, is_nan(x) || (!is_nan(y) && x < y)); }
        default: { return pow_f(x, y); }
    }
}

// Wrapping u32 arithmetic; division by zero never gets here (the backend checks divisors).
fn binary_u(op: u32, x: u32, y: u32) -> u32 {
    switch op {
        case 0u: { return x + y; }
        case 1u: { return x - y; }
        case 2u: { return x * y; }
        case 3u: { return x / y; }
        case 4u: { return max(x, y); }
        case 5u: { return min(x, y); }
        default: {
            var r = 1u;
            var b = x;
            var k = y;
            loop {
                if (k == 0u) {
                    break;
                }
                if ((k & 1u) == 1u) {
                    r *= b;
                }
                b *= b;
                k >>= 1u;
            }
            return r;
        }
    }
}

@compute @workgroup_size(WG)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // out (n) = op(x view, y view); both views have the output's (merged) dims.
    let n = p[0];
    let op = p[1];
    let vb = 2u + view_words(2u);
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        let x = xa[vidx(2u, i)];
        let y = xb[vidx(vb, i)];
        if (T_FLOAT) {
            out[i] = to_u(binary_f(op, f32(x), f32(y)));
        } else {
            out[i] = U(binary_u(op, u32(x), u32(y)));
        }
    }
}

// Ordered comparisons (false when either side is NaN, ne true): floats compare in f32, u32
// exactly.
fn compare_f(op: u32, x: f32, y: f32) -> bool {
    if (is_nan(x) || is_nan(y)) {
        return op == 1u;
    }
    switch op {
        case 0u: { return x == y; }
        case 1u: { return x != y; }
        case 2u: { return x < y; }
        case 3u: { return x <= y; }
        case 4u: { return x > y; }
        default: { return x >= y; }
    }
}

fn compare_u(op: u32, x: u32, y: u32) -> bool {
    switch op {
        case 0u: { return x == y; }
        case 1u: { return x != y; }
        case 2u: { return x < y; }
        case 3u: { return x <= y; }
        case 4u: { return x > y; }
        default: { return x >= y; }
    }
}

@compute @workgroup_size(WG)
fn compare(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // out (n, u32) = x view OP y view.
    let n = p[0];
    let op = p[1];
    let vb = 2u + view_words(2u);
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        let x = xa[vidx(2u, i)];
        let y = xb[vidx(vb, i)];
        var r: bool;
        if (T_FLOAT) {
            r = compare_f(op, f32(x), f32(y));
        } else {
            r = compare_u(op, u32(x), u32(y));
        }
        out[i] = U(select(0u, 1u, r));
    }
}

@compute @workgroup_size(WG)
fn where_cond(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // out (n) = cond view != 0 ? true view : false view (T = U: the bits are copied).
    let n = p[0];
    let vt = 1u + view_words(1u);
    let vf = vt + view_words(vt);
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        if (cond[vidx(1u, i)] != 0u) {
            out[i] = U(on_true[vidx(vt, i)]);
        } else {
            out[i] = U(on_false[vidx(vf, i)]);
        }
    }
}

// ------------------------------------------------------------------ cast and copies

// Float to u32 as Rust's `as`: truncation toward zero, NaN and negatives to 0, saturation.
fn sat_u32(x: f32) -> u32 {
    if (is_nan(x) || x <= 0.0) {
        return 0u;
    }
    if (x >= 4294967296.0) {
        return 0xffffffffu;
    }
    return u32(x);
}

// u32 to f32 rounded to nearest even: both halves are exact in f32, so the sum rounds once.
fn u32_to_f32(x: u32) -> f32 {
    return f32(x >> 16u) * 65536.0 + f32(x & 0xffffu);
}

@compute @workgroup_size(WG)
fn cast_to(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // out (n, U) = x view converted from T.
    let n = p[0];
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        let x = xa[vidx(1u, i)];
        if (T_FLOAT && U_FLOAT) {
            out[i] = to_u(f32(x));
        } else if (T_FLOAT) {
            out[i] = U(sat_u32(f32(x)));
        } else {
            out[i] = to_u(u32_to_f32(u32(x)));
        }
    }
}

@compute @workgroup_size(WG)
fn copy_view(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // out[destination view] = x[source view], n elements (T = U).
    let n = p[0];
    let vd = 1u + view_words(1u);
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        out[vidx(vd, i)] = U(xa[vidx(1u, i)]);
    }
}
