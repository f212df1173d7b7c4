//! The built-in applications of DESIGN.md §1.4, behind the public [`Application`] trait: the
//! layer above the sessions, chosen per shard and per device group by `gateway.app` and
//! `[[groups]] app`.
#![forbid(unsafe_code)]

use std::time::Duration;

mod echo;
mod feed;
mod silent;

pub use echo::Echo;
pub use feed::{FEED_TYPE, Feed};
pub use silent::Silent;

pub use crate::session::Application;

/// Builds the built-in application named by `gateway.app`.
pub fn builtin(name: &str, feed_interval: Duration) -> Option<Box<dyn Application + Send>> {
    match name {
        "echo" => Some(Box::new(Echo)),
        "feed" => Some(Box::new(Feed::new(feed_interval))),
        "none" => Some(Box::new(Silent)),
        _ => None,
    }
}
