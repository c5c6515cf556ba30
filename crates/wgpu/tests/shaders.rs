//! Every WGSL kernel, in every element-type variant the backend compiles it for, parses and
//! validates with naga (the shader compiler inside wgpu). Needs no adapter: this runs in
//! plain `cargo test` on any machine.
//!
//! Each kernel file lists its variants in a line `// variants (T/U): f32/f32 f16/f16 ...`;
//! the backend compiles only those (`kernel_variants`).

use glimpse_kernels::{WGSL, WGSL_COMMON};
use glimpse_wgpu::{Elem, kernel_variants};

#[test]
fn every_kernel_variant_validates() {
    assert!(!WGSL.is_empty());
    let mut checked = 0;
    for k in WGSL {
        for (t, u) in kernel_variants(k.source).unwrap() {
            let text = format!("{}{}\n{}", Elem::header(t, u), WGSL_COMMON, k.source);
            let module = naga::front::wgsl::parse_str(&text).unwrap_or_else(|e| {
                panic!(
                    "{} (T = {t:?}, U = {u:?}) does not parse:\n{}",
                    k.name,
                    e.emit_to_string(&text)
                )
            });
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::all(),
            )
            .validate(&module)
            .unwrap_or_else(|e| {
                panic!(
                    "{} (T = {t:?}, U = {u:?}) does not validate:\n{}",
                    k.name,
                    e.emit_to_string(&text)
                )
            });
            checked += 1;
        }
    }
    eprintln!("{checked} kernel variants validated");
}

#[test]
fn every_kernel_opens_with_what_it_computes() {
    for k in WGSL {
        let first = k.source.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("// {}:", k.name)),
            "{} must open with `// {}: <what it computes>`",
            k.name,
            k.name
        );
    }
}
