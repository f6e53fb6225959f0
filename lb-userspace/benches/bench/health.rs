//! `health.cpu_10000.share`: the CPU the health checkers take for 10,000 TCP-checked
//! backends at a 1 s interval, as a share of one core (the checkers' runtime thread, as
//! the daemon runs them; `health.cpu_10000.process_share`: the whole process, the
//! loopback listeners that play the backends included). Method: `tests/common/scale.rs`
//! (a private network namespace, listeners on loopback standing for the backends; nothing
//! leaves it); each round waits for every backend to be up, then measures a window.

use std::time::Duration;

use super::{
    common::scale::{run, ScaleOptions},
    figure::{Figure, Settings},
};

pub fn figures(s: &Settings, figures: &mut Vec<Figure>) {
    let (backends, rounds, window) = if s.quick {
        (500, 1, Duration::from_secs(1))
    } else {
        (10_000, 3, Duration::from_secs(3))
    };
    let name = if s.quick { "500" } else { "10000" };
    let mut checkers = Figure::new(&format!("health.cpu_{name}.share"), "core");
    let mut process = Figure::new(&format!("health.cpu_{name}.process_share"), "core");
    for _ in 0..rounds {
        let options = ScaleOptions {
            backends,
            measure: window,
            ..ScaleOptions::default()
        };
        let report = run(&options).expect("health-check scale run");
        assert_eq!(report.up, backends, "every backend must be up: {report}");
        println!(
            "health: {backends} backends, {:.0} checks/s, {} failed",
            report.attempts_per_second(),
            report.failed_attempts
        );
        checkers.samples.push(report.checker_cpu_share());
        process.samples.push(report.process_cpu_share());
    }
    figures.push(checkers);
    figures.push(process);
}
