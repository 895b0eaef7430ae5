//! Model scopes: limits under a subject that apply only to requests for
//! the models a pattern matches (`claude-3-opus`, `gpt-4*`).
//!
//! A scope is counted as a subject of its own (the parent's id and the
//! pattern, see [`ModelScope::subject`]), so every store, the engine's
//! all-or-nothing decision and expiry treat it as they treat any subject.
//! A request for a model is decided against its subjects' own limits and,
//! for each subject, the most specific of its scopes that matches the
//! model ([`ModelScopes::find`]); a model no scope matches meets only the
//! subjects' own limits.

use std::sync::Arc;

use crate::limits::{Subject, SubjectLimits};

/// Joins a subject's id and a scope's pattern into the scope's id. A
/// control character: no id a caller can send contains one, so a scope
/// never shares its counters with a subject.
pub const SEPARATOR: char = '\u{1f}';

/// Why a set of scopes was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// The pattern is not a glob (an unclosed `[`, say).
    #[error("{pattern:?} is not a valid pattern: {reason}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An empty pattern, or one with a control character.
    #[error("a model pattern must be non-empty and free of control characters")]
    Empty,
    /// A concurrency limit in a scope: acquiring a slot names no model.
    #[error("max_concurrent cannot be scoped to a model (acquiring a slot names no model)")]
    Concurrency,
    /// More scopes than one subject may have.
    #[error("at most {MAX_SCOPES} model scopes per subject, got {0}")]
    TooMany(usize),
}

/// The most scopes one subject may have: a check tries each in turn, on
/// the request path.
pub const MAX_SCOPES: usize = 64;

/// One scope: its pattern and its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelScope {
    pattern: Arc<str>,
    /// `None`: the pattern has no wildcard and matches itself only.
    glob: Option<glob::Pattern>,
    /// Characters of the pattern that are not wildcards: the more, the
    /// more specific.
    literal: usize,
    limits: SubjectLimits,
}

impl ModelScope {
    /// The pattern, as configured.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The pattern, shared (statuses carry it).
    pub fn name(&self) -> &Arc<str> {
        &self.pattern
    }

    /// The scope's limits (its budgets on the parent's calendar).
    pub fn limits(&self) -> &SubjectLimits {
        &self.limits
    }

    /// Whether the scope applies to `model`.
    pub fn matches(&self, model: &str) -> bool {
        match &self.glob {
            None => *self.pattern == *model,
            Some(glob) => glob.matches(model),
        }
    }

    /// The subject the scope is counted as, under `parent` (the subject as
    /// the caller names it: an API key's scope is hashed with it).
    pub fn subject(&self, parent: &Subject) -> Subject {
        let mut id = String::with_capacity(parent.id.len() + 1 + self.pattern.len());
        id.push_str(&parent.id);
        id.push(SEPARATOR);
        id.push_str(&self.pattern);
        Subject {
            dimension: parent.dimension,
            id,
        }
    }
}

/// A subject's model scopes, most specific first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelScopes {
    scopes: Vec<ModelScope>,
}

impl ModelScopes {
    /// The scopes from `(pattern, limits)` pairs. A pattern with `*`, `?`
    /// or `[` is a glob (`*` matches any run of characters, `/` included);
    /// any other matches that exact name. Specificity: an exact name
    /// first, then globs with more literal characters, then the pattern's
    /// order as text.
    pub fn new(
        scopes: impl IntoIterator<Item = (String, SubjectLimits)>,
    ) -> Result<ModelScopes, (String, ScopeError)> {
        let mut out = Vec::new();
        for (pattern, limits) in scopes {
            let fail = |e| Err((pattern.clone(), e));
            if pattern.is_empty() || pattern.chars().any(char::is_control) {
                return fail(ScopeError::Empty);
            }
            if limits.get(crate::LimitKind::MaxConcurrent).is_some() {
                return fail(ScopeError::Concurrency);
            }
            let wild = pattern.contains(['*', '?', '[']);
            let glob = if wild {
                match glob::Pattern::new(&pattern) {
                    Ok(g) => Some(g),
                    Err(e) => {
                        return fail(ScopeError::Pattern {
                            pattern: pattern.clone(),
                            reason: e.msg.to_owned(),
                        });
                    }
                }
            } else {
                None
            };
            let literal = pattern.chars().filter(|c| !"*?[]".contains(*c)).count();
            let pattern: Arc<str> = Arc::from(pattern);
            out.push(ModelScope {
                pattern,
                glob,
                literal,
                limits,
            });
        }
        if out.len() > MAX_SCOPES {
            let n = out.len();
            return Err((out[MAX_SCOPES].pattern.to_string(), ScopeError::TooMany(n)));
        }
        out.sort_by(|a, b| {
            (a.glob.is_some(), std::cmp::Reverse(a.literal), &a.pattern).cmp(&(
                b.glob.is_some(),
                std::cmp::Reverse(b.literal),
                &b.pattern,
            ))
        });
        out.dedup_by(|a, b| a.pattern == b.pattern);
        Ok(ModelScopes { scopes: out })
    }

