//! The event writer's queue: bounded, keyed by Event name. A newer report
//! of a series already waiting replaces it where it stands (each report
//! carries its series' whole state, so only an intermediate count is
//! lost); a new series that finds the queue full pushes the oldest out,
//! counted. Events are best effort: the queue never waits and never
//! grows past its bound.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::{EventSeries, sparingly};
use crate::metrics::{Metrics, event_dropped};

/// Event series waiting for the event writer.
#[derive(Debug)]
pub struct EventQueue {
    waiting: Mutex<Waiting>,
    /// One consumer (the writer's dispatcher): a stored permit is never
    /// lost between its look at the queue and its wait.
    wake: Notify,
    capacity: usize,
    metrics: Arc<Metrics>,
}

/// The waiting series: `order` holds each name in `series` once, oldest
/// first.
#[derive(Debug, Default)]
struct Waiting {
    order: VecDeque<String>,
    series: HashMap<String, EventSeries>,
}

impl EventQueue {
    /// A queue of at most `capacity` series (at least one).
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            waiting: Mutex::default(),
            wake: Notify::new(),
            capacity: capacity.max(1),
            metrics,
        }
    }

    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        // Never held across an await or a call that can panic midway.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `series`: in place of a waiting report of the same series,
    /// else last, pushing the oldest out when full.
    pub fn push(&self, series: EventSeries) {
        let mut waiting = self.waiting();
        let name = series.name().to_owned();
        if let Some(queued) = waiting.series.get_mut(&name) {
            *queued = series;
            return;
        }
        let mut dropped = None;
        if waiting.order.len() >= self.capacity
            && let Some(oldest) = waiting.order.pop_front()
        {
            dropped = waiting.series.remove(&oldest);
        }
        waiting.order.push_back(name.clone());
        waiting.series.insert(name, series);
        self.metrics
            .event_queue_depth
            .set(waiting.order.len() as i64);
        drop(waiting);
        if let Some(dropped) = dropped {
            let counter = self
                .metrics
                .events_dropped
                .with_label_values(&[event_dropped::QUEUE_FULL]);
            counter.inc();
            if sparingly(counter.get()) {
                tracing::warn!(cluster = %dropped.cluster, object = %dropped.object(), event = %dropped.name(), reason = event_dropped::QUEUE_FULL, dropped = counter.get(), capacity = self.capacity, "event dropped: the event queue is full");
            }
        }
        self.wake.notify_one();
    }

    /// The oldest waiting series, if any.
    pub fn pop(&self) -> Option<EventSeries> {
        let mut waiting = self.waiting();
        let series = loop {
            let name = waiting.order.pop_front()?;
            if let Some(series) = waiting.series.remove(&name) {
                break series;
            }
        };
        self.metrics
            .event_queue_depth
            .set(waiting.order.len() as i64);
        Some(series)
    }

    /// Waits for the oldest waiting series.
    pub async fn next(&self) -> EventSeries {
        loop {
            if let Some(series) = self.pop() {
                return series;
            }
            self.wake.notified().await;
        }
    }

    /// Series waiting.
    pub fn len(&self) -> usize {
        self.waiting().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
