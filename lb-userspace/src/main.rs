use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use bascule::{
    cli::{self, ApiClient, Failure, DEFAULT_API},
    control::{config_path, load_config},
    serve::{daemon, decap},
};

#[derive(Parser)]
#[command(
    name = "bascule",
    version = VERSION,
    about = "Layer-4 load balancer and failover daemon (XDP)",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The package's version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("BASCULE_GIT_COMMIT"),
    ")"
);

const AFTER_HELP: &str = "\
Environment:
  BASCULE_API    the daemon's API for the client commands, as --api
  BASCULE_TOKEN  the API bearer token, when no --token-file is given
  BASCULE_LOG    log filter of the daemon: error, warn, info (default), debug, trace

Exit codes: 0 done, 1 refused or failed, 2 bad command line, 3 daemon unreachable, 4 token needed.";

/// How to reach the daemon's API.
#[derive(Args)]
struct ApiArgs {
    /// The daemon's API (its http.listen).
    #[arg(long, env = "BASCULE_API", default_value = DEFAULT_API, global = true)]
    api: String,
    /// File holding the API bearer token (else the environment's BASCULE_TOKEN).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

impl ApiArgs {
    fn client(&self) -> Result<ApiClient, Failure> {
        ApiClient::new(&self.api, self.token_file.as_deref())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: attach the datapath and balance the configured services.
    Run {
        /// Configuration file [default: /etc/bascule/bascule.yaml].
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// On SIGTERM/SIGINT, leave the datapath forwarding (pinned in /sys/fs/bpf/bascule);
        /// the next `bascule run` adopts it without losing a flow. Without it, a stop
        /// removes everything the daemon created.
        #[arg(long)]
        keep_datapath: bool,
    },
    /// Validate a configuration and print the Maglev table digest of each service
    /// (equal digests on two nodes mean they send every flow to the same backend).
    Check {
        /// Configuration file [default: /etc/bascule/bascule.yaml].
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Skip the checks against this node (interfaces exist, VIPs reachable): for a
        /// file meant for another node.
        #[arg(long)]
        no_host: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Services, backends, weights, health, connections, rates and VRRP state, like
    /// `ipvsadm -L -n --stats`.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Which backend a flow goes to, and why (connection table or scheduler).
    Simulate {
        /// Client address, IP:PORT ([IPV6]:PORT).
        #[arg(long)]
        src: SocketAddr,
        /// Virtual service address, VIP:PORT.
        #[arg(long)]
        dst: SocketAddr,
        /// The flow's protocol.
        #[arg(long, value_enum, default_value_t = Proto::Tcp)]
        proto: Proto,
        /// Answer from this config file alone, without asking a daemon (no connection
        /// table; every backend reachable).
        #[arg(short, long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop sending new flows to a backend (weight 0 at runtime); established flows stay.
    Drain {
        /// ADDR, ADDR:PORT, [IPV6]:PORT or SERVICE/BACKEND.
        backend: String,
        /// Only in this service (default: every service that has the backend).
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Set a backend's weight at runtime (0..65535), or `reset` to the file's weight.
    Weight {
        /// ADDR, ADDR:PORT, [IPV6]:PORT or SERVICE/BACKEND.
        backend: String,
        /// A weight, or `reset`.
        weight: String,
        /// Only in this service (default: every service that has the backend).
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Withdraw every VIP this node announces (`announce:`); the datapath keeps forwarding
    /// what still arrives, so no connection is reset.
    DrainNode {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Announce again the VIPs this node should announce (after `drain-node`).
    UndrainNode {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Make the daemon reload its configuration file (like SIGHUP), and report the result.
    Reload {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Backend side of `tun` forwarding: strip bascule's tunnel headers on INTERFACE's
    /// ingress for the VIPs this host holds (by default the non-loopback addresses on lo).
    Decap {
        /// The backend's interface that receives the tunnelled packets.
        #[arg(short, long)]
        interface: String,
        /// A VIP to decapsulate for (repeatable); overrides the addresses found on lo.
        #[arg(long = "vip")]
        vips: Vec<IpAddr>,
    },
    /// Convert a keepalived.conf (and the files it includes) into bascule YAML.
    ///
    /// Every statement not mapped, or only approximated, is listed on standard error as
    /// FILE:LINE: statement: why. Exit status 0 when the YAML is written, 1 when the input
    /// cannot be read or parsed.
    ImportKeepalived {
        /// The keepalived configuration file.
        file: PathBuf,
        /// Write the YAML to OUT [default: standard output].
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell) on
    /// standard output.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on standard output.
    #[command(hide = true)]
    Manpage,
}

/// A flow's protocol, for `simulate`.
#[derive(Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// Logs to stderr, filtered by `BASCULE_LOG`; without a time of their own when the
/// journal reads them (it stamps every line).
fn init_logs() {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BASCULE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if bascule::util::systemd::stderr_is_journal() {
        logs.without_time().init();
    } else {
        logs.init();
    }
}

fn main() -> ExitCode {
    init_logs();
    let cli = Cli::parse();
    let outcome: Result<(), Failure> = match cli.command {
        Command::Run {
            config,
            keep_datapath,
        } => daemon::run(&config_path(&config), keep_datapath).map_err(failed),
        Command::Check {
            config,
            no_host,
            json,
        } => cli::check(&config_path(&config), !no_host, json),
        Command::Decap { interface, vips } => decap::run(&interface, &vips).map_err(failed),
        Command::Status { api } => api.client().and_then(|c| cli::status(&c, api.json)),
        Command::Simulate {
            src,
            dst,
            proto,
            config: Some(path),
            api,
        } => load_config(&path)
            .map_err(failed)
            .and_then(|c| cli::simulate_offline(&c, src, dst, proto.as_str(), api.json)),
        Command::Simulate {
            src,
            dst,
            proto,
            config: None,
            api,
        } => api
            .client()
            .and_then(|c| cli::simulate(&c, src, dst, proto.as_str(), api.json)),
        Command::Drain {
            backend,
            service,
            api,
        } => api
            .client()
            .and_then(|c| cli::set_weight(&c, &backend, service.as_deref(), Some(0), api.json)),
        Command::Weight {
            backend,
            weight,
            service,
            api,
        } => parse_weight(&weight).and_then(|w| {
            api.client()
                .and_then(|c| cli::set_weight(&c, &backend, service.as_deref(), w, api.json))
        }),
        Command::Reload { api } => api.client().and_then(|c| cli::reload(&c, api.json)),
        Command::DrainNode { api } => api
            .client()
            .and_then(|c| cli::drain_node(&c, true, api.json)),
        Command::UndrainNode { api } => api
            .client()
            .and_then(|c| cli::drain_node(&c, false, api.json)),
        Command::ImportKeepalived { file, output } => {
            bascule::keepalived::command(&file, output.as_deref()).map_err(|message| Failure {
                code: cli::EXIT_FAILED,
                message,
            })
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "bascule",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Manpage => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(|e| failed(e.into())),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("error: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

fn failed(e: anyhow::Error) -> Failure {
    Failure {
        code: cli::EXIT_FAILED,
        message: format!("{e:#}"),
    }
}

fn parse_weight(s: &str) -> Result<Option<u32>, Failure> {
    if s == "reset" {
        return Ok(None);
    }
    match s.parse::<u32>() {
        Ok(w) if w <= 65535 => Ok(Some(w)),
        _ => Err(Failure {
            code: 2,
            message: format!("weight \"{s}\": expected 0..65535 or reset"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// `--help` explains every command and every option (the generated `--help` and
    /// `--version` flags aside).
    #[test]
    fn every_command_and_option_has_help_text() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        let mut missing = Vec::new();
        for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_about().is_none() {
                missing.push(sub.get_name().to_string());
            }
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                let generated = matches!(arg.get_id().as_str(), "help" | "version");
                if !generated && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{} {}", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }

    /// The environment variables and the default configuration path are in the help.
    #[test]
    fn the_help_names_the_environment_and_the_default_file() {
        let help = Cli::command().render_long_help().to_string();
        for name in ["BASCULE_API", "BASCULE_TOKEN", "BASCULE_LOG"] {
            assert!(help.contains(name), "{name} missing from --help:\n{help}");
        }
        let mut cli = Cli::command();
        for sub in ["run", "check"] {
            let help = cli
                .find_subcommand_mut(sub)
                .expect("the subcommand")
                .render_long_help()
                .to_string();
            assert!(
                help.contains("/etc/bascule/bascule.yaml"),
                "{sub} --help does not name the default file:\n{help}"
            );
        }
    }
}
