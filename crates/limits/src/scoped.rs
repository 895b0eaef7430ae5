//! A request's subjects with the model scopes that apply to it: the
//! subjects as named, then one subject per scope (see
//! [`limits_core::scope`]). Stores see scopes as subjects; this module
//! builds the store call's subjects and limits, and maps the answer's
//! subject indexes back to the request's, each status naming its scope.

use std::borrow::Cow;
use std::sync::Arc;

use limits_core::{
    Attempt, CheckOutcome, Denial, LimitStatus, ModelScope, Subject, SubjectLimits, Verdict,
};
use limits_store::MAX_SUBJECTS;

/// The subjects a store call names, and what to map back.
#[derive(Debug)]
pub(crate) struct Scoped<'s, 'l> {
    /// The request's subjects, then the scopes' (owned only when there are
    /// scopes).
    pub subjects: Cow<'s, [Subject]>,
    /// Their limits, in the same order.
    pub limits: [&'l SubjectLimits; MAX_SUBJECTS],
    /// How many of `subjects` the request named.
    named: usize,
    /// Of each scope subject, its parent's index and the scope.
    scopes: Vec<(usize, &'l ModelScope)>,
}

impl<'s, 'l> Scoped<'s, 'l> {
    /// The request's subjects alone (no model, or a call that takes no
    /// scopes).
    pub fn plain(subjects: &'s [Subject], limits: &'l [Cow<'_, SubjectLimits>]) -> Self {
        let named = subjects.len();
        Scoped {
            subjects: Cow::Borrowed(subjects),
            limits: refs(limits),
            named,
            scopes: Vec::new(),
        }
    }

    /// For a check: the scopes of every attempt's model, each attempt's
    /// `skip` set to leave out the others'. The walk stops before an
    /// attempt whose scopes would take the call past
    /// [`MAX_SUBJECTS`] subjects (the first attempt always fits).
    pub fn check(
        subjects: &'s [Subject],
        limits: &'l [Cow<'_, SubjectLimits>],
        attempts: &mut Vec<Attempt>,
    ) -> Self {
        let mut scoped = Self::plain(subjects, limits);
        if !limits.iter().any(|l| l.scopes().is_some()) {
            return scoped;
        }
        let mut uses = Vec::with_capacity(attempts.len());
        for (n, attempt) in attempts.iter().enumerate() {
            match scoped.add(limits, &attempt.model) {
                Some(used) => uses.push(used),
                None => {
                    attempts.truncate(n);
                    break;
                }
            }
        }
        let all: u16 = uses.iter().fold(0, |a, u| a | u);
        for (attempt, used) in attempts.iter_mut().zip(uses) {
            attempt.skip = all & !used;
        }
        scoped.finish(subjects);
        scoped
    }

    /// For a record: the scopes of the model that served the request.
    pub fn record(
        subjects: &'s [Subject],
        limits: &'l [Cow<'_, SubjectLimits>],
        model: &str,
    ) -> Self {
        let mut scoped = Self::plain(subjects, limits);
        if limits.iter().any(|l| l.scopes().is_some()) {
            // At most one scope per subject: it always fits.
            scoped.add(limits, model);
            scoped.finish(subjects);
        }
        scoped
    }

    /// Adds the scopes `model` meets; returns their bits among the call's
    /// subjects, or `None` (adding nothing) if they do not fit.
    fn add(&mut self, limits: &'l [Cow<'_, SubjectLimits>], model: &str) -> Option<u16> {
        let before = self.scopes.len();
        let mut used = 0u16;
        for (parent, lim) in limits.iter().enumerate() {
            let Some(scope) = lim.scopes().and_then(|s| s.find(model)) else {
                continue;
            };
            let at = match self
                .scopes
                .iter()
                .position(|(p, s)| *p == parent && std::ptr::eq(*s, scope))
            {
                Some(at) => at,
                None if self.named + self.scopes.len() < MAX_SUBJECTS => {
                    self.scopes.push((parent, scope));
                    self.scopes.len() - 1
                }
                None => {
                    self.scopes.truncate(before);
                    return None;
                }
            };
            used |= 1 << (self.named + at);
        }
        Some(used)
    }

    /// Names the scopes' subjects and limits.
    fn finish(&mut self, subjects: &[Subject]) {
        if self.scopes.is_empty() {
            return;
        }
        let mut all = Vec::with_capacity(self.named + self.scopes.len());
        all.extend_from_slice(subjects);
        for (i, (parent, scope)) in self.scopes.iter().enumerate() {
            all.push(scope.subject(&subjects[*parent]));
            self.limits[self.named + i] = scope.limits();
        }
        self.subjects = Cow::Owned(all);
    }

    /// The limits the call takes, one per subject.
    pub fn limits(&self) -> &[&'l SubjectLimits] {
        &self.limits[..self.subjects.len()]
    }

    /// The request's index of call subject `i` (a scope's parent), and the
    /// scope's pattern when `i` is a scope.
    pub fn parent(&self, i: usize) -> (usize, Option<Arc<str>>) {
        match i.checked_sub(self.named) {
            Some(at) => {
                let (parent, scope) = self.scopes[at];
                (parent, Some(Arc::clone(scope.name())))
            }
            None => (i, None),
        }
    }

    /// Maps statuses to the request's subject indexes, each status of a
    /// scope naming its pattern.
    pub fn map_statuses(&self, statuses: &mut [LimitStatus]) {
        if self.scopes.is_empty() {
            return;
        }
        for s in statuses {
            if let Some(at) = s.subject.checked_sub(self.named) {
                let (parent, scope) = self.scopes[at];
                s.subject = parent;
                s.scope = Some(Arc::clone(scope.name()));
            }
        }
    }

    /// Maps a check's outcome to the request's subject indexes; returns
    /// the scope of the limit that decided, if a scope's.
    pub fn map_check(&self, outcome: &mut CheckOutcome) -> Option<Arc<str>> {
        if self.scopes.is_empty() {
            return None;
        }
        self.map_statuses(&mut outcome.statuses);
        let denial = match &mut outcome.verdict {
            Verdict::Allowed { over, .. } => over.as_mut(),
            Verdict::Denied { denial, .. } => Some(denial),
        };
        denial.and_then(|d| self.map_denial(d))
    }

    /// Maps a denial's subject to the request's; returns its scope.
    pub fn map_denial(&self, d: &mut Denial) -> Option<Arc<str>> {
        let (parent, scope) = self.parent(d.subject);
        d.subject = parent;
        scope
    }
}

/// The plain references a store call takes, on the stack (a validated
/// request names at most [`crate::validate::MAX_SUBJECTS`] subjects).
fn refs<'a>(limits: &'a [Cow<'_, SubjectLimits>]) -> [&'a SubjectLimits; MAX_SUBJECTS] {
    std::array::from_fn(|i| limits.get(i).map_or(&SubjectLimits::UNLIMITED, |l| &**l))
}
