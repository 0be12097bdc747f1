//! The shared harness of the integration tests. Each test binary includes it
//! with `mod support;`:
//!
//! - [`services`]: where the test services are (the same `PULSEHUB_TEST_*`
//!   variables and defaults everywhere), unique names, the workspace's root,
//!   free ports and a Redis server of a test's own;
//! - [`db`]: a fresh PostgreSQL database per test, dropped afterwards;
//! - [`kafka`]: topics, a producer, and reading a topic back;
//! - [`hub`]: the `pulsehub run` child process and its HTTP API;
//! - [`proxy`]: a TCP proxy that a test can cut, to take a service away;
//! - [`prometheus`]: the `/metrics` text, parsed;
//! - [`receiver`]: a webhook receiver that checks signatures with the
//!   Standard Webhooks library;
//! - [`plugins`]: the built-in plugins and the `chaos` fixture as packages;
//! - [`workload`]: generated events with the profiles they must produce.

// Every test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod db;
pub mod hub;
pub mod kafka;
pub mod plugins;
pub mod prometheus;
pub mod proxy;
pub mod receiver;
pub mod services;
pub mod workload;
