//! The tools that drive and measure the local pipeline, apart from the runner that plays
//! Knative: [`demo`] (the README's first command), [`bench`] (`make bench`), [`faults`] (`make
//! faults`), [`replay`] (dead letters back to their sink). They run `runner up` as a child
//! ([`pipeline`]), drive Locust ([`load`]) and read the pipeline's state in one place
//! ([`state`]), the runner's own metrics in another ([`scrape`]).

pub mod anchor;
pub mod bench;
pub mod callgrind;
pub mod demo;
pub mod faults;
pub mod load;
pub mod pipeline;
pub mod profile;
pub mod replay;
pub mod scrape;
pub mod state;
