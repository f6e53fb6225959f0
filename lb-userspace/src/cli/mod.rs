//! The commands that talk to a running daemon through its HTTP API (`status`, `simulate`,
//! `drain`, `weight`, `reload`), and `check`. Each prints for people, or JSON with
//! `--json`, and ends with an exit code scripts can test:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done (`simulate`: the flow reaches a backend) |
//! | 1 | refused or failed: bad config, unknown backend, no backend for the flow |
//! | 2 | wrong command line |
//! | 3 | the daemon cannot be reached |
//! | 4 | the daemon wants a (different) token |
//!
//! | module | what |
//! |---|---|
//! | `client` | [`ApiClient`]: one call to the daemon's API, its errors as exit codes |
//! | `commands` | `status`, `reload`, `simulate`, `weight`, `drain`, `drain-node`, `undrain-node` |
//! | `check` | `check` and `simulate -c`, from a file alone |
//! | [`status`] | a snapshot as the `bascule status` table (pure) |

use crate::control::SimulateAnswer;

mod check;
mod client;
mod commands;
pub mod status;

pub use check::{check, offline_plan, simulate_offline};
pub use client::ApiClient;
pub use commands::{drain_node, reload, set_weight, simulate, status};

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_UNREACHABLE: u8 = 3;
pub const EXIT_UNAUTHORIZED: u8 = 4;

/// Default API address (`http.listen`'s default).
pub const DEFAULT_API: &str = "http://127.0.0.1:9469";

/// A command's failure: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn failed(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_FAILED,
            message: message.into(),
        }
    }
}

pub type Outcome = Result<(), Failure>;

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

fn print_simulation(a: &SimulateAnswer, json: bool) -> Outcome {
    if json {
        print_json(a);
    } else {
        println!("{}", a.explanation);
    }
    if a.backend.is_some() || !a.candidates.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: EXIT_FAILED,
            message: String::new(),
        })
    }
}
