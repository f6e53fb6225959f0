//! The error every configuration problem is reported as, `FILE:LINE:COLUMN: message`.

use std::fmt;

use super::yaml::Pos;

/// A configuration error with its position: `FILE:LINE:COLUMN: message`.
/// `line` and `column` are 1-based; 0 when there is no position (e.g. the file cannot be read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.file.is_empty(), self.line) {
            (true, 0) => write!(f, "{}", self.message),
            (false, 0) => write!(f, "{}: {}", self.file, self.message),
            _ => write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

pub(super) fn cx_error(file: &str, pos: Pos, message: &str) -> ConfigError {
    ConfigError {
        file: file.to_owned(),
        line: pos.line as usize,
        column: pos.column as usize,
        message: message.to_owned(),
    }
}
