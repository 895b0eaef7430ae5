//! The kinds of config value. Each kind says how a key of that kind is
//! written (its serde type, and how an environment variable's text becomes
//! it), how it is checked (an error naming the key) and how it reads in the
//! reference table; a key's declaration in `keys` picks a kind and gives its
//! default and range.

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use limits_core::NanoUsd;
use limits_store::Secret;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

use super::error::{ConfigError, Result};
use super::redact_url;

/// How an environment variable's text is turned into a config value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EnvKind {
    /// `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`, any case).
    Bool,
    /// An integer or a float.
    Number,
    /// Kept as text: strings, paths, addresses, durations and choices, so a
    /// path such as `2024` stays a path.
    Text,
}

/// A kind of config value.
pub(crate) trait Setting {
    /// What the file or the environment holds, before any checking.
    type Raw: DeserializeOwned + fmt::Debug;
    /// What the validated config holds.
    type Value;
    /// How the key is set from the environment; `None` keeps it to the file.
    const ENV: Option<EnvKind>;

    /// The value of the key `key`, or its default when it is not set.
    fn check(&self, key: &str, raw: Option<&Self::Raw>) -> Result<Self::Value>;

    /// The reference table's "Type" column.
    fn type_doc(&self) -> String;

    /// The reference table's "Default" column; most keys without a default
    /// are simply unset.
    fn default_doc(&self) -> String {
        "none".to_owned()
    }
}

fn greater_than_zero(key: &str) -> ConfigError {
    ConfigError::new(key, "must be greater than 0")
}

/// A switch, `true` or `false`.
pub(crate) struct Flag(pub bool);

impl Setting for Flag {
    type Raw = bool;
    type Value = bool;
    const ENV: Option<EnvKind> = Some(EnvKind::Bool);

    fn check(&self, _: &str, raw: Option<&bool>) -> Result<bool> {
        Ok(raw.copied().unwrap_or(self.0))
    }

    fn type_doc(&self) -> String {
        "bool".to_owned()
    }

    fn default_doc(&self) -> String {
        format!("`{}`", self.0)
    }
}

/// A switch whose default depends on other keys: `None` when unset.
pub(crate) struct Auto(pub &'static str);

impl Setting for Auto {
    type Raw = bool;
    type Value = Option<bool>;
    const ENV: Option<EnvKind> = Some(EnvKind::Bool);

    fn check(&self, _: &str, raw: Option<&bool>) -> Result<Option<bool>> {
        Ok(raw.copied())
    }

    fn type_doc(&self) -> String {
        "bool".to_owned()
    }

    fn default_doc(&self) -> String {
        self.0.to_owned()
    }
}

/// Another kind, settable in the file only.
pub(crate) struct FileOnly<K>(pub K);

impl<K: Setting> Setting for FileOnly<K> {
    type Raw = K::Raw;
    type Value = K::Value;
    const ENV: Option<EnvKind> = None;

    fn check(&self, key: &str, raw: Option<&K::Raw>) -> Result<K::Value> {
        self.0.check(key, raw)
    }

    fn type_doc(&self) -> String {
        self.0.type_doc()
    }

    fn default_doc(&self) -> String {
        self.0.default_doc()
    }
}

/// A fraction in (0, 1], kept as parts per million; unset by default.
pub(crate) struct Fraction;

impl Setting for Fraction {
    type Raw = f64;
    type Value = Option<u32>;
    const ENV: Option<EnvKind> = Some(EnvKind::Number);

    fn check(&self, key: &str, raw: Option<&f64>) -> Result<Option<u32>> {
        let Some(&fraction) = raw else {
            return Ok(None);
        };
        if !fraction.is_finite() || fraction <= 0.0 || fraction > 1.0 {
            return Err(ConfigError::new(
                key,
                format!(
                    "must be a fraction greater than 0 and at most 1 (0.8 = 80%), got {fraction}"
                ),
            ));
        }
        // In (0, 1], so the product is in (0, 1e6] and fits a u32. A fraction
        // below half a ppm would round to "alert on any spend"; keep at least 1.
        Ok(Some(((fraction * 1e6).round() as u32).max(1)))
    }

    fn type_doc(&self) -> String {
        "float in (0, 1]".to_owned()
    }
}

/// Alert thresholds: a list of fractions in (0, 1], at most eight; one
/// number is a list of one; from the environment, comma-separated.
pub(crate) struct Fractions;

/// What `Fractions` reads: a list, one number, or (from the environment)
/// text.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum RawFractions {
    One(f64),
    List(Vec<f64>),
    Text(String),
}