    /// Puts every scope's budgets on `calendar` and `thresholds` (their
    /// subject's).
    pub(crate) fn inherit(
        &mut self,
        calendar: Option<&Arc<crate::Calendar>>,
        thresholds: Option<&crate::Thresholds>,
    ) {
        for scope in &mut self.scopes {
            if scope.limits.calendar() != calendar {
                scope.limits.set_calendar(calendar.cloned());
            }
            if scope.limits.alert_thresholds() != thresholds {
                scope.limits.set_alert_thresholds(thresholds.cloned());
            }
        }
    }

    /// The most specific scope that matches `model`, if any.
    pub fn find(&self, model: &str) -> Option<&ModelScope> {
        self.scopes.iter().find(|s| s.matches(model))
    }

    /// The scope with this exact pattern.
    pub fn get(&self, pattern: &str) -> Option<&ModelScope> {
        self.scopes.iter().find(|s| *s.pattern == *pattern)
    }

    /// Every scope, most specific first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &ModelScope> {
        self.scopes.iter()
    }

    /// How many scopes there are.
    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;
    use crate::{Dimension, LimitKind};

    fn rpm(n: u64) -> SubjectLimits {
        SubjectLimits::default().with(LimitKind::RequestsPerMinute, NonZeroU64::new(n).unwrap())
    }

    fn scopes(patterns: &[&str]) -> ModelScopes {
        ModelScopes::new(
            patterns
                .iter()
                .enumerate()
                .map(|(i, p)| (p.to_string(), rpm(i as u64 + 1))),
        )
        .unwrap()
    }

    #[test]
    fn the_most_specific_match_wins() {
        let s = scopes(&["*", "gpt-4*", "gpt-4o*", "gpt-4o-mini", "claude-?-opus"]);
        let found = |m: &str| s.find(m).map(|s| s.pattern().to_owned());
        assert_eq!(found("gpt-4o-mini").as_deref(), Some("gpt-4o-mini"));
        assert_eq!(found("gpt-4o-2024").as_deref(), Some("gpt-4o*"));
        assert_eq!(found("gpt-4-turbo").as_deref(), Some("gpt-4*"));
        assert_eq!(found("claude-3-opus").as_deref(), Some("claude-?-opus"));
        assert_eq!(found("mistral").as_deref(), Some("*"));
        let narrow = scopes(&["gpt-4*"]);
        assert!(narrow.find("gpt-3.5-turbo").is_none());
        assert!(narrow.find("").is_none());
    }

    #[test]
    fn a_star_crosses_slashes_and_exact_names_are_not_globs() {
        let s = scopes(&["openai/*", "a.b"]);
        assert!(s.find("openai/gpt-4/2024").is_some());
        assert!(s.find("a.b").is_some());
        assert!(s.find("axb").is_none());
    }

    #[test]
    fn bad_patterns_and_scoped_concurrency_are_refused() {
        let bad = ModelScopes::new([("gpt-[4".to_owned(), rpm(1))]).unwrap_err();
        assert_eq!(bad.0, "gpt-[4");
        assert!(matches!(bad.1, ScopeError::Pattern { .. }));
        let empty = ModelScopes::new([(String::new(), rpm(1))]).unwrap_err();
        assert_eq!(empty.1, ScopeError::Empty);
        let lease = SubjectLimits::default().with_max_concurrent(std::num::NonZeroU32::MIN);
        let e = ModelScopes::new([("m".to_owned(), lease)]).unwrap_err();
        assert_eq!(e.1, ScopeError::Concurrency);
        let many = (0..=MAX_SCOPES).map(|i| (format!("m{i}"), rpm(1)));
        assert!(matches!(
            ModelScopes::new(many).unwrap_err().1,
            ScopeError::TooMany(_)
        ));
    }

    #[test]
    fn scopes_follow_their_subject_s_calendar_and_thresholds() {
        let mut parent = SubjectLimits::default().with_scopes(scopes(&["gpt-4*"]));
        let t = crate::Thresholds::new([500_000]).unwrap();
        parent.set_alert_thresholds(Some(t.clone()));
        let cal = Arc::new(crate::Calendar::new("Asia/Tokyo", 0, 1).unwrap());
        parent.set_calendar(Some(Arc::clone(&cal)));
        let scope = parent.scopes().unwrap().find("gpt-4o").unwrap();
        assert_eq!(scope.limits().alert_thresholds(), Some(&t));
        assert_eq!(scope.limits().calendar(), Some(&cal));
        // Set the other way round: scopes given last take them too.
        let mut late = SubjectLimits::default().with_calendar(Arc::clone(&cal));
        late.set_alert_thresholds(Some(t.clone()));
        late.set_scopes(Some(Arc::new(scopes(&["m"]))));
        let scope = late.scopes().unwrap().get("m").unwrap();
        assert_eq!(
            (scope.limits().alert_thresholds(), scope.limits().calendar()),
            (Some(&t), Some(&cal))
        );
    }

    #[test]
    fn a_scope_is_a_subject_apart_and_names_itself() {
        let s = scopes(&["gpt-4*"]);
        let scope = s.find("gpt-4o").unwrap();
        let parent = Subject::new(Dimension::Team, "ml");
        let sub = scope.subject(&parent);
        assert_eq!(sub.dimension, Dimension::Team);
        assert_eq!(sub.id, "ml\u{1f}gpt-4*");
        assert_ne!(sub, parent);
    }
}
