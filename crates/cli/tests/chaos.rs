//! A short seeded run of the fault-injection suite (`tests/chaos_harness`): about thirty
//! faults on three real agents, no violation allowed. The full run is
//! `cargo bench -p vigil --bench chaos`. Needs root (CI runs as root).

#[path = "chaos_harness/mod.rs"]
mod harness;
mod support;

#[test]
fn thirty_faults_break_no_promise() {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_202);
    let faults = std::env::var("FAULTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let out = harness::run(seed, faults);
    println!("{}", out.table());
    assert!(out.violations.is_empty(), "{}", out.table());
}
