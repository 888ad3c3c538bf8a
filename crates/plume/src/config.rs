//! The effective configuration: defaults < config file < `PLUME_*` env < flags, validated once.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use plume_chat::{ChatConfig, Membership, PublicKeyAlgorithm};
use plume_redis::RedisConfig;
use plume_server::ServerConfig;
use serde::{Deserialize, Serialize};

use crate::cli::{JwtAlgorithm, LogFormat, MembershipArg, ServeArgs, StoreKind, Switch};

/// The HS256 secret used when none is configured and the server only listens on loopback.
/// It is published here, so tokens signed with it prove nothing: development only.
pub const DEV_JWT_SECRET: &str = "plume-development-secret-not-for-production";

/// How connect tokens are verified.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret.
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS256/ES256.
    pub jwt_public_key: Option<PathBuf>,
    /// Algorithm of the public key. Default: the key's (RS256 for RSA, ES256 for EC P-256).
    pub jwt_algorithm: Option<PublicKeyAlgorithm>,
    /// When set, a token's `aud` must contain this.
    pub jwt_audience: Option<String>,
    /// When set, a token's `iss` must be this.
    pub jwt_issuer: Option<String>,
}

/// Where chat state lives on a node without Redis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Embedded database (default) or memory.
    pub kind: StoreKind,
    /// Directory of the embedded database. Default `./plume-data`.
    pub data_dir: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Embedded,
            data_dir: PathBuf::from("plume-data"),
        }
    }
}

/// Everything `plume serve` runs with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Log line format.
    pub log_format: LogFormat,
    /// Bearer key of the backend HTTP API (`/api/`); the API is off without one.
    pub api_key: Option<String>,
    /// Mount the sample `echo:*` channel too.
    pub echo_channel: bool,
    /// Serve the web chat at `GET /`. Unset: on for a loopback bind, off elsewhere ([`load`]
    /// fills in the effective value, which `--print-config` shows).
    pub web: Option<Switch>,
    /// Connect token verification.
    pub auth: AuthConfig,
    /// The chat service.
    pub chat: ChatConfig,
    /// Where chat state lives without Redis.
    pub store: StoreConfig,
    /// The Redis cluster backend (used when `url` is set).
    pub redis: RedisConfig,
    /// The transport.
    pub server: ServerConfig,
    /// Set by [`load`] when development mode chose open membership because nothing else
    /// chose a join rule; the start-up log says so. Not a setting.
    #[serde(skip)]
    pub membership_from_development_mode: bool,
}

impl Config {
    /// Development mode: a loopback bind and no JWT secret or public key. Only then does the
    /// server accept tokens signed with the published [`DEV_JWT_SECRET`] (the one `plume
    /// token` signs with by default), and, unless a join rule was chosen, use open membership
    /// so that the README's quick start can chat without the backend API.
    pub fn development_mode(&self) -> bool {
        self.auth.jwt_secret.is_none()
            && self.auth.jwt_public_key.is_none()
            && self.server.bind.ip().is_loopback()
    }

    /// Whether the web chat is served: as configured, else on for a loopback bind.
    pub fn web_enabled(&self) -> bool {
        match self.web {
            Some(switch) => switch == Switch::On,
            None => self.server.bind.ip().is_loopback(),
        }
    }

    /// The configuration with secrets replaced, for `--print-config`.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        let hide = |s: &mut Option<String>| {
            if s.is_some() {
                *s = Some("<redacted>".into());
            }
        };
        hide(&mut c.api_key);
        hide(&mut c.auth.jwt_secret);
        c.redis.url = plume_redis::redact_url(&c.redis.url);
        c
    }
}

/// Reads the config file, if any.
pub fn read_file(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(read_file_and_membership(path)?.0)
}

