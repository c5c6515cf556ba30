// fill.wgsl: writes one 32-bit pattern to the first n words of a buffer. Every dtype is filled
// through its words: 32-bit dtypes directly, 16-bit dtypes with the half pattern in both halves
// of each word (buffers are whole words long, so a trailing half word is padding).
//
// fill: dst[i] = pattern for i < n. Params: n (words), pattern.
//
// Launch: 1-D, WG threads per workgroup, any number of workgroups (grid-stride loop).
//
// variants (T/U): u32/u32

override WG: u32 = 256u;

@group(0) @binding(1) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(WG)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = p[0];
    let pattern = p[1];
    for (var i = gid.x; i < n; i += nwg.x * WG) {
        dst[i] = pattern;
    }
}
