//! A server under test, as named on the command line: `NAME:PORT:PID`.

use std::str::FromStr;

use anyhow::{bail, Context};

/// One server under test, listening on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Target {
    /// Column name in the tables: `wsd`, `websocketd`, `websocat`, `ceiling`.
    pub name: String,
    pub port: u16,
    /// The server process whose own CPU and memory are measured.
    pub pid: u32,
}

impl FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let [name, port, pid] = parts[..] else {
            bail!("a target is NAME:PORT:PID, got {s:?}");
        };
        Ok(Target {
            name: name.to_owned(),
            port: port.parse().context("target port")?,
            pid: pid.parse().context("target pid")?,
        })
    }
}