/// Reads the config file, if any, and tells whether it sets `chat.membership` (serde fills a
/// missing key with the default, so only the text can tell a chosen `strict` from none).
fn read_file_and_membership(path: Option<&PathBuf>) -> anyhow::Result<(Config, bool)> {
    let Some(path) = path else {
        return Ok((Config::default(), false));
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let parse = || format!("parsing config file {}", path.display());
    let config: Config = toml::from_str(&text).with_context(parse)?;
    let table: toml::Table = toml::from_str(&text).with_context(parse)?;
    let sets_membership = table
        .get("chat")
        .and_then(|chat| chat.get("membership"))
        .is_some();
    Ok((config, sets_membership))
}

/// Builds the effective configuration from the file (if any) and the flags/env.
pub fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    let (mut config, file_sets_membership) = read_file_and_membership(args.config.as_ref())?;
    apply(&mut config, args)?;
    // An empty API key (`PLUME_API_KEY=`, as docker-compose.yml passes it when unset) means
    // no key: the API stays off, and --print-config must not pretend a key is set.
    if config.api_key.as_deref() == Some("") {
        config.api_key = None;
    }
    validate(&config)?;
    if config.web.is_none() {
        config.web = Some(if config.server.bind.ip().is_loopback() {
            Switch::On
        } else {
            Switch::Off
        });
    }
    let membership_chosen = file_sets_membership || args.membership.is_some();
    if config.development_mode() && !membership_chosen {
        config.chat.membership = Membership::Open;
        config.membership_from_development_mode = true;
    }
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
    if let Some(secs) = args.write_timeout {
        server.write_timeout =
            Duration::try_from_secs_f64(secs).context("--write-timeout must be >= 0")?;
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
    if let Some(n) = args.outbound_max_bytes {
        server.socket.outbound_max_bytes = n;
    }
    if let Some(n) = args.max_connections {
        server.max_connections = n;
    }
    if let Some(n) = args.drain_batch_size {
        server.drain_batch_size = n;
    }
    if let Some(secs) = args.drain_interval {
        server.drain_interval =
            Duration::try_from_secs_f64(secs).context("--drain-interval must be >= 0")?;
    }
    if let Some(secs) = args.handshake_timeout {
        server.handshake_timeout =
            Duration::try_from_secs_f64(secs).context("--handshake-timeout must be >= 0")?;
    }
    if let Some(n) = args.max_pushes_per_second {
        server.socket.max_pushes_per_second = n;
    }
    if let Some(n) = args.push_burst {
        server.socket.push_burst = n;
    }
    if let Some(n) = args.max_pushes_per_second_per_user {
        server.socket.max_pushes_per_second_per_id = Some(n);
    }
    if let Some(n) = args.max_joins_per_second {
        server.socket.max_joins_per_second = n;
    }
    if let Some(on) = args.websocket {
        server.websocket = on;
    }
    if let Some(on) = args.longpoll {
        server.longpoll.enabled = on;
    }
    if let Some(secs) = args.longpoll_window {
        server.longpoll.window =
            Duration::try_from_secs_f64(secs).context("--longpoll-window must be >= 0")?;
    }
    if let Some(origins) = &args.check_origin {
        server.check_origin = origins.iter().filter(|o| !o.is_empty()).cloned().collect();
    }
    if let Some(format) = args.log_format {
        config.log_format = format;
    }
    if let Some(secret) = &args.jwt_secret {
        config.auth.jwt_secret = Some(secret.clone());
    }
    if let Some(path) = &args.jwt_public_key {
        config.auth.jwt_public_key = Some(path.clone());
    }
    if let Some(aud) = &args.jwt_audience {
        config.auth.jwt_audience = Some(aud.clone());
    }
    if let Some(iss) = &args.jwt_issuer {
        config.auth.jwt_issuer = Some(iss.clone());
    }
    if let Some(alg) = args.jwt_algorithm {
        config.auth.jwt_algorithm = Some(match alg {
            JwtAlgorithm::RS256 => PublicKeyAlgorithm::RS256,
            JwtAlgorithm::ES256 => PublicKeyAlgorithm::ES256,
        });
    }
    let chat = &mut config.chat;
    if let Some(m) = args.membership {
        chat.membership = match m {
            MembershipArg::Strict => Membership::Strict,
            MembershipArg::Open => Membership::Open,
        };
    }
    if let Some(n) = args.max_message_chars {
        chat.max_message_chars = n;
    }
    if let Some(secs) = args.idempotency_ttl {
        chat.idempotency_ttl =
            Duration::try_from_secs_f64(secs).context("--idempotency-ttl must be >= 0")?;
    }
    if let Some(n) = args.pending_limit {
        chat.pending_limit = n;
    }
    if let Some(n) = args.pending_bytes_limit {
        chat.pending_bytes_limit = n;
    }
    if let Some(n) = args.max_id_bytes {
        chat.max_id_bytes = n;
    }
    if let Some(n) = args.history_limit {
        chat.history_limit = n;
    }
    if let Some(secs) = args.history_ttl {
        chat.history_ttl =
            Duration::try_from_secs_f64(secs).context("--history-ttl must be >= 0")?;
    }
    if let Some(n) = args.recovery_limit {
        chat.recovery_limit = n;
    }
    if let Some(secs) = args.presence_interval {
        chat.presence_interval =
            Duration::try_from_secs_f64(secs).context("--presence-interval must be >= 0")?;
    }
    if let Some(secs) = args.online_linger {
        chat.online_linger =
            Duration::try_from_secs_f64(secs).context("--online-linger must be >= 0")?;
    }
    if let Some(n) = args.online_fanout_max_members {
        chat.online_fanout_max_members = n;
    }
    if let Some(n) = args.presence_max_members {
        chat.presence_max_members = n;
    }
    if let Some(kind) = args.store {
        config.store.kind = kind;
    }
    if let Some(dir) = &args.data_dir {
        config.store.data_dir = dir.clone();
    }
    if let Some(key) = &args.api_key {
        config.api_key = Some(key.clone());
    }
    if let Some(url) = &args.redis_url {
        config.redis.url = url.clone();
    }
    if let Some(id) = &args.node_id {
        config.redis.node_id = id.clone();
    }
    if let Some(secs) = args.node_ttl {
        config.redis.node_ttl =
            Duration::try_from_secs_f64(secs).context("--node-ttl must be >= 0")?;
    }
    if args.echo_channel {
        config.echo_channel = true;
    }
    if let Some(web) = args.web {
        config.web = Some(web);
    }
    Ok(())
}

/// The size limits: each at least 1, none above the frame limit (a client could not reach
/// it), and ids short enough that `notifications:{user_id}` fits the topic limit.
fn validate_limits(config: &Config) -> anyhow::Result<()> {
    let (s, c) = (&config.server, &config.chat);
    let frame = s.max_frame_bytes;
    let sizes = [
        ("server.socket.max_topic_bytes", s.socket.max_topic_bytes),
        ("server.socket.max_event_bytes", s.socket.max_event_bytes),
        (
            "server.socket.max_join_payload_bytes",
            s.socket.max_join_payload_bytes,
        ),
        ("chat.max_id_bytes", c.max_id_bytes),
        ("chat.max_mobile_ref_id_bytes", c.max_mobile_ref_id_bytes),
    ];
    for (name, value) in sizes {
        if value == 0 || value > frame {
            bail!("{name} must be from 1 to max frame bytes ({frame}), not {value}");
        }
    }
    let longest_prefix = plume_chat::events::NOTIFICATIONS_PREFIX.len();
    if c.max_id_bytes + longest_prefix > s.socket.max_topic_bytes {
        bail!(
            "chat.max_id_bytes ({}) leaves no room for the topic prefix within \
             server.socket.max_topic_bytes ({}): at most {}",
            c.max_id_bytes,
            s.socket.max_topic_bytes,
            s.socket.max_topic_bytes.saturating_sub(longest_prefix)
        );
    }
    if c.pending_bytes_limit == 0 || c.max_send_keys == 0 || c.max_send_keys_per_user == 0 {
        bail!("pending bytes limit and send key caps must be at least 1");
    }
    Ok(())
}

/// Refuses an empty JWT secret. It is not taken as "no secret": on a loopback address that
/// would silently switch to development mode (published secret, open membership) when the
/// user meant to set one, and an empty HMAC key would let anyone sign tokens.
pub fn check_jwt_secret(secret: Option<&str>) -> anyhow::Result<()> {
    if secret == Some("") {
        bail!(
            "the JWT secret is empty (PLUME_JWT_SECRET= or jwt_secret = \"\"): set a secret, \
             or unset it to use the development secret on a loopback address"
        );
    }
    Ok(())
}

fn validate(config: &Config) -> anyhow::Result<()> {
    let s = &config.server;
    if s.idle_timeout.is_zero() {
        bail!("idle timeout must be more than 0 seconds");
    }
    if s.write_timeout.is_zero() {
        bail!("write timeout must be more than 0 seconds");
    }
    if s.max_frame_bytes < 1024 {
        bail!("max frame bytes must be at least 1024");
    }
    if s.socket.outbound_capacity == 0 {
        bail!("outbound capacity must be at least 1");
    }
    if s.socket.outbound_max_bytes < 1024 {
        bail!("outbound max bytes must be at least 1024");
    }
    if s.max_connections == 0 {
        bail!("max connections must be at least 1");
    }
    if s.longpoll.window.is_zero() || s.longpoll.window > Duration::from_secs(15) {
        // phoenix.js gives up on a request after 20 s (longpollerTimeout).
        bail!("longpoll window must be more than 0 and at most 15 seconds");
    }
    if s.longpoll.max_post_frames == 0 || s.longpoll.max_post_bytes < 1024 {
        bail!("longpoll max_post_frames must be at least 1 and max_post_bytes at least 1024");
    }
    if !s.websocket && !s.longpoll.enabled {
        bail!("websocket and longpoll are both off: clients could not connect");
    }
    if s.drain_batch_size == 0 {
        bail!("drain batch size must be at least 1");
    }
    if s.drain_interval > Duration::from_secs(60) {
        bail!("drain interval must be at most 60 seconds");
    }
    if s.handshake_timeout.is_zero() {
        bail!("handshake timeout must be more than 0 seconds");
    }
    if s.body_timeout.is_zero() {
        bail!("body timeout must be more than 0 seconds");
    }
    if s.max_body_bytes_in_flight < plume_server::api::MAX_API_BODY {
        bail!(
            "max body bytes in flight must be at least {} (one largest API request)",
            plume_server::api::MAX_API_BODY
        );
    }
    validate_limits(config)?;
    if config.chat.max_message_chars == 0 {
        bail!("max message chars must be at least 1");
    }
    if config.chat.pending_limit == 0 {
        bail!("pending limit must be at least 1");
    }
    if config.chat.history_limit == 0 {
        bail!("history limit must be at least 1");
    }
    if config.chat.history_ttl < Duration::from_secs(1) {
        bail!("history TTL must be at least 1 second");
    }
    if config.chat.presence_interval < Duration::from_millis(1)
        || config.chat.presence_interval > Duration::from_secs(10)
    {
        bail!("presence interval must be from 0.001 to 10 seconds");
    }
    if !config.redis.node_id.is_empty() && !plume_redis::valid_node_id(&config.redis.node_id) {
        bail!("node id must be 1-64 characters of A-Z a-z 0-9 . _ -");
    }
    if config.redis.node_ttl < Duration::from_secs(1) {
        bail!("node TTL must be at least 1 second");
    }
    let auth = &config.auth;
    if auth.jwt_secret.is_some() && auth.jwt_public_key.is_some() {
        bail!("configure either a JWT secret or a JWT public key, not both");
    }
    check_jwt_secret(auth.jwt_secret.as_deref())?;
    if auth
        .jwt_public_key
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        bail!(
            "the JWT public key path is empty (PLUME_JWT_PUBLIC_KEY= or jwt_public_key = \"\"): \
             give the PEM file, or unset it"
        );
    }
    if auth.jwt_secret.is_none() && auth.jwt_public_key.is_none() && !config.development_mode() {
        bail!(
            "listening on {} needs PLUME_JWT_SECRET or PLUME_JWT_PUBLIC_KEY \
             (the development secret is only used on loopback addresses)",
            s.bind
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_values() {
        let mut config: Config = toml::from_str(
            "[server]\nbind = \"0.0.0.0:5000\"\nidle_timeout = 30.0\nmax_frame_bytes = 4096\n\
             [auth]\njwt_secret = \"s\"\n[chat]\nmembership = \"open\"\n",
        )
        .unwrap();
        assert_eq!(config.server.idle_timeout, Duration::from_secs(30));
        assert_eq!(config.chat.membership, Membership::Open);
        let args = ServeArgs {
            max_frame_bytes: Some(8192),
            max_connections: Some(50),
            handshake_timeout: Some(2.5),
            write_timeout: Some(45.0),
            drain_batch_size: Some(250),
            drain_interval: Some(0.25),
            membership: Some(MembershipArg::Strict),
            ..ServeArgs::default()
        };
        apply(&mut config, &args).unwrap();
        assert_eq!(config.server.bind.to_string(), "0.0.0.0:5000");
        assert_eq!(config.server.max_frame_bytes, 8192);
        assert_eq!(config.server.max_connections, 50);
        assert_eq!(config.server.handshake_timeout, Duration::from_millis(2500));
        assert_eq!(config.server.write_timeout, Duration::from_secs(45));
        assert_eq!(config.server.drain_batch_size, 250);
        assert_eq!(config.server.drain_interval, Duration::from_millis(250));
        assert_eq!(config.chat.membership, Membership::Strict);
        assert!(validate(&config).is_ok());
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = toml::to_string_pretty(&Config::default()).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
    }

    #[test]
    fn invalid_settings_are_rejected() {
        let mut config = Config::default();
        config.server.idle_timeout = Duration::ZERO;
        assert!(validate(&config).is_err());
        let mut config = Config::default();
        config.server.write_timeout = Duration::ZERO;
        assert!(validate(&config).is_err(), "every write would time out");
        let mut config = Config::default();
        config.server.drain_batch_size = 0;
        assert!(
            validate(&config).is_err(),
            "a drain of batches of none never ends"
        );
        let mut public = Config::default();
        public.server.bind = "0.0.0.0:4000".parse().unwrap();
        assert!(
            validate(&public).is_err(),
            "non-loopback without a key must not start"
        );
        public.auth.jwt_secret = Some("s".into());
        assert!(validate(&public).is_ok());
        let breakages: [fn(&mut Config); 4] = [
            |c| c.server.max_connections = 0,
            |c| c.server.handshake_timeout = Duration::ZERO,
            |c| c.server.body_timeout = Duration::ZERO,
            |c| c.server.max_body_bytes_in_flight = 1000,
        ];
        for broken in breakages {
            let mut c = public.clone();
            broken(&mut c);
            assert!(validate(&c).is_err(), "{:?}", c.server);
        }
        public.auth.jwt_public_key = Some("k.pem".into());
        assert!(
            validate(&public).is_err(),
            "secret and public key are exclusive"
        );
    }

    #[test]
    fn limits_are_bounded_by_the_frame_and_topic_limits() {
        assert!(validate(&dev()).is_ok());
        let mut c = dev();
        c.server.socket.max_join_payload_bytes = c.server.max_frame_bytes + 1;
        assert!(validate(&c).is_err(), "over the frame limit");
        let mut c = dev();
        c.chat.max_id_bytes = 250;
        let err = validate(&c).unwrap_err().to_string();
        assert!(err.contains("at most 241"), "{err}");
        let mut c = dev();
        c.server.socket.max_event_bytes = 0;
        assert!(validate(&c).is_err());
        let mut c = dev();
        let args = ServeArgs {
            max_pushes_per_second: Some(7),
            push_burst: Some(9),
            max_pushes_per_second_per_user: Some(11),
            max_joins_per_second: Some(3),
            max_id_bytes: Some(64),
            pending_bytes_limit: Some(4096),
            ..ServeArgs::default()
        };
        apply(&mut c, &args).unwrap();
        let socket = &c.server.socket;
        assert_eq!(
            (
                socket.max_pushes_per_second,
                socket.push_burst,
                socket.max_joins_per_second
            ),
            (7, 9, 3)
        );
        assert_eq!(socket.max_pushes_per_second_per_id, Some(11));
        assert_eq!(
            (c.chat.max_id_bytes, c.chat.pending_bytes_limit),
            (64, 4096)
        );
    }

    /// The defaults on a loopback bind (development mode), which validate.
    fn dev() -> Config {
        Config::default()
    }

    #[test]
    fn print_config_hides_secrets() {
        let mut c = Config {
            api_key: Some("k".into()),
            ..Config::default()
        };
        c.auth.jwt_secret = Some("s".into());
        c.redis.url = "redis://:hunter2@redis:6379/0".into();
        let text = toml::to_string(&c.redacted()).unwrap();
        assert!(!text.contains("\"k\"") && !text.contains("\"s\""), "{text}");
        assert!(
            !text.contains("hunter2") && text.contains("@redis:6379/0"),
            "{text}"
        );
    }
}
