//! Serde for durations written as (fractional) seconds, the unit of every duration in Plume's
//! config files and `--print-config` (`idle_timeout = 60.0`). Use with
//! `#[serde(with = "plume_channels::duration_secs")]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Writes a duration as seconds.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Reads seconds (integer or fractional, not negative) into a duration.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = f64::deserialize(d)?;
    Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
}
