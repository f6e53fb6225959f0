//! `cargo xtask`: every developer workflow of bascule, so that nothing needs a shell script
//! to remember. Cargo commands run from the workspace root; the daemon (`run`) runs from the
//! caller's directory so that relative config paths work.

mod baseline;
mod commits;
mod demo;
mod demo_scale_out;
#[cfg(test)]
mod doclinks;
mod fuzz;
mod package;
mod setup;

use std::{
    env,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup                       install what this machine lacks (nightly rust-src, bpf-linker 0.10.4,
                              Debian packages, bpffs at /sys/fs/bpf); safe to run again
  build [--release]           build the bascule binary (its build script builds and embeds the eBPF object)
  run [--release] -- ARGS...  build, then run target/{debug,release}/bascule ARGS...
  test                        commit subjects, fmt, prerequisites, clippy (the eBPF crate too), build,
                              every test including privileged ones (root)
  demo [ARGS...]              namespace-lab demo: spread over backends, then failover (root);
                              --scale-out: three LB nodes behind a BIRD router (BGP, ECMP)
  package [--debug]           Debian package target/debian/bascule_<version>_<arch>.deb
  package --install-test      build it (debug), install it here, check it, purge it (root)
  bench [--quick] [--only G]  benchmark suite: table + target/bench/results.json (root);
                              G: xdp, veth, http, control, health, failover, ecmp
                              (comma-separated); --baseline REV: revision REV's XDP
                              object measured beside this build's (xdp group)";

/// Crates that are not built for the host: the eBPF crate is built by lb-userspace's build
/// script for the BPF target, with nightly.
const HOST_EXCLUDED: &[&str] = &["--exclude", "lb-ebpf"];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[String]) -> Result<()> {
    let Some((command, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    match command.as_str() {
        "setup" => {
            expect_no_args("setup", rest)?;
            setup::run()
        }
        "build" => {
            let profile = match rest {
                [] => Profile::Debug,
                [flag] if flag == "--release" => Profile::Release,
                _ => bail!(
                    "`cargo xtask build` takes only `--release`, got `{}`",
                    rest.join(" ")
                ),
            };
            let bin = build(profile)?;
            println!("built {}", bin.display());
            Ok(())
        }
        "run" => {
            let (profile, bascule_args) = split_run_args(rest);
            let bin = build(profile)?;
            let err = Command::new(&bin).args(bascule_args).exec();
            Err(err).with_context(|| format!("cannot run {}", bin.display()))
        }
        "test" => {
            expect_no_args("test", rest)?;
            test()
        }
        "demo" => demo::run(rest),
        "package" => package::run(rest),
        "bench" => {
            let mut quick = false;
            let mut only = None;
            let mut baseline = None;
            let mut args = rest.iter();
            while let Some(a) = args.next() {
                match (a.as_str(), args.clone().next()) {
                    ("--quick", _) => quick = true,
                    ("--only", Some(groups)) => {
                        only = Some(groups.clone());
                        args.next();
                    }
                    ("--baseline", Some(rev)) => {
                        baseline = Some(rev.clone());
                        args.next();
                    }
                    _ => bail!(
                        "`cargo xtask bench` takes `--quick`, `--only GROUP[,GROUP]` and `--baseline REV`, got `{}`",
                        rest.join(" ")
                    ),
                }
            }
            bench(quick, only.as_deref(), baseline.as_deref())
        }
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n{USAGE}"),
    }
}

fn expect_no_args(command: &str, args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!(
            "`cargo xtask {command}` takes no arguments, got `{}`",
            args.join(" ")
        );
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Profile {
    Debug,
    Release,
}

impl Profile {
    fn cargo_flags(self) -> &'static [&'static str] {
        match self {
            Profile::Debug => &[],
            Profile::Release => &["--release"],
        }
    }

    fn target_subdir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// `run [--release] [--] ARGS...`: everything after the optional `--release` and `--` is
/// bascule's.
fn split_run_args(args: &[String]) -> (Profile, &[String]) {
    let (profile, rest) = match args.split_first() {
        Some((flag, rest)) if flag == "--release" => (Profile::Release, rest),
        _ => (Profile::Debug, args),
    };
    match rest.split_first() {
        Some((separator, bascule_args)) if separator == "--" => (profile, bascule_args),
        _ => (profile, rest),
    }
}

/// Builds the bascule binary (lb-userspace; its build script builds and embeds the eBPF
/// object) and returns the binary's absolute path.
pub(crate) fn build(profile: Profile) -> Result<PathBuf> {
    setup::check_build_prerequisites()?;
    run_checked(
        cargo()
            .args(["build", "--package", "lb-userspace"])
            .args(profile.cargo_flags()),
    )?;
    let bin = target_dir()?.join(profile.target_subdir()).join("bascule");
    if !bin.is_file() {
        bail!("the build succeeded but {} is missing", bin.display());
    }
    Ok(bin)
}

type Step = (&'static str, fn() -> Result<()>);

fn test() -> Result<()> {
    if !setup::is_root() {
        bail!(
            "`cargo xtask test` runs privileged tests (BPF loading, network namespaces): \
             run it as root"
        );
    }
    let steps: &[Step] = &[
        (
            "commit subjects beyond origin/main: `area: summary`, at most 72 characters",
            || commits::check(workspace_root()),
        ),
        ("cargo fmt --all -- --check", || {
            run_checked(cargo().args(["fmt", "--all", "--", "--check"]))
        }),
        ("prerequisites: nightly rust-src, bpf-linker 0.10.4", || {
            setup::check_build_prerequisites()?;
            println!("ok   prerequisites present");
            Ok(())
        }),
        (
            "cargo clippy --workspace --exclude lb-ebpf --all-targets -- -D warnings",
            || {
                run_checked(
                    cargo()
                        .args(["clippy", "--workspace"])
                        .args(HOST_EXCLUDED)
                        .args(["--all-targets", "--", "-D", "warnings"]),
                )
            },
        ),
        (
            "cargo +nightly clippy -p lb-ebpf (bpfel-unknown-none) -- -D warnings",
            clippy_ebpf,
        ),
        (
            "promtool: deploy/prometheus scrape config and alert rules, rule tests",
            promtool,
        ),
        (
            "cargo +nightly fuzz run: each target's corpus, then 15 s of mutations",
            fuzz::smoke,
        ),
        (
            "cargo build -p lb-userspace, then cargo test --workspace --exclude lb-ebpf",
            build_and_test,
        ),
        (
            "cargo xtask package --debug, installed, checked and purged",
            package::install_test,
        ),
    ];
    let started = Instant::now();
    for (index, (name, step)) in steps.iter().enumerate() {
        println!("==> [{}/{}] {name}", index + 1, steps.len());
        step().with_context(|| {
            format!(
                "test: FAILED at step {}/{} ({name})",
                index + 1,
                steps.len()
            )
        })?;
    }
    println!(
        "test: all {} steps passed in {}s",
        steps.len(),
        started.elapsed().as_secs()
    );
    Ok(())
}

/// The eBPF crate under clippy, with the flags `lb-userspace/build.rs` builds it with
/// (`ebpf_cargo`), in its own target directory.
fn clippy_ebpf() -> Result<()> {
    let target = target_dir()?.join("ebpf-clippy");
    let mut cmd = ebpf_cargo("clippy", workspace_root(), &target, env::consts::ARCH);
    run_checked(cmd.args(["--", "-D", "warnings"]))
}

include!("../../lb-userspace/ebpf_cargo.rs");

/// The shipped Prometheus files: the scrape config and the alert rules are valid, and
/// every alert fires on the series written for it in `alerts.test.yml`.
fn promtool() -> Result<()> {
    let dir = workspace_root().join("deploy/prometheus");
    let promtool = |args: &[&str]| {
        run_checked(
            Command::new("promtool")
                .args(args)
                .current_dir(&dir)
                .env("NO_COLOR", "1"),
        )
    };
    promtool(&["check", "config", "scrape.yml"])?;
    promtool(&["check", "rules", "alerts.yml"])?;
    promtool(&["test", "rules", "alerts.test.yml"])
}

fn build_and_test() -> Result<()> {
    let bin = build(Profile::Debug)?;
    setup::ensure_bpffs()?;
    run_checked(
        cargo()
            .args(["test", "--workspace"])
            .args(HOST_EXCLUDED)
            .env("BASCULE_BIN", &bin),
    )?;
    // The benchmark suite's smoke mode: every figure is produced (not how fast), so the
    // suite cannot rot between benchmark runs.
    println!("==> benchmark smoke run (cargo xtask bench --quick, debug build)");
    run_checked(cargo().args([
        "test",
        "-p",
        "lb-userspace",
        "--bench",
        "bench",
        "--",
        "--quick",
    ]))?;
    // A kernel may refuse live frames (EPERM): the suite must then report the veth group
    // unavailable, with the reason, and still write every other group's figures. The xdp
    // group measures a baseline object beside this build's here (`--baseline`): this
    // build's own, as the build script left it.
    println!("==> benchmark smoke run with live frames refused on purpose (BASCULE_BENCH_REFUSE)");
    let object = baseline::newest_object(&target_dir()?.join("debug/build"))?;
    run_checked(
        cargo()
            .args(["test", "-p", "lb-userspace", "--bench", "bench", "--"])
            .args([
                "--quick",
                "--only",
                "xdp,veth",
                "--expect-unavailable",
                "veth",
                "--baseline",
            ])
            .arg(&object)
            .env("BASCULE_BENCH_REFUSE", "live_frames"),
    )
}

/// `cargo xtask bench [--quick]`: the benchmark suite, optimised build, as root.
fn bench(quick: bool, only: Option<&str>, baseline: Option<&str>) -> Result<()> {
    if !setup::is_root() {
        bail!("`cargo xtask bench` loads XDP programs and builds namespace labs: run it as root");
    }
    setup::check_build_prerequisites()?;
    setup::ensure_bpffs()?;
    let baseline = baseline.map(baseline::object).transpose()?;
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "lb-userspace", "--bench", "bench", "--"]);
    if quick {
        cmd.arg("--quick");
    }
    if let Some(groups) = only {
        cmd.args(["--only", groups]);
    }
    if let Some(object) = baseline {
        cmd.arg("--baseline").arg(object);
    }
    run_checked(&mut cmd)
}

/// The workspace root: xtask lives one level below it.
pub(crate) fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask's manifest directory has a parent")
}

/// The cargo that runs this xtask (env CARGO), working in the workspace root.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Where cargo puts its output, honouring CARGO_TARGET_DIR and `build.target-dir`.
pub(crate) fn target_dir() -> Result<PathBuf> {
    let metadata = output(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    json_string_field(&metadata, "target_directory")
        .map(PathBuf::from)
        .context("`cargo metadata` printed no target_directory")
}

/// The value of the first `"field":"..."` in compact JSON (cargo metadata's output), enough
/// for a path without having to pull in a JSON parser.
fn json_string_field(json: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\":\"");
    let start = json.find(&key)? + key.len();
    let mut value = String::new();
    let mut chars = json[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => value.push(chars.next()?),
            c => value.push(c),
        }
    }
    None
}

