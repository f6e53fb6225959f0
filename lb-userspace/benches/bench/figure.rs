//! Shared by the benchmark's modules: one figure is a named series of samples (one per
//! round) with an optional baseline figure its ratio is taken against.

pub struct Settings {
    pub rounds: usize,
    pub runs: u32,
    pub quick: bool,
    /// `--baseline OBJECT`: another build of the XDP object, measured beside this one
    /// (the `xdp` group).
    pub baseline: Option<std::path::PathBuf>,
}

#[derive(Default)]
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    pub samples: Vec<f64>,
    /// The figure this one is compared with (same run); `report` prints value / baseline.
    pub baseline: Option<String>,
}

impl Figure {
    pub fn new(name: &str, unit: &'static str) -> Self {
        Figure {
            name: name.into(),
            unit,
            ..Default::default()
        }
    }
    pub fn median(&self) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        s[s.len() / 2]
    }
}

/// A group of figures that could not run on this machine: something it needs (live frames,
/// a peer program) was refused or is missing. The other groups still run; `results.json`
/// records the group and the reason instead of its figures.
pub struct Unavailable {
    pub group: &'static str,
    pub reason: String,
}

/// What a group's run gives: `Err(reason)` when a requirement it checks before measuring
/// anything is not met on this machine.
pub type GroupResult = Result<(), String>;

/// `BASCULE_BENCH_REFUSE=live_frames,haproxy`: the suite acts as if this machine refused
/// those requirements, so that a test can show it carrying on without them.
pub fn refused_on_purpose(requirement: &str) -> GroupResult {
    let refused = std::env::var("BASCULE_BENCH_REFUSE").unwrap_or_default();
    if refused.split(',').any(|r| r.trim() == requirement) {
        return Err(format!(
            "{requirement} refused on purpose (BASCULE_BENCH_REFUSE={refused})"
        ));
    }
    Ok(())
}

/// An error and its sources on one line, as a group's reason.
pub fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace('\n', " ")
}
