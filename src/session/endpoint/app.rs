//! Application dispatch (DESIGN.md §1.4) and device groups (§1.3, §4): the [`Application`]
//! trait, the [`Outbox`] it sends through, and which application and settings a device group
//! gives its sessions.

use core::time::Duration;

use super::slab::{NIL, Sessions};
use super::{Endpoint, EndpointEvent};
use crate::counters::Counter;
use crate::ids::SessionHandle;
use crate::session::error::SendError;
use crate::time::Timestamp;

/// An application message as it arrived, in order, on a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppMessage<'a> {
    /// The session it arrived on.
    pub session: SessionHandle,
    /// Its type (at least `APP_TYPE_MIN`).
    pub type_id: u16,
    /// Its body.
    pub body: &'a [u8],
}

/// An application behind the gateway (DESIGN.md §1.4): gets the application messages of every
/// session of the shard and sends through an [`Outbox`].
pub trait Application {
    /// An application message arrived in order on `msg.session`.
    fn on_message(&mut self, now: Timestamp, msg: AppMessage<'_>, out: &mut Outbox<'_>);

    /// A session logged on (or resumed).
    fn on_logon(&mut self, _now: Timestamp, _session: SessionHandle, _out: &mut Outbox<'_>) {}

    /// The application's next deadline, if any.
    fn poll_timeout(&self) -> Option<Timestamp> {
        None
    }

    /// Called when `now` reaches [`Application::poll_timeout`].
    fn handle_timeout(&mut self, _now: Timestamp, _out: &mut Outbox<'_>) {}
}

/// Lets an [`Application`] send.
pub struct Outbox<'a> {
    now: Timestamp,
    sessions: &'a mut Sessions,
    /// The application this outbox serves: `broadcast` reaches only its sessions.
    app: u8,
}

impl Outbox<'_> {
    /// Sends an application message on `session`; returns its sequence number.
    pub fn send(
        &mut self,
        session: SessionHandle,
        type_id: u16,
        body: &[u8],
    ) -> Result<i64, SendError> {
        if self.sessions.get(session).is_none() {
            return Err(SendError::NotActive);
        }
        let Sessions { slots, counters, .. } = &mut *self.sessions;
        let r = slots[session.index() as usize].session.send_app(self.now, type_id, body, counters);
        self.sessions.mark_dirty(session.index());
        r
    }

    /// Sends to every session that takes application messages (logged on, or away with a stream
    /// to resume); returns how many accepted it.
    pub fn broadcast(&mut self, type_id: u16, body: &[u8]) -> usize {
        // The application's own list: O(its sessions), not O(the slab).
        let mut n = 0;
        let mut i = self.sessions.app_head(self.app);
        while i != NIL {
            let slot = &mut self.sessions.slots[i as usize];
            let next = slot.app_next;
            if slot.session.accepts_app() {
                if slot
                    .session
                    .send_app(self.now, type_id, body, &mut self.sessions.counters)
                    .is_ok()
                {
                    n += 1;
                }
                self.sessions.mark_dirty(i);
            }
            i = next;
        }
        n
    }

    /// This outbox, borrowed for a shorter while.
    pub fn reborrow(&mut self) -> Outbox<'_> {
        Outbox { now: self.now, sessions: &mut *self.sessions, app: self.app }
    }

    /// Logged-on sessions (of every application), from the state gauges.
    pub fn active_sessions(&self) -> usize {
        self.sessions.gauges[2] as usize
    }
}

/// What a device group sets for its sessions (`None`: the endpoint's default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupSettings {
    /// Heartbeat interval announced in LogonResponse.
    pub heartbeat: Option<Duration>,
    /// Application messages the journal keeps (at most the reserved ring).
    pub journal_depth: Option<usize>,
    /// Which application serves the group (an index from [`Endpoint::add_app`]).
    pub app: Option<u8>,
}

/// Maps a device config string to its group's settings.
pub type GroupPolicy = Box<dyn Fn(&[u8]) -> GroupSettings + Send>;

