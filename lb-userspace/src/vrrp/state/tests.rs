use super::*;
use Action::*;

const SEC: Duration = Duration::from_secs(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn settings(priority: u8) -> Settings {
    Settings {
        version: Version::V3,
        priority,
        advert_interval: SEC,
        preempt: true,
        preempt_delay: Duration::ZERO,
        primary_address: "10.0.0.2".parse().unwrap(),
        garp_repeat: 3,
        garp_interval: ms(500),
        garp_refresh: Duration::ZERO,
    }
}

/// A machine and a fake clock.
struct Rig {
    m: Machine,
    t0: Instant,
    now: Instant,
}

impl Rig {
    fn new(s: Settings) -> Rig {
        let t0 = Instant::now();
        Rig {
            m: Machine::new(s),
            t0,
            now: t0,
        }
    }

    fn at(&mut self, offset: Duration) -> &mut Self {
        assert!(
            self.t0 + offset >= self.now,
            "the fake clock only moves forward"
        );
        self.now = self.t0 + offset;
        self
    }

    fn event(&mut self, e: Event) -> Vec<Action> {
        self.m.handle(self.now, e)
    }

    /// Advances to `offset`, firing timers in order as a runner would.
    fn run_until(&mut self, offset: Duration) -> Vec<Action> {
        let end = self.t0 + offset;
        let mut out = Vec::new();
        for _ in 0..10_000 {
            match self.m.next_deadline() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    out.extend(self.m.on_timer(self.now));
                }
                _ => break,
            }
        }
        self.now = end;
        out
    }

    fn advert(&mut self, source: &str, priority: u8) -> Vec<Action> {
        let r = Received {
            source: source.parse().unwrap(),
            priority,
            interval: SEC,
        };
        self.event(Event::Advert(r))
    }
}

fn t(from: State, to: State) -> Action {
    Transition { from, to }
}

/// Everything a node does on becoming Master with `settings(p)`.
fn becoming_master(p: u8, from: State) -> Vec<Action> {
    vec![
        AddAddresses,
        SendAdvert { priority: p },
        SendGarp,
        t(from, State::Master),
    ]
}

#[test]
fn intervals_follow_the_rfc() {
    let m = Machine::new(settings(100));
    assert_eq!(m.skew_time(), SEC * 156 / 256);
    assert_eq!(m.master_down_interval(), 3 * SEC + SEC * 156 / 256);
    let m = Machine::new(Settings {
        advert_interval: ms(100),
        ..settings(254)
    });
    assert_eq!(m.master_down_interval(), ms(300) + ms(100) * 2 / 256);
}

#[test]
fn startup_goes_to_backup_then_master_after_master_down_interval() {
    let mut r = Rig::new(settings(100));
    assert_eq!(
        r.event(Event::Startup),
        vec![t(State::Initialize, State::Backup)]
    );
    let mdi = r.m.master_down_interval();
    assert_eq!(r.m.next_deadline(), Some(r.t0 + mdi));
    assert_eq!(r.run_until(mdi - ms(1)), vec![]);
    assert_eq!(r.run_until(mdi), becoming_master(100, State::Backup));
    assert_eq!(r.m.master(), Some("10.0.0.2".parse().unwrap()));
}

#[test]
fn the_address_owner_starts_as_master() {
    let mut r = Rig::new(settings(255));
    assert_eq!(
        r.event(Event::Startup),
        becoming_master(255, State::Initialize)
    );
}

#[test]
fn master_advertises_every_interval_and_garps_as_configured() {
    let mut r = Rig::new(Settings {
        garp_refresh: SEC * 10,
        ..settings(255)
    });
    r.event(Event::Startup);
    // Burst of 3 (one at once, two 500 ms apart), adverts every second.
    assert_eq!(r.run_until(ms(500)), vec![SendGarp]);
    assert_eq!(
        r.run_until(ms(1000)),
        vec![SendAdvert { priority: 255 }, SendGarp]
    );
    assert_eq!(r.run_until(ms(2000)), vec![SendAdvert { priority: 255 }]);
    // Refresh: one more every 10 s after the last of the burst.
    let acts = r.run_until(ms(11_000));
    assert_eq!(
        acts.iter().filter(|a| **a == SendGarp).count(),
        1,
        "{acts:?}"
    );
    assert_eq!(acts.len(), 10, "9 adverts and a refresh: {acts:?}");
}

