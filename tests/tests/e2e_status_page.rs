//! The live status page (`GET /` on the API listener) in headless Chromium, against a
//! daemon in a lab: it renders the lab's services and backends, the last reload (refused
//! here), and a backend whose server stops shows as down within a few seconds (read from
//! the DOM Chromium dumps).
//! A screenshot is kept as a test artefact: `target/status-page/status-page.png`. The
//! binary comes from `BASCULE_BIN`; Chromium is Debian's (`cargo xtask setup`).

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use bascule_tests::{
    bascule_bin, require_root,
    topology::{vip4, API_PORT},
    Forwarding, Host, Topology,
};

const CHROMIUM: &str = "/usr/bin/chromium";
/// How long a backend's check takes to call it down (interval x fall + timeout: 1 s), plus
/// the page's refresh (1.5 s) and the Chromium runs that look (2 to 3 s each here), with
/// room for a loaded machine. Measured: 3.8 to 6.5 s.
const DOWN_WITHIN: Duration = Duration::from_secs(15);

/// The lab's config with a TCP health check on both services, fast enough to see a
/// backend go down in about a second.
fn config(topo: &Topology) -> String {
    topo.lb_config(Forwarding::Dr).replace(
        "    backends:\n",
        "    health_check:\n      type: tcp\n      interval: 500ms\n      timeout: 500ms\n      \
         rise: 1\n      fall: 1\n    backends:\n",
    )
}

/// Chromium, headless, in the LB's namespace, on the page; `what` is `--dump-dom` or
/// `--screenshot=PATH`. Returns what it printed on stdout.
fn chromium(topo: &Topology, lb: &Host, what: &str, budget_ms: u32) -> String {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let profile = topo.lab.dir().join(format!(
        "chromium-profile-{}",
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&profile);
    std::fs::create_dir_all(&profile).unwrap();
    let url = format!("http://127.0.0.1:{API_PORT}/");
    let budget = format!("--virtual-time-budget={budget_ms}");
    let user_data = format!("--user-data-dir={}", profile.display());
    let out = topo
        .lab
        .exec(
            &lb.netns,
            &[
                "timeout",
                "60",
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1280,1100",
                &user_data,
                &budget,
                what,
                &url,
            ],
        )
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium {what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `data-health` of the backend row labelled `label` in a dumped DOM.
fn backend_health(dom: &str, label: &str) -> Option<String> {
    let at = dom.find(&format!("data-backend=\"{label}\""))?;
    let tag_end = at + dom[at..].find('>')?;
    let tag = &dom[at..tag_end];
    let value = tag.split("data-health=\"").nth(1)?;
    Some(value[..value.find('"')?].to_string())
}

fn artefact_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/status-page")
        .to_path_buf()
}

#[test]
fn the_status_page_shows_services_and_a_backend_going_down() {
    require_root();
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run `cargo xtask setup` (Debian's chromium)"
    );
    let topo = Topology::standard("statuspage").expect("build the lab");
    let lb = &topo.lbs[0];
    let mut servers = topo.start_backend_servers().expect("backend servers");
    let daemon = topo
        .serve(&bascule_bin(), lb, "status.yaml", &config(&topo), vip4())
        .expect("start bascule");

    // Every backend up: the page lists both services and their four backends.
    let labels = [
        "10.111.0.11:80",
        "10.111.0.12:80",
        "[fd00:111::11]:80",
        "[fd00:111::12]:80",
    ];
    let dom = chromium(&topo, lb, "--dump-dom", 5000);
    for service in ["web", "web6"] {
        assert!(
            dom.contains(&format!("data-service=\"{service}\"")),
            "service {service} is not on the page:\n{dom}"
        );
    }
    for label in labels {
        assert_eq!(
            backend_health(&dom, label).as_deref(),
            Some("up"),
            "backend {label} on the page:\n{dom}\nlog:\n{}",
            daemon.log_text()
        );
    }

    // A refused reload, which the page shows as the last reload.
    let path = topo.lab.dir().join("status.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("weight: 1\n", "weight: 70000\n", 1)).unwrap();
    let (code, body) = topo
        .api(lb, "POST", "/api/v1/reload", None)
        .expect("POST /api/v1/reload");
    assert_eq!(code, 422, "{body}");

    // b1's server stops: its rows turn down, the others stay up.
    let stopped = Instant::now();
    drop(servers.remove(0));
    let dom = loop {
        let dom = chromium(&topo, lb, "--dump-dom", 3000);
        let b1_down = ["10.111.0.11:80", "[fd00:111::11]:80"]
            .iter()
            .all(|l| backend_health(&dom, l).as_deref() == Some("down"));
        if b1_down {
            break dom;
        }
        assert!(
            stopped.elapsed() < DOWN_WITHIN,
            "b1 is not down on the page {:?} after its server stopped:\n{dom}",
            stopped.elapsed()
        );
    };
    println!(
        "b1 shown down {:?} after its server stopped",
        stopped.elapsed()
    );
    for label in ["10.111.0.12:80", "[fd00:111::12]:80"] {
        assert_eq!(
            backend_health(&dom, label).as_deref(),
            Some("up"),
            "{label}"
        );
    }
    assert!(
        dom.contains("data-reload=\"refused\"") && dom.contains("70000 is out of range"),
        "the refused reload is not on the page:\n{dom}"
    );

    // The screenshot, kept, taken while the client sends requests (the charts move).
    let traffic_until = Instant::now() + Duration::from_secs(12);
    let client = std::thread::scope(|s| {
        let traffic = s.spawn(|| {
            let mut answered = 0;
            while Instant::now() < traffic_until {
                answered += usize::from(topo.get(vip4(), Duration::from_millis(500)).is_ok());
                std::thread::sleep(Duration::from_millis(20));
            }
            answered
        });
        std::thread::sleep(Duration::from_secs(5));
        screenshot(&topo, lb);
        traffic.join().unwrap()
    });
    assert!(client > 0, "no request answered through the VIP");
}

fn screenshot(topo: &Topology, lb: &Host) {
    let dir = artefact_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("status-page.png");
    let _ = std::fs::remove_file(&png);
    chromium(topo, lb, &format!("--screenshot={}", png.display()), 6000);
    let bytes = std::fs::read(&png).expect("the screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "{} is not a page's PNG ({} bytes)",
        png.display(),
        bytes.len()
    );
    println!("screenshot: {}", png.display());
}
