//! The server-side queue for `enforcement.action: queue`: a denied request
//! waits, first in first out per subject, until it fits, the queue timeout
//! passes or the caller's deadline comes.
//!
//! Waiting holds nothing: a queued request has no reservation and no counter
//! until its check is admitted, so a caller that goes away (its future is
//! dropped) simply leaves the line.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use ahash::AHashMap;
use limits_core::{Dimension, Subject};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// One subject's line.
#[derive(Debug, Default)]
struct Line {
    tickets: Mutex<VecDeque<u64>>,
    /// Woken when the head leaves or when capacity may have freed.
    changed: Notify,
}

/// Every subject's line.
#[derive(Debug, Default)]
pub struct Queues {
    lines: Mutex<AHashMap<(Dimension, String), Arc<Line>>>,
    /// Requests waiting anywhere; lets the record and release paths skip the
    /// queue map entirely when nobody waits.
    waiting: AtomicUsize,
    next_ticket: AtomicU64,
    /// Set at shutdown: every waiter is answered at once.
    closed: std::sync::atomic::AtomicBool,
    closing: Notify,
}

/// Why a request could not join a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    pub depth: usize,
}

/// A place in a line; leaving (drop) lets the next request go.
#[derive(Debug)]
pub struct Place<'a> {
    queues: &'a Queues,
    key: (Dimension, String),
    line: Arc<Line>,
    ticket: u64,
}

impl Queues {
    pub fn new() -> Queues {
        Queues::default()
    }

    /// Requests waiting in all lines.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Closes every line: waiters stop waiting and are answered, and nobody
    /// new joins. Used at shutdown, so queued calls finish within the grace
    /// period.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.closing.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Resolves once the queues are closed.
    pub async fn closed(&self) {
        loop {
            let notified = self.closing.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Joins the line of `subject`, unless `depth` requests already wait in it.
    pub fn join(&self, subject: &Subject, depth: usize) -> Result<Place<'_>, QueueFull> {
        let key = (subject.dimension, subject.id.clone());
        let line = self.lines.lock().entry(key.clone()).or_default().clone();
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        {
            let mut tickets = line.tickets.lock();
            if tickets.len() >= depth {
                return Err(QueueFull { depth });
            }
            tickets.push_back(ticket);
        }
        let waiting = self.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(crate::ops::metrics::QUEUE_DEPTH).set(waiting as f64);
        Ok(Place {
            queues: self,
            key,
            line,
            ticket,
        })
    }

    /// Tells the lines of these subjects that capacity may have freed.
    pub fn wake(&self, subjects: &[Subject]) {
        if self.waiting() == 0 {
            return;
        }
        let lines = self.lines.lock();
        for s in subjects {
            // The map is keyed by owned ids; this lookup only happens while
            // somebody is queued.
            if let Some(line) = lines.get(&(s.dimension, s.id.clone())) {
                line.changed.notify_waiters();
            }
        }
    }

    /// Wakes every line (e.g. after a lease or reservation expired).
    pub fn wake_all(&self) {
        if self.waiting() == 0 {
            return;
        }
        for line in self.lines.lock().values() {
            line.changed.notify_waiters();
        }
    }
}

impl Place<'_> {
    /// Waits until this request is at the head of its line.
    pub async fn head(&self) {
        loop {
            let notified = self.line.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.line.tickets.lock().front() == Some(&self.ticket) {
                return;
            }
            notified.await;
        }
    }

    /// Waits for a sign that capacity may have freed, or `wait`, whichever is
    /// first.
    pub async fn changed_or(&self, wait: std::time::Duration) {
        let notified = self.line.changed.notified();
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let empty = {
            let mut tickets = self.line.tickets.lock();
            if let Some(pos) = tickets.iter().position(|&t| t == self.ticket) {
                tickets.remove(pos);
            }
            tickets.is_empty()
        };
        let waiting = self.queues.waiting.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!(crate::ops::metrics::QUEUE_DEPTH).set(waiting as f64);
        if empty {
            let mut lines = self.queues.lines.lock();
            // Another request may have joined since; only drop an empty line.
            if lines
                .get(&self.key)
                .is_some_and(|l| l.tickets.lock().is_empty())
            {
                lines.remove(&self.key);
            }
        }
        self.line.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    #[tokio::test]
    async fn first_in_first_out_and_depth() {
        let q = Queues::new();
        let s = Subject::new(Dimension::Team, "t");
        let a = q.join(&s, 2).unwrap();
        let b = q.join(&s, 2).unwrap();
        assert_eq!(q.join(&s, 2).unwrap_err(), QueueFull { depth: 2 });
        assert_eq!(q.waiting(), 2);
        // `a` is at the head at once; `b` only once `a` leaves.
        a.head().await;
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        {
            let mut b_head = std::pin::pin!(b.head());
            assert!(b_head.as_mut().poll(&mut cx).is_pending());
            drop(a);
            assert!(b_head.as_mut().poll(&mut cx).is_ready());
        }
        drop(b);
        assert_eq!(q.waiting(), 0);
        assert!(q.lines.lock().is_empty());
    }
}