#[test]
fn backup_hears_a_higher_master_and_stays() {
    let mut r = Rig::new(settings(100));
    r.event(Event::Startup);
    for s in 1..=10 {
        r.at(SEC * s);
        assert_eq!(r.advert("10.0.0.3", 150), vec![]);
    }
    assert_eq!(r.m.master(), Some("10.0.0.3".parse().unwrap()));
    assert_eq!(
        r.run_until(SEC * 10 + r.m.master_down_interval() - ms(1)),
        vec![]
    );
    assert_eq!(r.m.state(), State::Backup);
    // The master dies: Master_Down_Interval after its last advert.
    let deadline = SEC * 10 + r.m.master_down_interval();
    assert_eq!(r.run_until(deadline), becoming_master(100, State::Backup));
}

/// Adverts from priority 254 whose interval is not the configured one (1 s) are
/// ignored: 300 of them, 100 a second, make a master flap no more; a backup keeps
/// its own Master_Down_Interval after the real master's last advert.
#[test]
fn adverts_with_another_interval_change_nothing() {
    let forged = |interval| {
        let source = "10.0.0.4".parse().unwrap();
        Event::Advert(Received {
            source,
            priority: 254,
            interval,
        })
    };
    for interval in [Duration::ZERO, ms(10), SEC * 2, ms(40_950)] {
        let mut r = Rig::new(settings(100));
        r.event(Event::Startup);
        let mdi = r.m.master_down_interval();
        let mut actions = r.run_until(mdi);
        for i in 1..=300 {
            actions.extend(r.run_until(mdi + ms(10) * i));
            actions.extend(r.event(forged(interval)));
        }
        actions.extend(r.run_until(mdi + SEC * 10));
        let flaps = actions.iter().filter(|a| matches!(a, Transition { .. }));
        assert_eq!(flaps.count(), 1, "{interval:?}: only Backup -> Master");
        assert_eq!(r.m.state(), State::Master);

        let mut r = Rig::new(settings(100));
        r.event(Event::Startup);
        r.at(SEC);
        r.advert("10.0.0.3", 200);
        r.at(SEC * 2);
        r.event(forged(interval));
        assert_eq!(r.m.master(), Some("10.0.0.3".parse().unwrap()));
        assert_eq!(r.run_until(SEC + mdi), becoming_master(100, State::Backup));
    }
}

#[test]
fn priority_zero_hands_over_in_skew_time() {
    let mut r = Rig::new(settings(100));
    r.event(Event::Startup);
    r.at(SEC);
    r.advert("10.0.0.3", 150);
    r.at(SEC * 2);
    assert_eq!(r.advert("10.0.0.3", 0), vec![]);
    let skew = r.m.skew_time();
    assert_eq!(r.m.next_deadline(), Some(r.t0 + SEC * 2 + skew));
    assert_eq!(
        r.run_until(SEC * 2 + skew),
        becoming_master(100, State::Backup)
    );
}

#[test]
fn preempt_takes_over_from_a_lower_master() {
    let mut r = Rig::new(settings(200));
    r.event(Event::Startup);
    // The lower master's adverts are ignored: Master_Down_Timer runs out.
    for s in 1..=3 {
        r.at(SEC * s);
        assert_eq!(r.advert("10.0.0.3", 100), vec![]);
    }
    let mdi = r.m.master_down_interval();
    assert_eq!(r.run_until(mdi), becoming_master(200, State::Backup));
}

