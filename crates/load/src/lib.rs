//! `bookstore-load`: an open-loop load generator for the bookstore.
//!
//! Requests start at a constant arrival rate, whatever the shop's answers do, and each one's
//! latency runs from when it was meant to start, so time spent queued (in the shop, or behind
//! the generator's own cap on requests in flight) is in the numbers. The traffic is the shop's
//! own mix of scenarios; results come per scenario and in total, as a table, JSON, and
//! HdrHistogram `.hgrm` files.
//!
//! The rooms, in the order a request passes through them:
//!
//! - [`input`]: the command line's values as types that cannot be wrong (rate, lengths of
//!   time, objective, shares, the cap, the shop's address);
//! - [`scenario`]: the scenarios, the mix that weighs them, and the dice of each request;
//! - [`shop`]: the preparation (admin, stock, customers) and the HTTP request of each scenario;
//! - [`client`]: HTTP/1.1 keep-alive connections (hyper-util's pooled client) and how a
//!   failure is named;
//! - [`engine`]: the open-loop schedule, generic over its [`engine::Target`];
//! - [`record`]: what a run recorded, in HdrHistograms;
//! - [`report`] and [`hgrm`]: the table, the JSON and the `.hgrm` files;
//! - [`search`]: the highest rate that meets a latency objective;
//! - [`cli`]: `prepare`, `run` and `search`.
//!
//! Crates looked at before writing the schedule: `oha` and `goose` are applications rather than
//! libraries with an open-loop engine to call, and wrk2 is C; the schedule is small, and the
//! parts worth trusting (HTTP, histograms) are hyper and `hdrhistogram`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod engine;
pub mod hgrm;
pub mod input;
pub mod record;
pub mod report;
pub mod scenario;
pub mod search;
pub mod shop;
#[cfg(test)]
mod testing;
