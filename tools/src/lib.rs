//! The tools that drive and measure the local pipeline, apart from the runner that plays
//! Knative: [`demo`] (the README's first command), [`bench`] (`make bench`), [`faults`] (`make
//! faults`), [`replay`] (dead letters back to their sink). They run `runner up` as a child
//! ([`pipeline`]), drive Locust ([`load`]), read the pipeline's state in one place ([`state`]),
//! the runner's own metrics in another ([`scrape`]), and audit a run tweet by tweet ([`audit`]);
//! [`live`] reads state and metrics once a second for the demo's live line and the [`dashboard`].
//! [`project`] (`make project`) carries the measured costs to N tenants on a cluster.

pub mod anchor;
pub mod audit;
pub mod bench;
pub mod callgrind;
pub mod dashboard;
pub mod demo;
pub mod faults;
pub mod live;
pub mod load;
pub mod pipeline;
pub mod profile;
pub mod project;
pub mod replay;
pub mod scrape;
pub mod state;