#[test]
fn without_preempt_a_lower_master_is_kept() {
    let mut r = Rig::new(Settings {
        preempt: false,
        ..settings(200)
    });
    r.event(Event::Startup);
    for s in 1..=20 {
        r.at(SEC * s);
        r.advert("10.0.0.3", 100);
        assert_eq!(r.run_until(SEC * s + ms(999)), vec![]);
    }
    assert_eq!(r.m.state(), State::Backup);
    assert_eq!(r.m.master(), Some("10.0.0.3".parse().unwrap()));
}

#[test]
fn preempt_delay_holds_preemption_back_after_startup() {
    let mut r = Rig::new(Settings {
        preempt_delay: SEC * 10,
        ..settings(200)
    });
    r.event(Event::Startup);
    // Within the delay the lower master is accepted...
    for s in 1..=10 {
        r.at(SEC * s);
        r.advert("10.0.0.3", 100);
        assert_eq!(r.run_until(SEC * s + ms(999)), vec![], "second {s}");
    }
    // ...afterwards ignored, so Master_Down_Interval after the last accepted advert
    // (at 9 s; the one at 10 s came once the delay was over) this node preempts.
    r.at(SEC * 11);
    r.advert("10.0.0.3", 100);
    let mdi = r.m.master_down_interval();
    assert_eq!(r.run_until(SEC * 9 + mdi - ms(1)), vec![]);
    assert_eq!(r.m.state(), State::Backup);
    assert_eq!(
        r.run_until(SEC * 9 + mdi),
        becoming_master(200, State::Backup)
    );
}

#[test]
fn master_yields_to_a_higher_priority() {
    let mut r = Rig::new(settings(255));
    r.event(Event::Startup);
    r.at(ms(300));
    assert_eq!(r.advert("10.0.0.3", 100), vec![], "lower: discarded");
    assert_eq!(r.m.state(), State::Master);
    let mut r = Rig::new(settings(100));
    r.event(Event::Startup);
    r.run_until(r.m.master_down_interval());
    r.at(SEC * 5);
    assert_eq!(
        r.advert("10.0.0.3", 101),
        vec![RemoveAddresses, t(State::Master, State::Backup)]
    );
    assert_eq!(r.m.master(), Some("10.0.0.3".parse().unwrap()));
    assert_eq!(
        r.m.next_deadline(),
        Some(r.t0 + SEC * 5 + r.m.master_down_interval())
    );
}

#[test]
fn equal_priority_is_decided_by_the_higher_address() {
    let mut r = Rig::new(settings(100));
    r.event(Event::Startup);
    r.run_until(r.m.master_down_interval());
    r.at(SEC * 5);
    assert_eq!(
        r.advert("10.0.0.1", 100),
        vec![],
        "lower address: discarded"
    );
    assert_eq!(
        r.advert("10.0.0.9", 100),
        vec![RemoveAddresses, t(State::Master, State::Backup)]
    );
}

#[test]
fn master_answers_a_leaving_master_at_once() {
    let mut r = Rig::new(settings(255));
    r.event(Event::Startup);
    r.at(ms(400));
    assert_eq!(r.advert("10.0.0.3", 0), vec![SendAdvert { priority: 255 }]);
    // The advert timer restarted from now.
    assert_eq!(
        r.run_until(ms(1399)),
        vec![SendGarp, SendGarp],
        "only the rest of the GARP burst"
    );
    assert_eq!(r.run_until(ms(1400)), vec![SendAdvert { priority: 255 }]);
}

#[test]
fn shutdown_of_a_master_sends_priority_zero_and_removes_addresses() {
    let mut r = Rig::new(settings(255));
    r.event(Event::Startup);
    r.at(SEC);
    assert_eq!(
        r.event(Event::Shutdown),
        vec![
            RemoveAddresses,
            SendAdvert { priority: 0 },
            t(State::Master, State::Initialize)
        ]
    );
    assert_eq!(r.m.next_deadline(), None);
    assert_eq!(r.event(Event::Shutdown), vec![]);
}

