//! The ringfan server as a library: the binary (`src/main.rs`) wires these together; benchmarks
//! and tests drive the pieces directly.

pub mod backbone;
pub mod config;
pub mod conn;
pub mod hub;
pub mod lifecycle;
pub mod metrics;
pub mod net;
#[cfg(test)]
mod sim;
pub mod stats;
pub mod topics;
#[cfg(test)]
mod transitions;
pub mod wire;
pub mod worker;
