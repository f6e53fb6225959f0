//! The datapath's time (`CLOCK_MONOTONIC_COARSE`, read by the program as `jiffies * tick +
//! offset`): calibrated at every load with the `bascule_clock` program, and read from
//! userspace to expire entries and report ages by the same clock.

use anyhow::{anyhow, Result};
use aya::{
    maps::Array,
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb_common::FlowTable;

use super::Datapath;

/// The program that reads the kernel's tick count and coarse clock together, run by
/// userspace to calibrate the datapath's clock (never attached).
const CLOCK_PROGRAM: &str = "bascule_clock";

/// The datapath's clock (`CLOCK_MONOTONIC_COARSE`, see `FlowTable::clock_ns`), seen from
/// userspace.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How far apart the two sets of readings are: ten ticks at HZ=250, so that a reading a
/// tick off is seen as such (see `FlowTable::tick_for_interval`).
const CALIBRATION_WINDOW: std::time::Duration = std::time::Duration::from_millis(40);
/// Measurements tried before the calibration gives up.
const CALIBRATION_TRIES: usize = 3;

impl Datapath {
    /// The datapath clock's tick and offset (`FlowTable::clock_ns`), from readings of the
    /// tick count and the coarse clock taken together by the `bascule_clock` program: the
    /// tick from how far the clock advanced per tick counted over
    /// [`CALIBRATION_WINDOW`], the offset from every reading.
    pub(super) fn calibrate_clock(&mut self) -> Result<(u64, u64)> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(CLOCK_PROGRAM)
            .ok_or_else(|| anyhow!("program {CLOCK_PROGRAM} missing from the object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        for _ in 0..CALIBRATION_TRIES {
            let mut readings = clock_readings(prog)?;
            let first = readings.last().copied();
            std::thread::sleep(CALIBRATION_WINDOW);
            let second = clock_readings(prog)?;
            let last = second.last().copied();
            readings.extend(second);
            let (Some((j1, ns1)), Some((j2, ns2))) = (first, last) else {
                continue;
            };
            let Some(tick) =
                FlowTable::tick_for_interval(ns2.wrapping_sub(ns1), j2.wrapping_sub(j1))
            else {
                continue;
            };
            let offset = FlowTable::clock_offset_for(tick, &readings)
                .ok_or_else(|| anyhow!("no reading of the clock"))?;
            return Ok((tick, offset));
        }
        Err(anyhow!(
            "the coarse clock did not advance by a kernel tick per tick counted in \
             {CALIBRATION_TRIES} measurements"
        ))
    }

    /// The datapath clock's tick in ns (`FlowTable::tick_ns`), 0 if it was not calibrated.
    pub fn clock_tick_ns(&mut self) -> Result<u64> {
        let m: Array<_, FlowTable> = Array::try_from(self.map("FLOW_TABLE")?)?;
        Ok(m.get(&0, 0)?.tick_ns)
    }
}

/// Up to eight readings of (tick count, coarse clock) by the `bascule_clock` program, each
/// kept only if the count did not change while it read the clock.
fn clock_readings(prog: &mut Xdp) -> Result<Vec<(u64, u64)>> {
    let mut readings = Vec::new();
    for _ in 0..8 {
        let mut out = [0u8; 64];
        prog.test_run(TestRunOptions {
            data_in: Some(&[0u8; 64]),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })?;
        let word = |i: usize| u64::from_ne_bytes(out[i * 8..i * 8 + 8].try_into().unwrap());
        if word(0) == word(2) {
            readings.push((word(0), word(1)));
        }
    }
    Ok(readings)
}