#[test]
fn shutdown_of_a_backup_is_silent() {
    let mut r = Rig::new(settings(100));
    r.event(Event::Startup);
    assert_eq!(
        r.event(Event::Shutdown),
        vec![t(State::Backup, State::Initialize)]
    );
    assert_eq!(r.m.next_deadline(), None);
}

#[test]
fn a_link_down_is_a_fault_and_its_return_a_new_start() {
    let mut r = Rig::new(settings(200));
    r.event(Event::Startup);
    r.run_until(r.m.master_down_interval());
    assert_eq!(r.m.state(), State::Master);
    r.at(SEC * 10);
    assert_eq!(
        r.event(Event::Links { up: false }),
        vec![
            RemoveAddresses,
            SendAdvert { priority: 0 },
            t(State::Master, State::Fault)
        ]
    );
    assert_eq!(r.m.next_deadline(), None);
    assert_eq!(r.advert("10.0.0.3", 100), vec![], "Fault does not listen");
    r.at(SEC * 20);
    assert_eq!(
        r.event(Event::Links { up: true }),
        vec![t(State::Fault, State::Backup)]
    );
    let mdi = r.m.master_down_interval();
    assert_eq!(
        r.run_until(SEC * 20 + mdi),
        becoming_master(200, State::Backup)
    );
    // A backup faults too, silently.
    let mut r = Rig::new(settings(100));
    r.event(Event::Startup);
    assert_eq!(
        r.event(Event::Links { up: false }),
        vec![t(State::Backup, State::Fault)]
    );
    assert_eq!(
        r.event(Event::Shutdown),
        vec![t(State::Fault, State::Initialize)]
    );
}

#[test]
fn startup_with_a_link_down_is_a_fault() {
    let mut r = Rig::new(settings(255));
    r.event(Event::Links { up: false });
    assert_eq!(
        r.event(Event::Startup),
        vec![t(State::Initialize, State::Fault)]
    );
    assert_eq!(
        r.event(Event::Links { up: true }),
        becoming_master(255, State::Fault)
    );
}

#[test]
fn preempt_delay_applies_again_after_a_fault() {
    let mut r = Rig::new(Settings {
        preempt_delay: SEC * 5,
        ..settings(200)
    });
    r.event(Event::Startup);
    r.event(Event::Links { up: false });
    r.at(SEC * 100);
    r.event(Event::Links { up: true });
    r.at(SEC * 101);
    r.advert("10.0.0.3", 100);
    assert_eq!(
        r.m.master(),
        Some("10.0.0.3".parse().unwrap()),
        "accepted within the delay"
    );
}

#[test]
fn no_garp_when_repeat_is_zero() {
    let mut r = Rig::new(Settings {
        garp_repeat: 0,
        ..settings(255)
    });
    assert_eq!(
        r.event(Event::Startup),
        vec![
            AddAddresses,
            SendAdvert { priority: 255 },
            t(State::Initialize, State::Master)
        ]
    );
    assert_eq!(r.run_until(SEC * 3).len(), 3, "adverts only");
}

#[test]
fn adverts_in_initialize_are_ignored() {
    let mut r = Rig::new(settings(100));
    assert_eq!(r.advert("10.0.0.3", 0), vec![]);
    assert_eq!(r.m.state(), State::Initialize);
    assert_eq!(r.m.next_deadline(), None);
}

/// Two nodes of one virtual router on a fake wire: each advert one sends, the other
/// receives at once.
struct Pair {
    a: Machine,
    b: Machine,
    t0: Instant,
    now: Instant,
}

impl Pair {
    fn new(a: u8, b: u8) -> Pair {
        let node = |priority, address: &str| {
            Machine::new(Settings {
                primary_address: address.parse().unwrap(),
                ..settings(priority)
            })
        };
        let t0 = Instant::now();
        let mut pair = Pair {
            a: node(a, "10.0.0.2"),
            b: node(b, "10.0.0.3"),
            t0,
            now: t0,
        };
        let (out_a, out_b) = (
            pair.a.handle(t0, Event::Startup),
            pair.b.handle(t0, Event::Startup),
        );
        pair.deliver(out_a, out_b);
        pair
    }

