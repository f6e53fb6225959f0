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

impl Datapath {
    /// The datapath clock's tick and offset (`FlowTable::clock_ns`): the tick from the
    /// coarse clock's steps, watched for three ticks (12 ms at HZ=250), the offset from
    /// readings of the tick count and the clock by the `bascule_clock` program.
    pub(super) fn calibrate_clock(&mut self) -> Result<(u64, u64)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let (mut last, mut steps, mut step) = (monotonic_ns(), 0, u64::MAX);
        while steps < 3 {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the coarse clock did not advance three times in 1 s"
            );
            let now = monotonic_ns();
            if now != last {
                if steps > 0 {
                    step = step.min(now - last);
                }
                (last, steps) = (now, steps + 1);
            }
            std::hint::spin_loop();
        }
        let tick = FlowTable::tick_for_step(step)
            .ok_or_else(|| anyhow!("the coarse clock steps by {step} ns: not a kernel tick"))?;
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(CLOCK_PROGRAM)
            .ok_or_else(|| anyhow!("program {CLOCK_PROGRAM} missing from the object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()?;
        }
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
        let offset = FlowTable::clock_offset_for(tick, &readings)
            .ok_or_else(|| anyhow!("the tick count changed during every reading"))?;
        Ok((tick, offset))
    }

    /// The datapath clock's tick in ns (`FlowTable::tick_ns`), 0 if it was not calibrated.
    pub fn clock_tick_ns(&mut self) -> Result<u64> {
        let m: Array<_, FlowTable> = Array::try_from(self.map("FLOW_TABLE")?)?;
        Ok(m.get(&0, 0)?.tick_ns)
    }
}
