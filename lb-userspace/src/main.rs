use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use bascule::{config::Config, daemon, plan};

#[derive(Parser)]
#[command(
    name = "bascule",
    version,
    about = "Layer-4 load balancer and failover daemon (XDP)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: attach the datapath and balance the configured services.
    Run {
        /// Configuration file (default /etc/bascule/bascule.yaml).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and print the Maglev table digest of each service
    /// (equal digests on two nodes mean they send every flow to the same backend).
    Check {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Backend side of `tun` forwarding: strip bascule's tunnel headers on INTERFACE's
    /// ingress for the VIPs this host holds (by default the non-loopback addresses on lo).
    Decap {
        #[arg(short, long)]
        interface: String,
        /// A VIP to decapsulate for (repeatable); overrides the addresses found on lo.
        #[arg(long = "vip")]
        vips: Vec<IpAddr>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BASCULE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => daemon::run(&daemon::config_path(&config)),
        Command::Check { config } => check(&daemon::config_path(&config)),
        Command::Decap { interface, vips } => daemon::decap(&interface, &vips),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let config: Config = daemon::load_config(path)?;
    let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
    println!(
        "{}: ok, {} service(s), {} backend(s)",
        path.display(),
        config.services.len(),
        backends
    );
    // Every dr backend counted as reachable: the digest depends on the config alone.
    let macs: plan::MacTable = config
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| (b.address, [0u8; 6])))
        .collect();
    let p = plan::plan(&config, &macs, plan::TunnelSources::default(), None)?;
    for svc in &p.services {
        println!(
            "service {}: maglev {} slots, digest {:016x}",
            svc.name,
            svc.table.len(),
            plan::table_digest(&p, svc)
        );
    }
    Ok(())
}