impl Setting for Fractions {
    type Raw = RawFractions;
    type Value = Option<limits_core::Thresholds>;
    const ENV: Option<EnvKind> = Some(EnvKind::Text);

    fn check(
        &self,
        key: &str,
        raw: Option<&RawFractions>,
    ) -> Result<Option<limits_core::Thresholds>> {
        let values: Vec<f64> = match raw {
            None => return Ok(None),
            Some(RawFractions::One(x)) => vec![*x],
            Some(RawFractions::List(xs)) => xs.clone(),
            Some(RawFractions::Text(text)) => text
                .split(',')
                .map(|part| {
                    part.trim().parse::<f64>().map_err(|_| {
                        ConfigError::new(
                            key,
                            format!(
                                "expected fractions separated by commas (0.5,0.8), got {text:?}"
                            ),
                        )
                    })
                })
                .collect::<Result<_>>()?,
        };
        let mut ppm = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            let at = format!("{key}[{i}]");
            ppm.extend(Fraction.check(&at, Some(v))?);
        }
        if ppm.is_empty() {
            return Ok(None);
        }
        limits_core::Thresholds::new(ppm).map(Some).ok_or_else(|| {
            ConfigError::new(
                key,
                format!(
                    "at most {} thresholds, got {}",
                    limits_core::alerts::MAX_THRESHOLDS,
                    values.len()
                ),
            )
        })
    }

    fn type_doc(&self) -> String {
        "list of floats in (0, 1], at most 8".to_owned()
    }
}

/// A count that must be positive, with a default.
pub(crate) struct Count<T>(pub T);

impl<T: TryFrom<u64> + Copy + fmt::Display> Setting for Count<T> {
    type Raw = u64;
    type Value = T;
    const ENV: Option<EnvKind> = Some(EnvKind::Number);

    fn check(&self, key: &str, raw: Option<&u64>) -> Result<T> {
        match raw {
            None => Ok(self.0),
            Some(0) => Err(greater_than_zero(key)),
            Some(&n) => T::try_from(n).map_err(|_| ConfigError::new(key, "is too large")),
        }
    }

    fn type_doc(&self) -> String {
        "integer > 0".to_owned()
    }

    fn default_doc(&self) -> String {
        format!("`{}`", self.0)
    }
}

/// `storage.redis.shards`: how many hash tags subjects are spread over; 0
/// when unset, for the store's own default (one on a server, more on a
/// cluster).
pub(crate) struct Shards;

impl Setting for Shards {
    type Raw = u64;
    type Value = u16;
    const ENV: Option<EnvKind> = Some(EnvKind::Number);

    fn check(&self, key: &str, raw: Option<&u64>) -> Result<u16> {
        match raw {
            None => Ok(0),
            Some(&n) if (1..=1024).contains(&n) => Ok(n as u16),
            Some(_) => Err(ConfigError::new(key, "must be between 1 and 1024")),
        }
    }

    fn type_doc(&self) -> String {
        "integer 1–1024".to_owned()
    }

    fn default_doc(&self) -> String {
        "1; with `cluster`, 64".to_owned()
    }
}

/// The values a duration key takes: between `min` and `max`, or zero where
/// zero means "off". A duration outside a sane range (a sweep every
/// nanosecond, a lease for a billion years) is a mistake, not a setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Range {
    pub min: Duration,
    pub max: Duration,
    /// Zero is allowed (and means off, or "at once").
    pub zero: bool,
}

impl Range {
    pub(crate) const fn new(min: Duration, max: Duration) -> Range {
        Range {
            min,
            max,
            zero: false,
        }
    }

    /// The same range, with zero allowed too.
    pub(crate) const fn or_zero(self) -> Range {
        Range { zero: true, ..self }
    }
}

