// copy.wgsl: copying a strided view into a contiguous buffer (T is f32, f16 or u32).
//
// copy_strided: dst[i] = src[strided_index(view, i)] for i < n, dst contiguous.
//               Params: n, then the source view (at word 1).
//
// Launch: 1-D, WG threads per workgroup, any number of workgroups (grid-stride loops).
//
// variants (T/U): f32/f32 f16/f16 u32/u32

override WG: u32 = 256u;

@group(0) @binding(1) var<storage, read_write> dst: array<T>;
@group(0) @binding(2) var<storage, read> src: array<T>;

@compute @workgroup_size(WG)
fn copy_strided(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = p[0];
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        dst[i] = src[strided_index(1u, i)];
    }
}