    /// Sends each side's adverts to the other (and what they answer, until quiet).
    fn deliver(&mut self, mut from_a: Vec<Action>, mut from_b: Vec<Action>) {
        let adverts = |actions: &[Action]| -> Vec<u8> {
            actions
                .iter()
                .filter_map(|a| match a {
                    SendAdvert { priority } => Some(*priority),
                    _ => None,
                })
                .collect()
        };
        for _ in 0..100 {
            if from_a.is_empty() && from_b.is_empty() {
                return;
            }
            let (to_b, to_a) = (adverts(&from_a), adverts(&from_b));
            from_a.clear();
            from_b.clear();
            for priority in to_b {
                let r = Received {
                    source: self.a.settings().primary_address,
                    priority,
                    interval: SEC,
                };
                from_b.extend(self.b.handle(self.now, Event::Advert(r)));
            }
            for priority in to_a {
                let r = Received {
                    source: self.b.settings().primary_address,
                    priority,
                    interval: SEC,
                };
                from_a.extend(self.a.handle(self.now, Event::Advert(r)));
            }
        }
        panic!("the two nodes never stop answering each other");
    }

    /// Runs both nodes' timers up to `offset`, 10 ms at a time.
    fn run_until(&mut self, offset: Duration) {
        while self.now < self.t0 + offset {
            self.now += ms(10);
            let (out_a, out_b) = (self.a.on_timer(self.now), self.b.on_timer(self.now));
            self.deliver(out_a, out_b);
        }
    }

    fn states(&self) -> (State, State) {
        (self.a.state(), self.b.state())
    }
}

#[test]
fn a_lower_priority_hands_over_to_the_peer_and_back() {
    // a (200) is master, b (150) backup, both with preempt.
    let mut p = Pair::new(200, 150);
    p.run_until(SEC * 5);
    assert_eq!(p.states(), (State::Master, State::Backup));
    // a's script fails: weight -100 -> 100, below b. a advertises 100 from its next
    // advert; b ignores a lower master and takes over within Master_Down_Interval.
    let at = p.now;
    assert_eq!(p.a.handle(at, Event::Priority(100)), vec![]);
    p.run_until(SEC * 5 + ms(1000));
    assert_eq!(p.states(), (State::Master, State::Backup), "not yet");
    let mdi_b = p.b.master_down_interval();
    p.run_until(SEC * 6 + mdi_b + ms(20));
    assert_eq!(p.states(), (State::Backup, State::Master));
    assert_eq!(p.b.master(), Some("10.0.0.3".parse().unwrap()));
    assert_eq!(p.a.master(), Some("10.0.0.3".parse().unwrap()));
    p.run_until(SEC * 20);
    assert_eq!(p.states(), (State::Backup, State::Master), "stable");
    // The script passes again: a (200 again) preempts b.
    let at = p.now;
    assert_eq!(p.a.handle(at, Event::Priority(200)), vec![]);
    p.run_until(SEC * 20 + p.a.master_down_interval() + SEC + ms(20));
    assert_eq!(p.states(), (State::Master, State::Backup));
    p.run_until(SEC * 40);
    assert_eq!(p.states(), (State::Master, State::Backup), "stable");
}

#[test]
fn without_preempt_a_raised_backup_waits() {
    let mut p = Pair::new(200, 150);
    p.b = Machine::new(Settings {
        primary_address: "10.0.0.3".parse().unwrap(),
        preempt: false,
        ..settings(150)
    });
    let at = p.now;
    p.b.handle(at, Event::Startup);
    p.run_until(SEC * 5);
    assert_eq!(p.states(), (State::Master, State::Backup));
    let at = p.now;
    p.b.handle(at, Event::Priority(250));
    p.run_until(SEC * 30);
    assert_eq!(p.states(), (State::Master, State::Backup));
}