/// A duration with a default, within a range.
pub(crate) struct Span(pub Duration, pub Range);

impl Setting for Span {
    type Raw = DurationText;
    type Value = Duration;
    const ENV: Option<EnvKind> = Some(EnvKind::Text);

    fn check(&self, key: &str, raw: Option<&DurationText>) -> Result<Duration> {
        let Some(DurationText(text)) = raw else {
            return Ok(self.0);
        };
        let parsed = humantime::parse_duration(text.trim()).map_err(|e| {
            ConfigError::new(
                key,
                format!(
                    "invalid duration {text:?} ({e}); write a number and a unit, e.g. \"30s\", \
                     \"5m\", \"100ms\""
                ),
            )
        })?;
        let Range { min, max, zero } = self.1;
        if parsed.is_zero() {
            if zero {
                return Ok(parsed);
            }
            return Err(greater_than_zero(key));
        }
        if parsed < min || parsed > max {
            let show = |d: Duration| humantime::format_duration(d).to_string();
            // A range that starts at zero includes "off" already.
            let off = if zero && !min.is_zero() {
                " (or 0 for off)"
            } else {
                ""
            };
            return Err(ConfigError::new(
                key,
                format!(
                    "must be between {} and {}{off}, got {}",
                    show(min),
                    show(max),
                    text.trim()
                ),
            ));
        }
        Ok(parsed)
    }

    fn type_doc(&self) -> String {
        let Range { min, max, zero } = self.1;
        match (zero, min.is_zero()) {
            (true, true) => format!("duration, 0 – {}", words(max)),
            (true, false) => format!("`0s`, or {} – {}", words(min), words(max)),
            _ => format!("duration, {} – {}", words(min), words(max)),
        }
    }

    fn default_doc(&self) -> String {
        format!("`{}`", humantime::format_duration(self.0))
    }
}

/// A duration for a reader: `7 days`, `1 h`, `5 min`, `100 µs`.
fn words(d: Duration) -> String {
    const UNITS: [(u128, &str, &str); 6] = [
        (86_400_000_000_000, "day", "days"),
        (3_600_000_000_000, "h", "h"),
        (60_000_000_000, "min", "min"),
        (1_000_000_000, "s", "s"),
        (1_000_000, "ms", "ms"),
        (1_000, "µs", "µs"),
    ];
    let nanos = d.as_nanos();
    for (unit, one, many) in UNITS {
        if nanos >= unit && nanos.is_multiple_of(unit) {
            let n = nanos / unit;
            return format!("{n} {}", if n == 1 { one } else { many });
        }
    }
    format!("{nanos} ns")
}

/// A duration as written, e.g. `"30s"`; parsed during validation. Its own
/// type so that a bare number (`30`, which has no unit) is reported as "expected
/// a duration" rather than "expected a string".
#[derive(Debug)]
pub(crate) struct DurationText(String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DurationText, D::Error> {
        d.deserialize_str(DurationVisitor)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = DurationText;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration with a unit, such as \"30s\", \"5m\" or \"100ms\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationText, E> {
        Ok(DurationText(v.to_owned()))
    }
}

/// A size in bytes with a default, within `min..=max` bytes.
pub(crate) struct Size(pub usize, pub RangeInclusive<u64>);

impl Setting for Size {
    type Raw = SizeText;
    type Value = usize;
    const ENV: Option<EnvKind> = Some(EnvKind::Text);

    fn check(&self, key: &str, raw: Option<&SizeText>) -> Result<usize> {
        let bytes = match raw {
            None => return Ok(self.0),
            Some(SizeText::Bytes(n)) => *n,
            Some(SizeText::Text(t)) => t
                .trim()
                .parse::<bytesize::ByteSize>()
                .map_err(|e| {
                    ConfigError::new(
                        key,
                        format!("invalid size {t:?} ({e}); write bytes or a unit, e.g. \"64KiB\""),
                    )
                })?
                .as_u64(),
        };
        if !self.1.contains(&bytes) {
            let show = |b: u64| bytesize::ByteSize::b(b).display().iec().to_string();
            return Err(ConfigError::new(
                key,
                format!(
                    "must be between {} and {}, got {bytes} bytes",
                    show(*self.1.start()),
                    show(*self.1.end())
                ),
            ));
        }
        usize::try_from(bytes).map_err(|_| ConfigError::new(key, "is too large"))
    }

