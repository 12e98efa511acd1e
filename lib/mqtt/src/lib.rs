//! An MQTT broker engine (MQTT 3.1.1 and 5.0) with no I/O of its own:
//! [`codec`] reads and writes packets, [`topic`] matches topic filters,
//! [`config`] reads mosquitto.conf-style settings, password and ACL files,
//! and [`broker::Broker`] keeps connections, sessions, subscriptions,
//! retained messages and QoS flows; [`ws`] carries MQTT over WebSockets.
//! `apps/mqtt` runs it over lib/net.
//!
//! Kiln's own codec: the MQTT crates on crates.io are clients, need std
//! and tokio, or cover only 3.1.1; a broker for a no_std kernel needs both
//! versions' server side.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod broker;
pub mod codec;
pub mod config;
pub mod topic;
pub mod ws;

#[cfg(test)]
mod tests;
