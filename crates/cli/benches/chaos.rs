//! The fault-injection suite, full run: `cargo bench -p vigil --bench chaos` (FAULTS=300 by
//! default; SEED=… replays a run). Prints the table of faults and violations. Needs root.

#[path = "../tests/chaos_harness/mod.rs"]
mod harness;
#[path = "../tests/support/mod.rs"]
mod support;

fn main() {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
    let faults = std::env::var("FAULTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let started = std::time::Instant::now();
    let out = harness::run(seed, faults);
    println!("{}", out.table());
    println!("took {:.0} s", started.elapsed().as_secs_f64());
    if !out.violations.is_empty() {
        std::process::exit(1);
    }
}
