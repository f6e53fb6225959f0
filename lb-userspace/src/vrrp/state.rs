//! The VRRP state machine of RFC 5798 section 6.4 (and RFC 3768 6.4, the same), as pure
//! logic: events and the current time in, [`Action`]s out. It never reads a clock or
//! touches a socket; the runner asks [`Machine::next_deadline`] when to call
//! [`Machine::on_timer`].
//!
//! Beside the RFC's Initialize, Backup and Master it has keepalived's Fault: while a
//! tracked link (or the instance's own) is down, a tracked script of weight 0 fails, or
//! another instance of its sync group is in fault, the instance neither sends nor listens,
//! and leaves Master with a priority-0 advert so a backup takes over at once.
//!
//! The priority can change while it runs (keepalived's weighted track scripts): a master
//! advertises the new one from its next advert, a backup's Master_Down_Timer moves by the
//! change of its Skew_Time, and the usual rules do the rest (a backup with preempt ignores
//! a master that is now lower and takes over; a master hearing a higher one gives way).
//!
//! Sync groups (keepalived's `vrrp_sync_group`) reach the machine as events: another
//! member became master ([`Event::GroupMaster`]: a backup becomes master at once) or gave
//! way to a higher priority ([`Event::GroupBackup`]: a master becomes backup), or a member
//! is in fault ([`Event::GroupFault`]).
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
    /// Whether every tracked script of weight 0 succeeds.
    Scripts {
        up: bool,
    },
    /// The effective priority (the configured one moved by weighted scripts), 1..=255.
    Priority(u8),
    /// Whether another instance of the sync group is in fault.
    GroupFault {
        fault: bool,
    },
    /// Another instance of the sync group became master.
    GroupMaster,
    /// Another instance of the sync group left master for backup.
    GroupBackup,
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
    scripts_up: bool,
    group_fault: bool,
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
            scripts_up: true,
            group_fault: false,
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
            Event::Links { up } => self.set_health(now, |m| m.links_up = up, &mut out),
            Event::Scripts { up } => self.set_health(now, |m| m.scripts_up = up, &mut out),
            Event::GroupFault { fault } => {
                self.set_health(now, |m| m.group_fault = fault, &mut out)
            }
            Event::Priority(p) => self.set_priority(p),
            Event::GroupMaster => {
                if self.state == State::Backup {
                    self.become_master(now, &mut out);
                }
            }
            Event::GroupBackup => {
                if self.state == State::Master {
                    self.leave_master(&mut out);
                    self.master_down_at = Some(now + self.master_down_interval());
                    self.preempt_from = None;
                    self.master = None;
                    self.go(State::Backup, &mut out);
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

    /// Links up, scripts of weight 0 up, no fault in the sync group.
    fn healthy(&self) -> bool {
        self.links_up && self.scripts_up && !self.group_fault
    }

    /// Applies `change` to what the health depends on; Master or Backup go to Fault when
    /// it fails, Fault starts again when it is back.
    fn set_health(&mut self, now: Instant, change: impl FnOnce(&mut Self), out: &mut Vec<Action>) {
        change(self);
        match (self.state, self.healthy()) {
            (State::Master, false) => {
                self.leave_master(out);
                out.push(Action::SendAdvert { priority: 0 });
                self.go(State::Fault, out);
            }
            (State::Backup, false) => self.go(State::Fault, out),
            (State::Fault, true) => self.start(now, out),
            _ => {}
        }
    }

    /// A new effective priority. A backup keeps waiting for the same master's adverts:
    /// its Master_Down_Timer moves by the change of Master_Down_Interval (keepalived's
    /// behaviour), so an advert heard just before counts as before.
    fn set_priority(&mut self, priority: u8) {
        let before = self.master_down_interval();
        self.settings.priority = priority.max(1);
        let after = self.master_down_interval();
        if self.state == State::Backup {
            self.master_down_at = self.master_down_at.map(|t| {
                if after >= before {
                    t + (after - before)
                } else {
                    t.checked_sub(before - after).unwrap_or(t)
                }
            });
        }
    }

    /// Initialize (or Fault) -> Backup or Master, as RFC 5798 6.4.1's Startup.
    fn start(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.healthy() {
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
mod tests;
