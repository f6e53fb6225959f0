//! The VRRP state machine of RFC 5798 section 6.4 (and RFC 3768 6.4, the same), as pure
//! logic: events and the current time in, [`Action`]s out. It never reads a clock or
//! touches a socket; the runner asks [`Machine::next_deadline`] when to call
//! [`Machine::on_timer`].
//!
//! Beside the RFC's Initialize, Backup and Master it has keepalived's Fault: while a
//! tracked link (or the instance's own) is down the instance neither sends nor listens,
//! and leaves Master with a priority-0 advert so a backup takes over at once.
//!
//! `preempt_delay` is keepalived's: for that long after entering Backup from Initialize or
//! Fault, a lower-priority master is accepted as if preemption were off; afterwards its
//! adverts are ignored and Master_Down_Timer takes this node to Master.
//!
//! Every timer runs on the instance's own advert interval. RFC 5798 has a backup adopt
//! the master's, but then one forged advert sets them: interval 0 makes each
//! higher-priority forgery a full flap (Master_Down_Interval 0), 40.95 s leaves the
//! segment without a master for two minutes after the real one dies. An advert whose
//! interval is not the configured one is ignored, as the runner counts it invalid
//! (`packet::check`); nodes of one virtual router are configured alike, as with VRRPv2.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::packet::Version;

/// What the machine needs to know about its instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub version: Version,
    /// 1..=255; 255 is the address owner, which goes straight to Master.
    pub priority: u8,
    pub advert_interval: Duration,
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// The address adverts are sent from: decides priority ties (higher wins).
    pub primary_address: IpAddr,
    /// Gratuitous ARPs / unsolicited NAs sent on becoming Master, `garp_interval` apart.
    pub garp_repeat: u32,
    pub garp_interval: Duration,
    /// While Master, one more every `garp_refresh` after the burst; zero: never.
    pub garp_refresh: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Initialize,
    Backup,
    Master,
    Fault,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Initialize,
        State::Backup,
        State::Master,
        State::Fault,
    ];

    /// Lower case, for metric labels and logs: `initialize`, `backup`, `master`, `fault`.
    pub fn label(self) -> &'static str {
        match self {
            State::Initialize => "initialize",
            State::Backup => "backup",
            State::Master => "master",
            State::Fault => "fault",
        }
    }

    /// As keepalived passes it to notify scripts: `INIT`, `BACKUP`, `MASTER`, `FAULT`.
    pub fn keepalived_name(self) -> &'static str {
        match self {
            State::Initialize => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        }
    }
}

/// A valid advertisement for this instance (the runner checked it, see `packet::check`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub source: IpAddr,
    pub priority: u8,
    /// The sender's advertisement interval (v3: Max Advertise Interval): an advert whose
    /// interval is not the instance's own is ignored.
    pub interval: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Startup,
    Shutdown,
    Advert(Received),
    /// Whether every link the instance depends on is up (its interface and the tracked ones).
    Links {
        up: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Assign the virtual addresses to the interface.
    AddAddresses,
    /// Remove them.
    RemoveAddresses,
    /// Send one advertisement with this priority (0: this master is leaving).
    SendAdvert { priority: u8 },
    /// Announce the virtual addresses once (gratuitous ARP / unsolicited NA).
    SendGarp,
    /// The state changed; comes after the actions that made it true.
    Transition { from: State, to: State },
}

/// One instance's VRRP state.
#[derive(Clone, Debug)]
pub struct Machine {
    settings: Settings,
    state: State,
    links_up: bool,
    master_down_at: Option<Instant>,
    adver_at: Option<Instant>,
    garp_at: Option<Instant>,
    garps_left: u32,
    /// Backup accepts a lower-priority master until then (preempt_delay).
    preempt_from: Option<Instant>,
    master: Option<IpAddr>,
}