impl Endpoint {
    /// Adds an application for device groups to select ([`GroupSettings::app`]); returns its
    /// index (the application given to [`Endpoint::new`] is 0). At most 255 more.
    pub fn add_app(&mut self, app: Box<dyn Application>) -> u8 {
        debug_assert!(self.apps.len() < 256);
        self.apps.push(app);
        (self.apps.len() - 1) as u8
    }

    /// Sets the device-group policy: called with each UDP device's config string when it
    /// arrives, its answer applies to that session (heartbeat interval announced at logon,
    /// journal depth within the reserved ring).
    pub fn set_groups(&mut self, policy: GroupPolicy) {
        self.groups = Some(policy);
    }

    /// Sends an application message on `session` from outside the application (tests, tools).
    pub fn send(
        &mut self,
        now: Timestamp,
        session: SessionHandle,
        type_id: u16,
        body: &[u8],
    ) -> Result<i64, SendError> {
        self.outbox(now).send(session, type_id, body)
    }

    /// An outbox over every session, at `now`, for sending from outside the application (its
    /// `broadcast` reaches the sessions of application 0).
    pub fn outbox(&mut self, now: Timestamp) -> Outbox<'_> {
        Outbox { now, sessions: &mut self.sessions, app: 0 }
    }

    /// An application message arrived in order on slot `index`: to its session's application.
    pub(super) fn deliver_app(&mut self, now: Timestamp, index: u32, type_id: u16, body: &[u8]) {
        let handle = self.sessions.handle(index);
        let app = self.sessions.slots[index as usize].session.app();
        let mut out = Outbox { now, sessions: &mut self.sessions, app };
        let msg = AppMessage { session: handle, type_id, body };
        self.apps[usize::from(app)].on_message(now, msg, &mut out);
    }

    /// Slot `index` may have just logged on: tell the driver and its application.
    pub(super) fn logged_on(&mut self, now: Timestamp, index: u32) {
        if self.sessions.slots[index as usize].session.state().is_active() {
            let handle = self.sessions.handle(index);
            self.events.push_back(EndpointEvent::LoggedOn(handle));
            let app = self.sessions.slots[index as usize].session.app();
            let mut out = Outbox { now, sessions: &mut self.sessions, app };
            self.apps[usize::from(app)].on_logon(now, handle, &mut out);
        }
    }

    /// Slot `index` received its device config: keep it, and apply its device group, if any
    /// (from the string as it arrived, kept or not).
    pub(super) fn configured(&mut self, index: u32, config: &[u8]) {
        let slot = &mut self.sessions.slots[index as usize];
        let old = core::mem::replace(&mut slot.config, super::ConfigRef::NONE);
        self.configs.remove(old);
        match self.configs.insert(config) {
            Some(kept) => self.sessions.slots[index as usize].config = kept,
            None => self.sessions.counters.incr(Counter::DeviceConfigNotKept),
        }
        if let Some(policy) = self.groups.as_ref() {
            let session = &mut self.sessions.slots[index as usize].session;
            let g = policy(config);
            session.apply_group(g.heartbeat, g.journal_depth);
            if let Some(app) = g.app.filter(|&a| usize::from(a) < self.apps.len()) {
                self.sessions.set_app(index, app);
            }
        }
    }

    /// Gives every application whose deadline has come its turn.
    pub(super) fn apps_timeout(&mut self, now: Timestamp) {
        for (i, app) in self.apps.iter_mut().enumerate() {
            if app.poll_timeout().is_some_and(|t| t <= now) {
                let mut out = Outbox { now, sessions: &mut self.sessions, app: i as u8 };
                app.handle_timeout(now, &mut out);
            }
        }
    }

    /// The earliest application deadline.
    pub(super) fn apps_poll_timeout(&self) -> Option<Timestamp> {
        self.apps.iter().filter_map(|a| a.poll_timeout()).min()
    }
}