    fn type_doc(&self) -> String {
        format!(
            "size, {} – {}",
            bytes(*self.1.start(), " "),
            bytes(*self.1.end(), " ")
        )
    }

    fn default_doc(&self) -> String {
        format!("`{}`", bytes(self.0 as u64, ""))
    }
}

/// A size as written in the config: `64KiB` (or `64 KiB` with `gap`).
fn bytes(n: u64, gap: &str) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    UNITS
        .iter()
        .find(|&&(unit, _)| n >= unit && n.is_multiple_of(unit))
        .map_or_else(
            || n.to_string(),
            |(unit, name)| format!("{}{gap}{name}", n / unit),
        )
}

/// A size in bytes: a whole number, or text with a unit (`64KiB`, `1MB`).
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a size in bytes, such as 65536 or \"64KiB\"")]
pub(crate) enum SizeText {
    Bytes(u64),
    Text(String),
}

/// One of a fixed set of words, compared without regard to case.
pub(crate) struct Choice<T: 'static>(pub T, pub &'static [(&'static str, T)]);

impl<T: Copy + PartialEq> Setting for Choice<T> {
    type Raw = String;
    type Value = T;
    const ENV: Option<EnvKind> = Some(EnvKind::Text);

    fn check(&self, key: &str, raw: Option<&String>) -> Result<T> {
        let Some(text) = raw else {
            return Ok(self.0);
        };
        let wanted = text.trim();
        self.1
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
            .map(|&(_, value)| value)
            .ok_or_else(|| {
                let names: Vec<&str> = self.1.iter().map(|(name, _)| *name).collect();
                ConfigError::new(
                    key,
                    format!(
                        "unknown value {text:?}; expected one of: {}",
                        names.join(", ")
                    ),
                )
            })
    }

    fn type_doc(&self) -> String {
        let names: Vec<String> = self.1.iter().map(|(name, _)| format!("`{name}`")).collect();
        // The table is Markdown: a bare `|` would end the cell.
        names.join(" \\| ")
    }

    fn default_doc(&self) -> String {
        self.1
            .iter()
            .find(|(_, value)| *value == self.0)
            .map_or_else(String::new, |(name, _)| format!("`{name}`"))
    }
}

/// A listening address, `IP:PORT`.
pub(crate) struct Addr(pub SocketAddr);

impl Setting for Addr {
    type Raw = String;
    type Value = SocketAddr;
    const ENV: Option<EnvKind> = Some(EnvKind::Text);

    fn check(&self, key: &str, raw: Option<&String>) -> Result<SocketAddr> {
        let Some(text) = raw else {
            return Ok(self.0);
        };
        text.trim().parse().map_err(|_| {
            ConfigError::new(
                key,
                format!(
                    "invalid address {text:?}: expected IP:PORT such as 0.0.0.0:50051 (host \
                     names are not resolved)"
                ),
            )
        })
    }

    fn type_doc(&self) -> String {
        "IP:PORT".to_owned()
    }

    fn default_doc(&self) -> String {
        format!("`{}`", self.0)
    }
}

/// A listen address that is unset by default; the text says what unset
/// means.
pub(crate) struct OptAddr(pub &'static str);

impl Setting for OptAddr {
    type Raw = String;
    type Value = Option<SocketAddr>;
    const ENV: Option<EnvKind> = Some(EnvKind::Text);

    fn check(&self, key: &str, raw: Option<&String>) -> Result<Option<SocketAddr>> {
        raw.map(|text| Addr(super::DEFAULT_GRPC_ADDR).check(key, Some(text)))
            .transpose()
    }

    fn type_doc(&self) -> String {
        "IP:PORT".to_owned()
    }

    fn default_doc(&self) -> String {
        self.0.to_owned()
    }
}

/// The SHA-256 digest of a credential, as 64 hex digits: the credential
/// itself is never configured.
pub(crate) struct Digest;

impl Setting for Digest {
    type Raw = SecretText;
    type Value = Option<[u8; 32]>;
    const ENV: Option<EnvKind> = Some(EnvKind::Text);

    fn check(&self, key: &str, raw: Option<&SecretText>) -> Result<Option<[u8; 32]>> {
        raw.map(|SecretText(text)| parse_digest(key, text))
            .transpose()
    }

    fn type_doc(&self) -> String {
        "64 hex digits".to_owned()
    }
}

/// 64 hex digits as a SHA-256 digest, or an error naming `key`.
pub(crate) fn parse_digest(key: &str, text: &str) -> Result<[u8; 32]> {
    let bad = || {
        ConfigError::new(
            key,
            "must be the SHA-256 of the token as 64 hex digits (e.g. `printf %s \"$TOKEN\" | \
             sha256sum`), never the token itself",
        )
    };
    let bytes = hex::decode(text.trim()).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

/// A path, unset by default; the text says what an unset path means.
pub(crate) struct FilePath(pub &'static str);

impl Setting for FilePath {
    type Raw = String;
    type Value = Option<PathBuf>;
    const ENV: Option<EnvKind> = Some(EnvKind::Text);

    fn check(&self, key: &str, raw: Option<&String>) -> Result<Option<PathBuf>> {
        match raw {
            None => Ok(None),
            Some(p) if p.trim().is_empty() => Err(ConfigError::new(key, "must not be empty")),
            // Trimmed: a space around a path is never part of it, and a
            // quoted YAML string keeps one easily.
            Some(p) => Ok(Some(PathBuf::from(p.trim()))),
        }
    }

    fn type_doc(&self) -> String {
        "path".to_owned()
    }

    fn default_doc(&self) -> String {
        self.0.to_owned()
    }
}

/// A Redis URL, `redis://` or `rediss://`.
pub(crate) struct RedisUrl(pub &'static str);

impl RedisUrl {
    /// Checks one URL (also each of `storage.redis.nodes`).
    pub(crate) fn parse(key: &str, text: &str) -> Result<String> {
        let text = text.trim();
        if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
            return Err(ConfigError::new(
                key,
                format!(
                    "must be a redis:// or rediss:// URL, got {:?}",
                    redact_url(text)
                ),
            ));
        }
        Ok(text.to_owned())
    }
}

impl Setting for RedisUrl {
    type Raw = String;
    type Value = String;
    const ENV: Option<EnvKind> = Some(EnvKind::Text);

    fn check(&self, key: &str, raw: Option<&String>) -> Result<String> {
        RedisUrl::parse(key, raw.map_or(self.0, String::as_str))
    }

    fn type_doc(&self) -> String {
        "`redis://` or `rediss://` URL".to_owned()
    }

    fn default_doc(&self) -> String {
        format!("`{}`", self.0)
    }
}

/// The hash tag of every Redis key: not empty, no braces.
pub(crate) struct KeyPrefix(pub &'static str);

impl Setting for KeyPrefix {
    type Raw = String;
    type Value = String;
    const ENV: Option<EnvKind> = Some(EnvKind::Text);

    fn check(&self, key: &str, raw: Option<&String>) -> Result<String> {
        let prefix = raw.map_or(self.0, String::as_str);
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(ConfigError::new(
                key,
                "must be non-empty and without braces (it is used as the hash tag)",
            ));
        }
        Ok(prefix.to_owned())
    }

    fn type_doc(&self) -> String {
        "string, no braces".to_owned()
    }

    fn default_doc(&self) -> String {
        format!("`{}`", self.0)
    }
}

/// Text that must not reach a log line through a `{:?}`.
#[derive(Deserialize)]
#[serde(transparent)]
pub(crate) struct SecretText(String);

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A password, unset by default; an empty one is the same as none.
pub(crate) struct Password;

impl Setting for Password {
    type Raw = SecretText;
    type Value = Option<String>;
    const ENV: Option<EnvKind> = Some(EnvKind::Text);

    fn check(&self, _: &str, raw: Option<&SecretText>) -> Result<Option<String>> {
        Ok(raw.map(|SecretText(p)| p.clone()).filter(|p| !p.is_empty()))
    }

    fn type_doc(&self) -> String {
        "string".to_owned()
    }
}

/// The server secret, given inline; surrounding whitespace is ignored.
pub(crate) struct ServerSecret;

impl Setting for ServerSecret {
    type Raw = SecretText;
    type Value = Option<Secret>;
    const ENV: Option<EnvKind> = Some(EnvKind::Text);

    fn check(&self, key: &str, raw: Option<&SecretText>) -> Result<Option<Secret>> {
        raw.map(|SecretText(s)| {
            Secret::new(s.trim().as_bytes()).map_err(|e| ConfigError::new(key, e.to_string()))
        })
        .transpose()
    }

    fn type_doc(&self) -> String {
        format!("string, ≥ {} bytes", limits_store::MIN_SECRET_BYTES)
    }
}

/// A `tracing_subscriber::EnvFilter` directive.
pub(crate) struct LogFilter(pub &'static str);

impl Setting for LogFilter {
    type Raw = String;
    type Value = String;
    const ENV: Option<EnvKind> = Some(EnvKind::Text);

    fn check(&self, key: &str, raw: Option<&String>) -> Result<String> {
        let level = raw.map_or(self.0, String::as_str).trim();
        if level.is_empty() {
            return Err(ConfigError::new(key, "must not be empty"));
        }
        // Parsed here so a broken filter fails at start-up with its key, not
        // as a silently ignored directive.
        tracing_subscriber::EnvFilter::builder()
            .parse(level)
            .map_err(|e| ConfigError::new(key, format!("invalid filter {level:?}: {e}")))?;
        Ok(level.to_owned())
    }

    fn type_doc(&self) -> String {
        "tracing filter".to_owned()
    }

    fn default_doc(&self) -> String {
        format!("`{}`", self.0)
    }
}

/// A per-id budget in USD: unset, or more than zero (a zero budget would
/// block everything; leave the key out for "no budget"). Kept in nano-USD.
pub(crate) struct Usd;

impl Setting for Usd {
    type Raw = f64;
    type Value = Option<NonZeroU64>;
    const ENV: Option<EnvKind> = Some(EnvKind::Number);

    fn check(&self, key: &str, raw: Option<&f64>) -> Result<Option<NonZeroU64>> {
        let Some(&usd) = raw else {
            return Ok(None);
        };
        let nanos = NanoUsd::try_from_usd(usd).map_err(|e| ConfigError::new(key, e.to_string()))?;
        NonZeroU64::new(nanos.0)
            .map(Some)
            .ok_or_else(|| greater_than_zero(key))
    }

    fn type_doc(&self) -> String {
        "USD, > 0, ≤ 1e9".to_owned()
    }
}

/// A price in USD, which must be given (zero is a price).
pub(crate) struct Price;

impl Setting for Price {
    type Raw = f64;
    type Value = NanoUsd;
    const ENV: Option<EnvKind> = Some(EnvKind::Number);

    fn check(&self, key: &str, raw: Option<&f64>) -> Result<NanoUsd> {
        let &usd = raw.ok_or_else(|| ConfigError::new(key, "required key is missing"))?;
        NanoUsd::try_from_usd(usd).map_err(|e| ConfigError::new(key, e.to_string()))
    }

    fn type_doc(&self) -> String {
        "USD, ≥ 0".to_owned()
    }

    fn default_doc(&self) -> String {
        "required".to_owned()
    }
}

/// A per-id request or token limit: unset, or a positive integer.
pub(crate) struct Limit;

impl Setting for Limit {
    type Raw = u64;
    type Value = Option<NonZeroU64>;
    const ENV: Option<EnvKind> = Some(EnvKind::Number);

    fn check(&self, key: &str, raw: Option<&u64>) -> Result<Option<NonZeroU64>> {
        raw.map(|&n| NonZeroU64::new(n).ok_or_else(|| greater_than_zero(key)))
            .transpose()
    }

    fn type_doc(&self) -> String {
        "integer > 0".to_owned()
    }
}

/// A per-id concurrency limit: unset, or a positive 32-bit integer.
pub(crate) struct Slots;

impl Setting for Slots {
    type Raw = u32;
    type Value = Option<NonZeroU32>;
    const ENV: Option<EnvKind> = Some(EnvKind::Number);

    fn check(&self, key: &str, raw: Option<&u32>) -> Result<Option<NonZeroU32>> {
        raw.map(|&n| NonZeroU32::new(n).ok_or_else(|| greater_than_zero(key)))
            .transpose()
    }

    fn type_doc(&self) -> String {
        "integer > 0".to_owned()
    }
}

/// A display name: unset, or not blank.
pub(crate) struct Alias;

impl Setting for Alias {
    type Raw = String;
    type Value = Option<String>;
    const ENV: Option<EnvKind> = Some(EnvKind::Text);

    fn check(&self, key: &str, raw: Option<&String>) -> Result<Option<String>> {
        match raw {
            Some(alias) if alias.trim().is_empty() => {
                Err(ConfigError::new(key, "must not be empty"))
            }
            other => Ok(other.cloned()),
        }
    }

    fn type_doc(&self) -> String {
        "string".to_owned()
    }
}

/// Another kind whose value, when unset, comes from another key (`.1`
/// names it in the reference table).
pub(crate) struct Inherit<K>(pub K, pub &'static str);

impl<K: Setting> Setting for Inherit<K> {
    type Raw = K::Raw;
    type Value = Option<K::Value>;
    const ENV: Option<EnvKind> = K::ENV;

    fn check(&self, key: &str, raw: Option<&K::Raw>) -> Result<Option<K::Value>> {
        raw.map(|r| self.0.check(key, Some(r))).transpose()
    }

    fn type_doc(&self) -> String {
        self.0.type_doc()
    }

    fn default_doc(&self) -> String {
        self.1.to_owned()
    }
}

/// An IANA time zone name, known to the time-zone database built in.
pub(crate) struct Zone;

impl Setting for Zone {
    type Raw = String;
    type Value = String;
    const ENV: Option<EnvKind> = Some(EnvKind::Text);

    fn check(&self, key: &str, raw: Option<&String>) -> Result<String> {
        let Some(name) = raw else {
            return Ok("UTC".to_owned());
        };
        let name = name.trim();
        limits_core::Calendar::new(name, 0, 1)
            .map(|_| name.to_owned())
            .map_err(|e| ConfigError::new(key, e.to_string()))
    }

    fn type_doc(&self) -> String {
        "IANA time zone".to_owned()
    }

    fn default_doc(&self) -> String {
        "`UTC`".to_owned()
    }
}

/// A day of the month, 1 to 31.
pub(crate) struct Day;

impl Setting for Day {
    type Raw = u64;
    type Value = u8;
    const ENV: Option<EnvKind> = Some(EnvKind::Number);

    fn check(&self, key: &str, raw: Option<&u64>) -> Result<u8> {
        match raw {
            None => Ok(1),
            Some(&n) if (1..=31).contains(&n) => Ok(n as u8),
            Some(n) => Err(ConfigError::new(key, format!("must be 1 to 31, got {n}"))),
        }
    }

    fn type_doc(&self) -> String {
        "integer 1–31".to_owned()
    }

    fn default_doc(&self) -> String {
        "`1`".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_as_written() {
        assert_eq!(words(Duration::from_secs(7 * 86_400)), "7 days");
        assert_eq!(words(Duration::from_secs(3600)), "1 h");
        assert_eq!(words(Duration::from_secs(300)), "5 min");
        assert_eq!(words(Duration::from_micros(100)), "100 µs");
        assert_eq!(bytes(64 * 1024, ""), "64KiB");
        assert_eq!(bytes(1 << 40, " "), "1 TiB");
        assert_eq!(bytes(1000, ""), "1000");
    }

    #[test]
    fn a_range_from_zero_starts_at_0s() {
        let grace = Span(
            Duration::from_secs(10),
            Range::new(Duration::ZERO, Duration::from_secs(3600)).or_zero(),
        );
        let raw = DurationText("2h".to_owned());
        let e = grace.check("k", Some(&raw)).unwrap_err();
        assert_eq!(e.reason, "must be between 0s and 1h, got 2h");
        assert_eq!(grace.type_doc(), "duration, 0 – 1 h");
    }
}