impl Machine {
    /// A machine in Initialize, links assumed up until told otherwise.
    pub fn new(settings: Settings) -> Machine {
        Machine {
            settings,
            state: State::Initialize,
            links_up: true,
            master_down_at: None,
            adver_at: None,
            garp_at: None,
            garps_left: 0,
            preempt_from: None,
            master: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The current master's address as far as this node knows (its own when Master).
    pub fn master(&self) -> Option<IpAddr> {
        self.master
    }

    /// Skew_Time: (256 - Priority) / 256 of the advert interval (RFC 5798; RFC 3768's
    /// (256 - Priority) / 256 seconds is the same for its one-second unit).
    pub fn skew_time(&self) -> Duration {
        self.settings.advert_interval * (256 - u32::from(self.settings.priority)) / 256
    }

    /// Master_Down_Interval: 3 x the advert interval + Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        3 * self.settings.advert_interval + self.skew_time()
    }

    /// The earliest instant [`Machine::on_timer`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Backup => self.master_down_at,
            State::Master => [self.adver_at, self.garp_at].into_iter().flatten().min(),
            State::Initialize | State::Fault => None,
        }
    }

    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Startup => {
                if self.state == State::Initialize {
                    self.start(now, &mut out);
                }
            }
            Event::Shutdown => match self.state {
                State::Master => {
                    self.leave_master(&mut out);
                    out.push(Action::SendAdvert { priority: 0 });
                    self.go(State::Initialize, &mut out);
                }
                State::Backup | State::Fault => self.go(State::Initialize, &mut out),
                State::Initialize => {}
            },
            Event::Links { up } => {
                self.links_up = up;
                match (self.state, up) {
                    (State::Master, false) => {
                        self.leave_master(&mut out);
                        out.push(Action::SendAdvert { priority: 0 });
                        self.go(State::Fault, &mut out);
                    }
                    (State::Backup, false) => self.go(State::Fault, &mut out),
                    (State::Fault, true) => self.start(now, &mut out),
                    _ => {}
                }
            }
            Event::Advert(r)
                if r.interval.is_zero() || r.interval != self.settings.advert_interval => {}
            Event::Advert(r) => match self.state {
                State::Backup => self.backup_receives(now, r),
                State::Master => self.master_receives(now, r, &mut out),
                State::Initialize | State::Fault => {}
            },
        }
        out
    }

    /// Fires every timer that is due at `now`.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        match self.state {
            State::Backup if due(self.master_down_at) => self.become_master(now, &mut out),
            State::Master => {
                if due(self.adver_at) {
                    out.push(Action::SendAdvert {
                        priority: self.settings.priority,
                    });
                    self.adver_at = Some(now + self.settings.advert_interval);
                }
                if due(self.garp_at) {
                    out.push(Action::SendGarp);
                    self.garps_left = self.garps_left.saturating_sub(1);
                    self.garp_at = self.next_garp(now);
                }
            }
            _ => {}
        }
        out
    }

    /// Initialize (or Fault) -> Backup or Master, as RFC 5798 6.4.1's Startup.
    fn start(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.links_up {
            self.go(State::Fault, out);
        } else if self.settings.priority == 255 {
            self.become_master(now, out);
        } else {
            self.master_down_at = Some(now + self.master_down_interval());
            self.preempt_from = Some(now + self.settings.preempt_delay);
            self.master = None;
            self.go(State::Backup, out);
        }
    }

    fn backup_receives(&mut self, now: Instant, r: Received) {
        if r.priority == 0 {
            // The master leaves: take over after Skew_Time, the higher priority first.
            self.master_down_at = Some(now + self.skew_time());
            return;
        }
        let delaying = self.preempt_from.is_some_and(|t| now < t);
        if !self.settings.preempt || r.priority >= self.settings.priority || delaying {
            self.master_down_at = Some(now + self.master_down_interval());
            self.master = Some(r.source);
        }
        // Otherwise: preempt a lower-priority master by letting Master_Down_Timer fire.
    }

    fn master_receives(&mut self, now: Instant, r: Received, out: &mut Vec<Action>) {
        let mine = self.settings.priority;
        if r.priority == 0 {
            // Another master is leaving: tell everyone at once who the master is.
            out.push(Action::SendAdvert { priority: mine });
            self.adver_at = Some(now + self.settings.advert_interval);
        } else if r.priority > mine
            || (r.priority == mine && r.source > self.settings.primary_address)
        {
            self.leave_master(out);
            self.master_down_at = Some(now + self.master_down_interval());
            // Preemption came from outside: no preempt_delay after this.
            self.preempt_from = None;
            self.master = Some(r.source);
            self.go(State::Backup, out);
        }
    }

    fn become_master(&mut self, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::AddAddresses);
        out.push(Action::SendAdvert {
            priority: self.settings.priority,
        });
        self.adver_at = Some(now + self.settings.advert_interval);
        self.master_down_at = None;
        self.garps_left = self.settings.garp_repeat;
        self.garp_at = None;
        if self.garps_left > 0 {
            out.push(Action::SendGarp);
            self.garps_left -= 1;
            self.garp_at = self.next_garp(now);
        }
        self.master = Some(self.settings.primary_address);
        self.go(State::Master, out);
    }

    fn next_garp(&self, now: Instant) -> Option<Instant> {
        if self.garps_left > 0 {
            Some(now + self.settings.garp_interval)
        } else if !self.settings.garp_refresh.is_zero() {
            Some(now + self.settings.garp_refresh)
        } else {
            None
        }
    }

    fn leave_master(&mut self, out: &mut Vec<Action>) {
        self.adver_at = None;
        self.garp_at = None;
        self.garps_left = 0;
        out.push(Action::RemoveAddresses);
    }

    fn go(&mut self, to: State, out: &mut Vec<Action>) {
        if to != State::Backup {
            self.master_down_at = None;
        }
        if to != State::Master && self.master == Some(self.settings.primary_address) {
            self.master = None;
        }
        if to == State::Initialize || to == State::Fault {
            self.master = None;
        }
        let from = self.state;
        self.state = to;
        if from != to {
            out.push(Action::Transition { from, to });
        }
    }
}

#[cfg(test)]
mod tests {
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
}