/// Runs a command with inherited stdio; a failure names the command and its exit status.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<()> {
    let shown = describe(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout; a failure carries the command's stderr.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let shown = describe(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8 output"))
}

/// The command as a user would type it: program name without its directory, then the args.
fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let name = program.file_name().unwrap_or(program.as_os_str());
    std::iter::once(name)
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| arg.to_string()).collect()
    }

    #[test]
    fn run_args_after_separator_belong_to_bascule() {
        let args = strings(&["--release", "--", "run", "-c", "x.yaml"]);
        let (profile, rest) = split_run_args(&args);
        assert_eq!(profile, Profile::Release);
        assert_eq!(rest, strings(&["run", "-c", "x.yaml"]));

        let args = strings(&["--", "check", "--release"]);
        let (profile, rest) = split_run_args(&args);
        assert_eq!(profile, Profile::Debug);
        assert_eq!(rest, strings(&["check", "--release"]));

        let args = strings(&["status"]);
        assert_eq!(split_run_args(&args), (Profile::Debug, &args[..]));
    }

    #[test]
    fn target_directory_is_read_from_cargo_metadata() {
        let json = r#"{"packages":[],"target_directory":"/a \"b\"\\c/target","version":1}"#;
        assert_eq!(
            json_string_field(json, "target_directory").as_deref(),
            Some(r#"/a "b"\c/target"#)
        );
        assert_eq!(json_string_field(json, "workspace_root"), None);
    }
}
