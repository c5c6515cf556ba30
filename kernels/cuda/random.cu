// random.cu: seeded uniform and normal samples, counter based.
//
// What: out[i] for i < n, a function of (seed, i) only, so any launch shape gives the same
// values. It is the CPU backend's generator (crates/cpu/src/random.rs) computed in f64 on the
// device: SplitMix64's finaliser over the stream position gives 53 random bits.
// * uniform: low + (high - low) * u in f64, rounded once to the dtype (half types through
//   f32 rounded to odd, as the CPU); a value that rounds up to `high` becomes `low`, keeping
//   the interval half-open. The f64 operations use the `_rn` intrinsics (no fused
//   multiply-add), so uniform samples equal the CPU's bit for bit.
// * normal: Box-Muller on the pair (2p, 2p + 1); element i takes the cosine (even i) or the
//   sine (odd i) branch; mean + std * z rounded once. The device's f64 log, sin and cos may
//   differ from the host's by an ulp, so normal samples match the CPU's to rounding only.
//
// Shapes: a contiguous output of n elements. Launch: 1-D grid of 256-thread blocks,
// grid-stride loop, one element per thread and iteration.

#define GL_GOLDEN 0x9e3779b97f4a7c15ull

__device__ __forceinline__ gl_u64 gl_mix(gl_u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Uniform in [0, 1) with 53 random bits, for stream position i.
__device__ __forceinline__ double gl_unit(gl_u64 seed, gl_u64 i) {
    const gl_u64 bits = gl_mix(gl_mix(seed ^ GL_GOLDEN) + i * GL_GOLDEN);
    return (double)(bits >> 11) * (1.0 / 9007199254740992.0);
}

template <class E>
__device__ void uniform_impl(typename E::T* out, gl_u64 n, gl_u64 seed, double low, double high) {
    GL_GRID_STRIDE(i, n) {
        const double v = __dadd_rn(low, __dmul_rn(__dsub_rn(high, low), gl_unit(seed, i)));
        typename E::T t = E::from_f64(v);
        if (E::to_f64(t) >= high) {
            t = E::from_f64(low);
        }
        out[i] = t;
    }
}

template <class E>
__device__ void normal_impl(typename E::T* out, gl_u64 n, gl_u64 seed, double mean, double std) {
    const double two_pi = 6.283185307179586;  // 2 * std::f64::consts::PI, exactly
    GL_GRID_STRIDE(i, n) {
        const gl_u64 pair = i / 2;
        const double u1 = __dsub_rn(1.0, gl_unit(seed, 2 * pair));  // in (0, 1]
        const double u2 = gl_unit(seed, 2 * pair + 1);
        const double r = sqrt(__dmul_rn(-2.0, log(u1)));
        const double angle = __dmul_rn(two_pi, u2);
        const double z = (i % 2 == 0) ? __dmul_rn(r, cos(angle)) : __dmul_rn(r, sin(angle));
        out[i] = E::from_f64(__dadd_rn(mean, __dmul_rn(std, z)));
    }
}

#define GL_RANDOM(name, E)                                                                    \
    extern "C" __global__ void rand_uniform_##name(E::T* out, gl_u64 n, gl_u64 seed,          \
                                                   double low, double high) {                 \
        uniform_impl<E>(out, n, seed, low, high);                                             \
    }                                                                                         \
    extern "C" __global__ void rand_normal_##name(E::T* out, gl_u64 n, gl_u64 seed,           \
                                                  double mean, double std) {                  \
        normal_impl<E>(out, n, seed, mean, std);                                              \
    }

GL_RANDOM(f16, GlF16)
GL_RANDOM(bf16, GlBF16)
GL_RANDOM(f32, GlF32)
