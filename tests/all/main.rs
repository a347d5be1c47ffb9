//! partyhost's integration tests, one module per capability. Every test runs
//! a real host in-process through `partyhost::run` on 127.0.0.1:0, talks to
//! it with real WebSocket clients, and runs real guest components built by
//! scripts/build-guests.sh.

#[macro_use]
mod common;
mod assets;
mod browser;
mod cluster;

mod compile_cache;
mod deploys;
mod dev;
mod edge;
mod fetch_cycles;
mod hibernation;
mod hostile;
mod isolation;
mod limits;
mod link_counter;
mod manifest;
mod operate;
mod output_gate;
mod parity;
mod partysocket;
mod presence;
mod reactions;
mod scripts;
mod tenants;
mod totals;
mod wire;
mod yjs;

/// Paths of the built guest components.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}
