//! plume-bench: Plume's load generator and benchmark driver.
//!
//! It speaks the Phoenix protocol itself (through `plume-client`; no node in the loop) and,
//! for side-by-side runs, Socket.IO v5 over Engine.IO v4 to the peer in
//! `peers/socketio/server.js`. Every run has a duration and a connection count, stops by
//! itself and only targets loopback addresses. See `BENCHMARKS.md` for the commands and the
//! published results.
//!
//! # Layout
//!
//! - [`cli`]: the command line and its bounds (duration, connections, loopback only).
//! - [`app`]: the commands: start the servers, run, report, compare.
//! - [`scenario`]: `idle`, `fanout` and `chat` as plans of connections; [`recovery`] is its
//!   own scenario (many sockets rejoining at once, each some messages behind), and so is
//!   [`presence`] (a presence join storm on one chat).
//! - [`attack`]: the attacks from outside of issue 9 (slowloris, stalled bodies, oversize
//!   identifiers, a flood, stalled readers), each measured against a server with its limits on.
//! - [`runner`]: worker tasks driving many connections each; phases connect, settle, send,
//!   drain; measurement.
//! - [`conn`]: one connection, Phoenix ([`conn::phoenix`]) or Socket.IO ([`conn::socketio`]).
//! - [`sio`]: Engine.IO / Socket.IO packets, sans-IO.
//! - [`stamp`]: send timestamps inside messages.
//! - [`stats`]: HDR latency histograms and throughput timelines, merged across workers.
//! - [`report`]: the JSON result, summary table, ratios and charts; [`svg`] draws them.
//! - [`spawn`]: the processes under test (plume, node, redis); [`procfs`] reads their memory
//!   and CPU time; [`target`] holds endpoints and the loopback check; [`token`] signs JWTs.

pub mod app;
pub mod attack;
pub mod cli;
pub mod conn;
pub mod presence;
pub mod procfs;
pub mod recovery;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod sio;
pub mod spawn;
pub mod stamp;
pub mod stats;
pub mod svg;
pub mod target;
pub mod token;
