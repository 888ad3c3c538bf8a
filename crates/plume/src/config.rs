//! The effective configuration: defaults < config file < `PLUME_*` env < flags, validated once.

use std::time::Duration;

use anyhow::{Context, bail};
use plume_server::ServerConfig;
use serde::{Deserialize, Serialize};

use crate::cli::{LogFormat, ServeArgs};

/// Everything `plume serve` runs with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Log line format.
    pub log_format: LogFormat,
    /// The transport.
    pub server: ServerConfig,
}

/// Builds the effective configuration from the file (if any) and the flags/env.
pub fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("parsing config file {}", path.display()))?
        }
        None => Config::default(),
    };
    apply(&mut config, args)?;
    validate(&config)?;
    Ok(config)
}

fn apply(config: &mut Config, args: &ServeArgs) -> anyhow::Result<()> {
    let server = &mut config.server;
    if let Some(bind) = args.bind {
        server.bind = bind;
    }
    if let Some(secs) = args.idle_timeout {
        server.idle_timeout =
            Duration::try_from_secs_f64(secs).context("--idle-timeout must be >= 0")?;
    }
    if let Some(n) = args.max_frame_bytes {
        server.max_frame_bytes = n;
    }
    if let Some(n) = args.max_channels {
        server.socket.max_channels = n;
    }
    if let Some(n) = args.outbound_capacity {
        server.socket.outbound_capacity = n;
    }
    if let Some(origins) = &args.check_origin {
        server.check_origin = origins.iter().filter(|o| !o.is_empty()).cloned().collect();
    }
    if let Some(format) = args.log_format {
        config.log_format = format;
    }
    Ok(())
}

fn validate(config: &Config) -> anyhow::Result<()> {
    let s = &config.server;
    if s.idle_timeout.is_zero() {
        bail!("idle timeout must be more than 0 seconds");
    }
    if s.max_frame_bytes < 1024 {
        bail!("max frame bytes must be at least 1024");
    }
    if s.socket.outbound_capacity == 0 {
        bail!("outbound capacity must be at least 1");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_values() {
        let mut config: Config = toml::from_str(
            "[server]\nbind = \"0.0.0.0:5000\"\nidle_timeout = 30.0\nmax_frame_bytes = 4096\n",
        )
        .unwrap();
        assert_eq!(config.server.idle_timeout, Duration::from_secs(30));
        let args = ServeArgs {
            max_frame_bytes: Some(8192),
            ..ServeArgs::default()
        };
        apply(&mut config, &args).unwrap();
        assert_eq!(config.server.bind.to_string(), "0.0.0.0:5000");
        assert_eq!(config.server.max_frame_bytes, 8192);
        assert!(validate(&config).is_ok());
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = toml::to_string_pretty(&Config::default()).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
    }

    #[test]
    fn zero_idle_timeout_is_rejected() {
        let mut config = Config::default();
        config.server.idle_timeout = Duration::ZERO;
        assert!(validate(&config).is_err());
    }
}
