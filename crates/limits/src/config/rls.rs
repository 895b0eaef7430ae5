//! The configuration of Envoy's rate limit service API (`limits.rls`): how a
//! `ShouldRateLimit` request's domain and descriptors land on limitsd's
//! counters. Two sources, which may be combined for one domain:
//!
//! - **Mappings** (`limits.rls.domains`): descriptor keys that carry an API
//!   key, user, team or org id, whose limits come from the ordinary limit
//!   table (`by_api_key` / `by_user` / `by_team` / `by_org`), and the keys that mark a
//!   descriptor as counting tokens rather than requests.
//! - **Rule files** in the envoyproxy/ratelimit YAML format
//!   (`limits.rls.config_files`, `--rls-config`): a tree of descriptor
//!   keys and values per domain whose leaves carry a `rate_limit`. Each
//!   matched leaf is a counter of its own, keyed by the request's descriptor
//!   entries.
//!
//! # What maps from the envoyproxy/ratelimit format
//!
//! - `unit: second | minute | hour` map exactly onto the rolling
//!   requests-per-second / minute / hour windows. Their fixed, epoch-aligned
//!   windows become rolling windows, which is stricter: a client cannot
//!   spend a whole window's quota just before a boundary and again just
//!   after it.
//! - `unit: day | week | month | year` are rejected at load, naming the key:
//!   limitsd has no request window that long.
//! - `requests_per_unit: 0` is rejected (a limit must be positive; remove
//!   the rule or send such traffic elsewhere).
//! - `unlimited: true`, `shadow_mode`, `name`, nested `descriptors`, a `key`
//!   without `value` (any value, one counter per distinct value) and
//!   wildcard values ending in `*` (a prefix match, one counter per distinct
//!   value) work as upstream. Matching prefers an exact value, then the
//!   first matching wildcard in file order, then a key without value.
//! - `replaces`, `detailed_metric` and `value_to_metric` are accepted and
//!   ignored with a start-up warning: without `replaces` every matching
//!   limit applies (stricter); the other two only shape upstream's stats.
//! - Any other key is an error, as upstream. YAML merge keys (`<<: *anchor`)
//!   are resolved, as upstream's YAML reader resolves them.
//! - A domain defined by two files is an error (upstream's default).
//!
//! In a domain that also has a mapping with `tokens` keys, a rule below a
//! token key counts tokens: `minute` and `hour` become tokens-per-minute /
//! tokens-per-hour windows, and `second` is rejected (there is no per-second
//! token window).

use std::num::NonZeroU64;
use std::path::PathBuf;
use std::sync::Arc;

use ahash::{AHashMap, AHashSet};
use figment::value::Value;
use limits_core::{Dimension, LimitKind, SubjectLimits};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde_path_to_error::Segment;

use super::ConfigError;
use super::error::describe;
use super::keys::RawRls;
use super::yaml;

/// Every internal counter id starts with this character. Subject ids from
/// the LimitsService API may not contain control characters, so no client
/// can name (or read) these counters.
pub const INTERNAL: char = '\u{1}';
/// Separates the parts of an internal counter id.
const SEP: char = '\u{1}';
/// Separates a descriptor entry's key from its value in a counter id.
const KV: char = '\u{2}';

type Result<T, E = ConfigError> = std::result::Result<T, E>;

fn error(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(key, reason)
}

// ---------------------------------------------------------------------------
// The validated configuration.
// ---------------------------------------------------------------------------

/// Default `limits.rls.max_counters`.
pub const DEFAULT_MAX_COUNTERS: usize = 100_000;

/// What `ShouldRateLimit` runs on.
#[derive(Clone, Debug)]
pub struct RlsConfig {
    /// When false, `ShouldRateLimit` answers `UNIMPLEMENTED`.
    pub enabled: bool,
    /// Count and report, but always answer `OK` overall.
    pub dry_run: bool,
    /// Add the IETF draft `RateLimit` / `RateLimit-Policy` fields.
    pub ietf_headers: bool,
    /// Per domain: its mapping and its rule tree.
    pub domains: AHashMap<String, RlsDomain>,
    /// The rule files loaded, in order (for reload on change).
    pub config_files: Vec<PathBuf>,
    /// Descriptor counters an embedded store keeps at most.
    pub max_counters: usize,
}

