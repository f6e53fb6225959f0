//! Shared by the benchmark's modules: one figure is a named series of samples (one per
//! round) with an optional baseline figure its ratio is taken against.

pub struct Settings {
    pub rounds: usize,
    pub runs: u32,
    pub quick: bool,
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
