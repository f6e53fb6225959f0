//! Small helpers every layer may use.
pub mod cores;