impl Default for RlsConfig {
    fn default() -> RlsConfig {
        RlsConfig {
            enabled: false,
            dry_run: false,
            ietf_headers: false,
            domains: AHashMap::new(),
            config_files: Vec::new(),
            max_counters: DEFAULT_MAX_COUNTERS,
        }
    }
}

/// Everything configured for one domain.
#[derive(Clone, Debug, Default)]
pub struct RlsDomain {
    /// How the domain's descriptors map to limitsd's subjects and limits, from `limits.rls.domains`.
    pub mapping: Option<Mapping>,
    /// The root of the rule tree from an envoyproxy/ratelimit file.
    pub rules: Option<Node>,
}

/// Which descriptor keys name subjects, and which mark a token descriptor.
#[derive(Clone, Debug, Default)]
pub struct Mapping {
    /// Count and report, but answer `OK` for this domain's mapped subjects.
    pub shadow_mode: bool,
    subjects: Vec<(String, Dimension)>,
    tokens: Vec<String>,
    model: Option<String>,
}

impl Mapping {
    /// The dimension whose id a descriptor entry with this key carries.
    pub fn subject_key(&self, key: &str) -> Option<Dimension> {
        self.subjects
            .iter()
            .find(|(k, _)| k == key)
            .map(|&(_, d)| d)
    }

    /// Whether an entry with this key makes its descriptor count tokens.
    pub fn is_token_key(&self, key: &str) -> bool {
        self.tokens.iter().any(|k| k == key)
    }

    /// The descriptor key whose value names the model, so that a mapped
    /// subject's model scopes apply too.
    pub fn model_key(&self) -> Option<&str> {
        self.model.as_deref()
    }
}

/// One level of a rule tree: the children by descriptor key, and the rule a
/// descriptor ending here gets.
#[derive(Clone, Debug, Default)]
pub struct Node {
    children: AHashMap<String, Children>,
    rule: Option<Rule>,
}

/// The nodes below one key: by exact value, by value prefix (wildcards, in
/// file order), and for any value.
#[derive(Clone, Debug, Default)]
struct Children {
    exact: AHashMap<String, Node>,
    wildcards: Vec<(String, Node)>,
    any: Option<Box<Node>>,
}

/// A leaf's `rate_limit`.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The counter's limits (one window); `None` for `unlimited: true`.
    pub limits: Option<SubjectLimits>,
    /// Count and report, but answer `OK`.
    pub shadow_mode: bool,
    /// The rule's `name`, reported as the limit's name.
    pub name: Option<Arc<str>>,
    /// The counter counts tokens (the rule sits below a token key).
    pub tokens: bool,
}

impl Node {
    /// The rule a descriptor leads to, as envoyproxy/ratelimit matches it:
    /// each entry in turn selects a child of the node the previous entry
    /// selected (exact value first, then the first wildcard whose prefix the
    /// value starts with, then the key without a value), and only the node
    /// of the last entry can supply the rule. There is no backtracking.
    pub fn lookup<'e>(
        &self,
        entries: impl IntoIterator<Item = (&'e str, &'e str)>,
    ) -> Option<&Rule> {
        let mut node = self;
        let mut matched = false;
        for (key, value) in entries {
            let children = node.children.get(key)?;
            node = children
                .exact
                .get(value)
                .or_else(|| {
                    children
                        .wildcards
                        .iter()
                        .find(|(prefix, _)| value.starts_with(prefix.as_str()))
                        .map(|(_, n)| n)
                })
                .or(children.any.as_deref())?;
            matched = true;
        }
        if matched { node.rule.as_ref() } else { None }
    }
}

