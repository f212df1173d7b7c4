//! The built-in applications of DESIGN.md §1.4, behind the public [`Application`] trait: the
//! layer above the sessions, chosen per shard and per device group by `gateway.app` and
//! `[[groups]] app`.
#![forbid(unsafe_code)]

use std::time::Duration;

mod echo;
mod feed;
pub mod host;
mod silent;

pub use echo::Echo;
pub use feed::{FEED_TYPE, Feed};
pub use host::{HostApp, HostBridge, HostIo, HostSpec, HostStats};
pub use silent::Silent;

pub use crate::session::{AppMessage, Application};

/// A built-in application, as `gateway.app` and `[[groups]] app` name it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    /// Echoes each request (type 150 → 250, TCP 120 → 220).
    #[default]
    Echo,
    /// Pushes a type-300 event to every session every `gateway.feed_interval_ms`.
    Feed,
    /// Accepts everything, sends nothing.
    None,
}

/// Builds the built-in application `kind`.
pub fn builtin(kind: AppKind, feed_interval: Duration) -> Box<dyn Application> {
    match kind {
        AppKind::Echo => Box::new(Echo),
        AppKind::Feed => Box::new(Feed::new(feed_interval)),
        AppKind::None => Box::new(Silent),
    }
}
