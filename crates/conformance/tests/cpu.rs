//! The suite itself runs: the CPU backend against a second CPU backend passes every case and
//! skips none.
#[test]
fn the_cpu_backend_passes_every_case() {
    let cpu = hearth_cpu::Cpu::new(2).unwrap();
    let r = hearth_conformance::check(&cpu);
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    assert!(r.passed.len() >= 30, "{}", r.passed.len());
}