/// The id of the internal counter of a descriptor in a domain: the domain
/// and every entry, separated by control characters that request
/// validation keeps out of keys and values, so two different descriptors
/// never share an id.
pub fn counter_id<'e>(
    domain: &str,
    entries: impl IntoIterator<Item = (&'e str, &'e str)>,
) -> String {
    let mut id = String::with_capacity(64);
    id.push(INTERNAL);
    id.push_str("rls");
    id.push(SEP);
    id.push_str(domain);
    for (key, value) in entries {
        id.push(SEP);
        id.push_str(key);
        id.push(KV);
        id.push_str(value);
    }
    id
}

/// Whether a subject id is one of this module's internal counters.
pub fn is_internal(id: &str) -> bool {
    id.starts_with(INTERNAL)
}

/// A rate limit unit, from a rule file or a request's limit override.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // The units are their names.
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    fn parse(text: &str) -> Option<Unit> {
        Some(match text.trim().to_ascii_lowercase().as_str() {
            "second" => Unit::Second,
            "minute" => Unit::Minute,
            "hour" => Unit::Hour,
            "day" => Unit::Day,
            "week" => Unit::Week,
            "month" => Unit::Month,
            "year" => Unit::Year,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// The rolling window a limit in this unit runs on, or why there is
    /// none. Request counters have second, minute and hour windows; token
    /// counters minute and hour.
    pub fn kind(self, tokens: bool) -> Result<LimitKind, String> {
        match (self, tokens) {
            (Unit::Second, false) => Ok(LimitKind::RequestsPerSecond),
            (Unit::Minute, false) => Ok(LimitKind::RequestsPerMinute),
            (Unit::Hour, false) => Ok(LimitKind::RequestsPerHour),
            (Unit::Minute, true) => Ok(LimitKind::TokensPerMinute),
            (Unit::Hour, true) => Ok(LimitKind::TokensPerHour),
            (Unit::Second, true) => Err(
                "unit \"second\" is not supported for a token counter: token limits have \
                 minute and hour windows only"
                    .to_owned(),
            ),
            (unit, _) => Err(format!(
                "unit {:?} is not supported: limitsd's rate windows are second, minute and hour \
                 (rolling), and nothing longer; use an hour limit (or a USD budget under \
                 limits.budgets for daily and monthly spend)",
                unit.name()
            )),
        }
    }
}

// ---------------------------------------------------------------------------
// The raw stage: `limits.rls` as written.
// ---------------------------------------------------------------------------

// `limits.rls` itself is declared with the other sections (in the config's
// `keys`); its domain mappings are ordinary serde types.

/// `limits.rls.domains[i]`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping with domain, subjects, tokens, model and shadow_mode"
)]
pub(crate) struct RawDomain {
    domain: Option<String>,
    shadow_mode: Option<bool>,
    subjects: RawSubjects,
    tokens: Vec<String>,
    model: Option<String>,
}

/// `limits.rls.domains[i].subjects`: descriptor key per dimension.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of api_key, user, team and org to descriptor keys"
)]
struct RawSubjects {
    api_key: Option<String>,
    user: Option<String>,
    team: Option<String>,
    org: Option<String>,
}