#[test]
fn a_master_advertises_its_new_priority() {
    let mut r = Rig::new(settings(200));
    r.event(Event::Startup);
    r.run_until(r.m.master_down_interval());
    let start = r.now - r.t0;
    r.at(start + ms(100));
    assert_eq!(r.event(Event::Priority(120)), vec![]);
    let acts = r.run_until(start + SEC);
    assert!(acts.contains(&SendAdvert { priority: 120 }), "{acts:?}");
    assert!(!acts.contains(&SendAdvert { priority: 200 }), "{acts:?}");
    assert_eq!(r.m.settings().priority, 120);
}

/// keepalived's: a backup's Master_Down_Timer moves by the change of its
/// Master_Down_Interval, counted from the same last advert.
#[test]
fn a_backup_keeps_counting_from_the_last_advert_when_its_priority_changes() {
    let mut r = Rig::new(settings(100));
    r.event(Event::Startup);
    r.at(SEC);
    r.advert("10.0.0.3", 250);
    r.at(SEC * 2);
    r.event(Event::Priority(200));
    assert_eq!(
        r.m.next_deadline(),
        Some(r.t0 + SEC + r.m.master_down_interval())
    );
    assert_eq!(r.m.master_down_interval(), 3 * SEC + SEC * 56 / 256);
    r.event(Event::Priority(1));
    assert_eq!(
        r.m.next_deadline(),
        Some(r.t0 + SEC + 3 * SEC + SEC * 255 / 256)
    );
}

#[test]
fn a_failing_script_of_weight_zero_is_a_fault_like_a_link() {
    let mut r = Rig::new(settings(200));
    r.event(Event::Startup);
    r.run_until(r.m.master_down_interval());
    r.at(SEC * 10);
    assert_eq!(
        r.event(Event::Scripts { up: false }),
        vec![
            RemoveAddresses,
            SendAdvert { priority: 0 },
            t(State::Master, State::Fault)
        ]
    );
    // Both causes must clear before it starts again.
    assert_eq!(r.event(Event::Links { up: false }), vec![]);
    assert_eq!(r.event(Event::Scripts { up: true }), vec![]);
    assert_eq!(
        r.event(Event::Links { up: true }),
        vec![t(State::Fault, State::Backup)]
    );
    // A script failing before startup: Initialize -> Fault.
    let mut r = Rig::new(settings(100));
    r.event(Event::Scripts { up: false });
    assert_eq!(
        r.event(Event::Startup),
        vec![t(State::Initialize, State::Fault)]
    );
}

#[test]
fn sync_group_events() {
    // A fault elsewhere in the group: a master leaves as for its own fault.
    let mut r = Rig::new(settings(200));
    r.event(Event::Startup);
    r.run_until(r.m.master_down_interval());
    r.at(SEC * 10);
    assert_eq!(
        r.event(Event::GroupFault { fault: true }),
        vec![
            RemoveAddresses,
            SendAdvert { priority: 0 },
            t(State::Master, State::Fault)
        ]
    );
    assert_eq!(r.event(Event::GroupMaster), vec![], "Fault does not follow");
    assert_eq!(
        r.event(Event::GroupFault { fault: false }),
        vec![t(State::Fault, State::Backup)]
    );
    // Another member became master: a backup follows at once.
    r.at(SEC * 11);
    r.advert("10.0.0.3", 250);
    assert_eq!(
        r.event(Event::GroupMaster),
        becoming_master(200, State::Backup)
    );
    assert_eq!(r.event(Event::GroupMaster), vec![]);
    // Another member gave way: a master leaves, without a priority-0 advert (the peer's
    // own timers or its group take over), and waits a Master_Down_Interval.
    r.at(SEC * 12);
    assert_eq!(
        r.event(Event::GroupBackup),
        vec![RemoveAddresses, t(State::Master, State::Backup)]
    );
    assert_eq!(
        r.m.next_deadline(),
        Some(r.t0 + SEC * 12 + r.m.master_down_interval())
    );
    assert_eq!(r.event(Event::GroupBackup), vec![]);
}
