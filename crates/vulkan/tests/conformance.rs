//! The Vulkan backend against the CPU backend (the conformance suite), and the committed
//! SPIR-V against its GLSL sources.
//!
//! Without a Vulkan device these tests say so and pass, unless `HEARTH_REQUIRE_VULKAN=1`
//! (set by CI, which installs lavapipe): then a missing device is a failure.
use std::path::Path;

fn backend() -> Option<hearth_vulkan::Vulkan> {
    let required = std::env::var("HEARTH_REQUIRE_VULKAN").is_ok_and(|v| v == "1");
    match hearth_vulkan::Vulkan::new(0) {
        Ok(v) => Some(v),
        Err(e) if !required => {
            eprintln!("skipped: no Vulkan device ({e})");
            None
        }
        Err(e) => panic!("HEARTH_REQUIRE_VULKAN=1 but: {e}"),
    }
}

#[test]
fn every_op_agrees_with_the_cpu_backend() {
    if let Some(vk) = backend() {
        hearth_conformance::check(&vk);
    }
}

#[test]
fn every_matmul_kernel_agrees_with_the_cpu_backend() {
    use hearth_vulkan::MatmulKernel::*;
    for k in [Rows, Workgroup, Subgroup, Coop] {
        let Some(vk) = backend() else { return };
        if vk.matmul_kernel() == k {
            continue; // every_op_agrees_with_the_cpu_backend runs it
        }
        match vk.with_matmul_kernel(k) {
            Ok(vk) => {
                eprintln!("matmul kernel {k:?}");
                hearth_conformance::check(&vk);
            }
            Err(e) => eprintln!("matmul kernel {k:?} skipped: {e}"),
        }
    }
}

#[test]
fn devices_are_listed_with_their_limits() {
    if backend().is_some() {
        let d = hearth_vulkan::devices().unwrap();
        assert!(!d.is_empty());
        for i in &d {
            assert!(i.subgroup > 0 && i.max_alloc > 0, "{i:?}");
        }
    }
}

#[test]
fn a_device_that_does_not_exist_is_a_clear_error() {
    if backend().is_some() {
        let err = hearth_vulkan::Vulkan::new(1000)
            .err()
            .expect("no device 1000");
        assert!(
            err.to_string().contains("device 1000 does not exist"),
            "{err}"
        );
    }
}

#[test]
fn committed_spirv_is_fresh() {
    // needs glslangValidator (scripts/build_shaders.sh installs it from PyPI)
    if std::env::var("HEARTH_CHECK_SPIRV").is_ok_and(|v| v == "0") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::env::temp_dir().join(format!("hearth-spv-{}", std::process::id()));
    let st = std::process::Command::new("bash")
        .arg(root.join("scripts/build_shaders.sh"))
        .arg(&out)
        .status()
        .expect("running scripts/build_shaders.sh");
    assert!(st.success(), "scripts/build_shaders.sh failed");
    let committed = root.join("crates/vulkan/spv");
    let mut n = 0;
    for e in std::fs::read_dir(root.join("crates/vulkan/shaders")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "comp") {
            let name = format!("{}.spv", p.file_stem().unwrap().to_string_lossy());
            let fresh = std::fs::read(out.join(&name)).unwrap();
            let old = std::fs::read(committed.join(&name)).unwrap_or_else(|_| {
                panic!("{name} is not committed: run scripts/build_shaders.sh")
            });
            assert!(
                fresh == old,
                "{name} is stale: run scripts/build_shaders.sh"
            );
            n += 1;
        }
    }
    assert!(n > 0);
    let _ = std::fs::remove_dir_all(&out);
}