// ---------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// Checks `limits.rls` and loads its rule files (those named in the config,
/// then `extra_files` from `--rls-config`; a path named twice loads once).
pub(crate) fn build(
    raw: &RawRls,
    extra_files: &[PathBuf],
    warnings: &mut Vec<String>,
) -> Result<RlsConfig> {
    let keys = raw.check()?;
    let mut domains: AHashMap<String, RlsDomain> = AHashMap::new();
    let mut all_keys = AHashSet::new();
    for (i, d) in raw.domains.iter().enumerate() {
        let at = format!("limits.rls.domains.{i}");
        let name = match d.domain.as_deref() {
            None => return Err(error(format!("{at}.domain"), "required key is missing")),
            Some(n) if n.trim().is_empty() => {
                return Err(error(format!("{at}.domain"), "must not be empty"));
            }
            Some(n) if has_control(n) => {
                return Err(error(
                    format!("{at}.domain"),
                    "must not contain control characters",
                ));
            }
            Some(n) => n,
        };
        if domains.contains_key(name) {
            return Err(error(
                format!("{at}.domain"),
                format!("domain {name:?} is listed twice"),
            ));
        }
        all_keys.clear();
        let mut subjects = Vec::new();
        for (dimension, key) in [
            (Dimension::ApiKey, &d.subjects.api_key),
            (Dimension::User, &d.subjects.user),
            (Dimension::Team, &d.subjects.team),
            (Dimension::Org, &d.subjects.org),
        ] {
            let Some(key) = key else { continue };
            let field = format!("{at}.subjects.{}", dimension.as_str());
            check_key(&field, key)?;
            if !all_keys.insert(key.as_str()) {
                return Err(error(
                    field,
                    format!("descriptor key {key:?} already names another subject"),
                ));
            }
            subjects.push((key.clone(), dimension));
        }
        if subjects.is_empty() {
            return Err(error(
                format!("{at}.subjects"),
                "map at least one of api_key, user, team, org to a descriptor key",
            ));
        }
        let mut tokens = Vec::new();
        for (j, key) in d.tokens.iter().enumerate() {
            let field = format!("{at}.tokens.{j}");
            check_key(&field, key)?;
            if !all_keys.insert(key.as_str()) {
                return Err(error(
                    field,
                    format!("descriptor key {key:?} is already a subject key or listed twice"),
                ));
            }
            tokens.push(key.clone());
        }
        if let Some(key) = &d.model {
            let field = format!("{at}.model");
            check_key(&field, key)?;
            if !all_keys.insert(key.as_str()) {
                return Err(error(
                    field,
                    format!("descriptor key {key:?} is already a subject or token key"),
                ));
            }
        }
        domains.insert(
            name.to_owned(),
            RlsDomain {
                mapping: Some(Mapping {
                    shadow_mode: d.shadow_mode.unwrap_or(false),
                    subjects,
                    tokens,
                    model: d.model.clone(),
                }),
                rules: None,
            },
        );
    }

    // Rule files: the config's, then the flag's.
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for (i, f) in raw.config_files.iter().enumerate() {
        let key = format!("limits.rls.config_files.{i}");
        if f.trim().is_empty() {
            return Err(error(key, "must not be empty"));
        }
        files.push((PathBuf::from(f), key));
    }
    for f in extra_files {
        files.push((
            f.clone(),
            format!("{} (from the --rls-config flag)", f.display()),
        ));
    }
    let mut loaded: Vec<PathBuf> = Vec::new();
    // Domain -> the file that defined its rules.
    let mut rule_sources: AHashMap<String, PathBuf> = AHashMap::new();
    for (path, key) in files {
        if loaded.contains(&path) {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| error(key, format!("cannot read rate limit config file: {e}")))?;
        let origin = path.display().to_string();
        let (domain, root) = load_rule_file(&origin, &text, &domains, warnings)?;
        if let Some(other) = rule_sources.get(&domain) {
            return Err(error(
                format!("{origin}:domain"),
                format!("domain {domain:?} is also defined in {}", other.display()),
            ));
        }
        rule_sources.insert(domain.clone(), path.clone());
        domains.entry(domain).or_default().rules = Some(root);
        loaded.push(path);
    }

    let configured = !domains.is_empty();
    Ok(RlsConfig {
        enabled: keys.enabled.unwrap_or(configured),
        dry_run: keys.dry_run,
        ietf_headers: keys.ietf_headers,
        domains,
        config_files: loaded,
        max_counters: keys.max_counters,
    })
}

fn check_key(field: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(error(field, "must not be empty"));
    }
    if has_control(key) {
        return Err(error(field, "must not contain control characters"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// envoyproxy/ratelimit rule files.
// ---------------------------------------------------------------------------

/// A rule file, as written. Unknown keys are errors, as upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
struct RawRuleFile {
    domain: Scalar,
    #[serde(default)]
    descriptors: Vec<RawDescriptor>,
}

/// One level of a rule file's descriptor tree.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
struct RawDescriptor {
    key: Scalar,
    value: Option<Scalar>,
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    descriptors: Vec<RawDescriptor>,
    #[serde(default)]
    shadow_mode: bool,
    /// Accepted and ignored: it only shapes upstream's own stats.
    detailed_metric: Option<bool>,
    /// Accepted and ignored, as `detailed_metric`.
    value_to_metric: Option<bool>,
}

/// A leaf's `rate_limit`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
struct RawRateLimit {
    unit: Option<Scalar>,
    requests_per_unit: Option<u64>,
    #[serde(default)]
    unlimited: bool,
    name: Option<Scalar>,
    /// Accepted and ignored: every matching limit applies.
    replaces: Option<Vec<IgnoredAny>>,
}

/// A YAML scalar as text (upstream reads `value: 42` as "42").
#[derive(Debug)]
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl Visitor<'_> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar(v.to_owned()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar(v.to_string()))
    }
}

/// Parses one envoyproxy/ratelimit rule file's text, as loading it would,
/// for tools (the fuzz harness) that check the parser on its own.
#[doc(hidden)]
pub fn check_rule_file(text: &str) -> Result<()> {
    let mut warnings = Vec::new();
    load_rule_file("rules.yaml", text, &AHashMap::new(), &mut warnings).map(drop)
}

/// Reads a rule file into its raw form. Keys in errors are
/// `FILE:descriptors.0.rate_limit.unit`.
fn parse_rule_file(origin: &str, text: &str) -> Result<RawRuleFile> {
    let mut doc = yaml::parse(text).map_err(|e| error(origin, format!("invalid YAML: {e}")))?;
    if !matches!(doc, Value::Dict(..)) {
        return Err(error(
            format!("{origin}:"),
            format!("expected a mapping, found {}", yaml::shape(&doc)),
        ));
    }
    // `key:` with nothing is the same as leaving the key out.
    yaml::strip_nulls(&mut doc);
    serde_path_to_error::deserialize(&doc).map_err(|e| {
        let mut path: Vec<String> = e
            .path()
            .iter()
            .map(|segment| match segment {
                Segment::Seq { index } => index.to_string(),
                Segment::Map { key } => key.clone(),
                Segment::Enum { variant } => variant.clone(),
                Segment::Unknown => "?".to_owned(),
            })
            .collect();
        let reason = describe(&e.inner().kind, &mut path);
        error(format!("{origin}:{}", path.join(".")), reason)
    })
}

/// Loads one envoyproxy/ratelimit file: its domain and rule tree.
fn load_rule_file(
    origin: &str,
    text: &str,
    domains: &AHashMap<String, RlsDomain>,
    warnings: &mut Vec<String>,
) -> Result<(String, Node)> {
    let file = parse_rule_file(origin, text)?;
    let at = format!("{origin}:");
    let Scalar(domain) = file.domain;
    if domain.trim().is_empty() {
        return Err(error(format!("{at}domain"), "must not be empty"));
    }
    if has_control(&domain) {
        return Err(error(
            format!("{at}domain"),
            "must not contain control characters",
        ));
    }
    let token_keys = domains
        .get(&domain)
        .and_then(|d| d.mapping.as_ref())
        .map(|m| m.tokens.as_slice())
        .unwrap_or(&[]);
    let mut loader = Loader {
        token_keys,
        warnings,
        ignored: Vec::new(),
    };
    let mut root = Node::default();
    loader.descriptors(
        &format!("{at}descriptors"),
        &file.descriptors,
        &mut root,
        false,
    )?;
    for (what, first) in loader.ignored {
        loader.warnings.push(format!(
            "{origin}: {what} is not supported and ignored (first at {first}){}",
            if what == "replaces" {
                ": every matching limit applies, which is stricter than envoyproxy/ratelimit"
            } else {
                ": it only shapes envoyproxy/ratelimit's own stats"
            }
        ));
    }
    Ok((domain, root))
}

struct Loader<'a> {
    token_keys: &'a [String],
    warnings: &'a mut Vec<String>,
    /// Keys accepted but ignored, with the first place each was seen.
    ignored: Vec<(&'static str, String)>,
}

impl Loader<'_> {
    fn ignore(&mut self, what: &'static str, at: String) {
        if !self.ignored.iter().any(|(w, _)| *w == what) {
            self.ignored.push((what, at));
        }
    }

    fn descriptors(
        &mut self,
        at: &str,
        list: &[RawDescriptor],
        parent: &mut Node,
        under_token: bool,
    ) -> Result<()> {
        for (i, d) in list.iter().enumerate() {
            let at = format!("{at}.{i}");
            if d.detailed_metric.is_some() {
                self.ignore("detailed_metric", format!("{at}.detailed_metric"));
            }
            if d.value_to_metric.is_some() {
                self.ignore("value_to_metric", format!("{at}.value_to_metric"));
            }
            let Scalar(key) = &d.key;
            check_key(&format!("{at}.key"), key)?;
            let value = d
                .value
                .as_ref()
                .map(|Scalar(v)| v.as_str())
                .filter(|v| !v.is_empty());
            if value.is_some_and(has_control) {
                return Err(error(
                    format!("{at}.value"),
                    "must not contain control characters",
                ));
            }
            let tokens = under_token || self.token_keys.contains(key);
            let mut node = Node::default();
            if let Some(rl) = &d.rate_limit {
                node.rule =
                    Some(self.rule(&format!("{at}.rate_limit"), rl, d.shadow_mode, tokens)?);
            }
            self.descriptors(
                &format!("{at}.descriptors"),
                &d.descriptors,
                &mut node,
                tokens,
            )?;

            let slot = parent.children.entry(key.clone()).or_default();
            let duplicate = error(
                at.clone(),
                format!(
                    "duplicate descriptor: key {key:?} with {} is already defined at this level",
                    value.map_or("no value".to_owned(), |v| format!("value {v:?}"))
                ),
            );
            match value {
                None => {
                    if slot.any.is_some() {
                        return Err(duplicate);
                    }
                    slot.any = Some(Box::new(node));
                }
                Some(v) => match v.strip_suffix('*') {
                    Some(prefix) => {
                        if slot.wildcards.iter().any(|(p, _)| p == prefix) {
                            return Err(duplicate);
                        }
                        slot.wildcards.push((prefix.to_owned(), node));
                    }
                    None => {
                        if slot.exact.contains_key(v) {
                            return Err(duplicate);
                        }
                        slot.exact.insert(v.to_owned(), node);
                    }
                },
            }
        }
        Ok(())
    }

    fn rule(
        &mut self,
        at: &str,
        raw: &RawRateLimit,
        shadow_mode: bool,
        tokens: bool,
    ) -> Result<Rule> {
        if raw.replaces.is_some() {
            self.ignore("replaces", format!("{at}.replaces"));
        }
        let mut name = None;
        if let Some(Scalar(n)) = &raw.name {
            if has_control(n) {
                return Err(error(
                    format!("{at}.name"),
                    "must not contain control characters",
                ));
            }
            if !n.is_empty() {
                name = Some(Arc::<str>::from(n.as_str()));
            }
        }
        let unit_field = format!("{at}.unit");
        if raw.unlimited {
            if raw.unit.is_some() {
                return Err(error(
                    unit_field,
                    "must not be set when unlimited is true (as in envoyproxy/ratelimit)",
                ));
            }
            return Ok(Rule {
                limits: None,
                shadow_mode,
                name,
                tokens,
            });
        }
        let Some(Scalar(unit)) = &raw.unit else {
            return Err(error(
                unit_field,
                "required key is missing (second, minute or hour; or set unlimited: true)",
            ));
        };
        let parsed = Unit::parse(unit).ok_or_else(|| {
            error(
                &unit_field,
                format!("unknown unit {unit:?}; expected second, minute or hour"),
            )
        })?;
        let kind = parsed
            .kind(tokens)
            .map_err(|reason| error(&unit_field, reason))?;
        let per_unit_field = format!("{at}.requests_per_unit");
        let Some(n) = raw.requests_per_unit else {
            return Err(error(per_unit_field, "required key is missing"));
        };
        if n > u64::from(u32::MAX) {
            return Err(error(
                per_unit_field,
                format!("must be at most {} (the protocol's limit)", u32::MAX),
            ));
        }
        let n = NonZeroU64::new(n).ok_or_else(|| {
            error(
                &per_unit_field,
                "must be greater than 0 (limitsd has no deny-all limit; remove the rule \
                 or route such traffic elsewhere)",
            )
        })?;
        let mut limits = SubjectLimits::default().with(kind, n);
        if let Some(name) = &name {
            limits.set_alias(Some(name.clone()));
        }
        Ok(Rule {
            limits: Some(limits),
            shadow_mode,
            name,
            tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(yaml: &str) -> Node {
        let mut warnings = Vec::new();
        load_rule_file("f.yaml", yaml, &AHashMap::new(), &mut warnings)
            .expect("loads")
            .1
    }

    fn limit_of(rule: Option<&Rule>) -> Option<u64> {
        rule.and_then(|r| r.limits.as_ref())
            .and_then(|l| l.windowed().next())
            .map(|(_, n)| n)
    }

    const RULES: &str = r#"
domain: d
descriptors:
  - key: k
    value: exact
    rate_limit: { unit: second, requests_per_unit: 1 }
  - key: k
    value: pre*
    rate_limit: { unit: second, requests_per_unit: 2 }
  - key: k
    rate_limit: { unit: second, requests_per_unit: 3 }
  - key: outer
    value: o
    descriptors:
      - key: inner
        rate_limit: { unit: minute, requests_per_unit: 4 }
"#;

    #[test]
    fn matching_prefers_exact_then_wildcard_then_any_value() {
        let root = tree(RULES);
        assert_eq!(limit_of(root.lookup([("k", "exact")])), Some(1));
        assert_eq!(limit_of(root.lookup([("k", "prefixed")])), Some(2));
        assert_eq!(limit_of(root.lookup([("k", "other")])), Some(3));
        assert_eq!(limit_of(root.lookup([("nope", "x")])), None);
    }

    #[test]
    fn a_rule_applies_only_at_the_last_entry() {
        let root = tree(RULES);
        assert_eq!(
            limit_of(root.lookup([("outer", "o"), ("inner", "v")])),
            Some(4)
        );
        // Stops short of the leaf: no rule.
        assert_eq!(limit_of(root.lookup([("outer", "o")])), None);
        // Goes past a leaf: no rule either.
        assert_eq!(limit_of(root.lookup([("k", "exact"), ("more", "x")])), None);
        assert_eq!(limit_of(root.lookup([])), None);
    }

    #[test]
    fn counter_ids_cannot_collide_through_separators() {
        let a = counter_id("d", [("a=b", "c")]);
        let b = counter_id("d", [("a", "b=c")]);
        assert_ne!(a, b);
        assert!(is_internal(&a));
        assert_ne!(
            counter_id("d", [("k", "v")]),
            counter_id("d2", [("k", "v")])
        );
    }

    #[test]
    fn long_units_are_rejected_naming_the_key() {
        let mut warnings = Vec::new();
        let e = load_rule_file(
            "f.yaml",
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: day, requests_per_unit: 5}\n",
            &AHashMap::new(),
            &mut warnings,
        )
        .expect_err("day");
        assert_eq!(e.key, "f.yaml:descriptors.0.rate_limit.unit");
        assert!(e.reason.contains("\"day\" is not supported"), "{e}");
    }
}
