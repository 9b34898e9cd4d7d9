//! The timeline subscription. The run connects to the supervisor's admin endpoint and sends
//! `SUBSCRIBE`; the supervisor answers with a stream of RESP bulk strings, each one JSON
//! `reports::timeline::Event` (past events first, then live ones), until the connection
//! closes. The [`Feed`] keeps what arrived (written out as `timeline.json`), republishes the
//! phases to the connections on every phase event, and tells the run when the upgrade
//! ended. Events of an earlier upgrade, replayed, are kept but do not end this run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reports::timeline::{Event, EventKind, Timeline};
use resp::{Client, ClientError, Reply};
use tokio::sync::Notify;

use crate::phase::{PhaseMap, PhaseSource};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most events kept (an upgrade emits a few dozen).
const EVENTS_MAX: usize = 100_000;
/// An `upgrade_end` this much older than the run's start belongs to an earlier upgrade.
const REPLAY_SLACK_MS: u64 = 50;

#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error("cannot reach the supervisor's admin endpoint {addr}: {reason} (is the pair up?)")]
    Unreachable { addr: String, reason: String },
    #[error("the supervisor at {addr} refused the secret: {reason} (pass the pair's secret with --secret-file or TANDEM_SECRET_FILE)")]
    Refused { addr: String, reason: String },
    #[error("subscribing to the timeline at {addr} needs the pair's secret")]
    NoSecret { addr: String },
}

/// What the subscription received, shared with the run.
pub struct Feed {
    state: Mutex<FeedState>,
    phases: Arc<PhaseSource>,
    changed: Notify,
    run_started_ms: u64,
}

struct FeedState {
    timeline: Timeline,
    upgrade_end: Option<(Instant, Event)>,
    /// Why the subscription stopped early, if it did.
    problem: Option<String>,
    closed: bool,
}

impl Feed {
    pub fn new(phases: Arc<PhaseSource>, run_started_ms: u64) -> Feed {
        Feed {
            state: Mutex::new(FeedState {
                timeline: Timeline::new(),
                upgrade_end: None,
                problem: None,
                closed: false,
            }),
            phases,
            changed: Notify::new(),
            run_started_ms,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one event in (the subscription's reader calls this for each).
    pub fn receive(&self, event: Event) {
        let mut state = self.lock();
        if state.timeline.events.len() >= EVENTS_MAX {
            state
                .problem
                .get_or_insert_with(|| format!("more than {EVENTS_MAX} timeline events"));
            return;
        }
        let phase_event = matches!(event.kind, EventKind::PhaseStart | EventKind::PhaseEnd);
        let this_upgrade_ended = event.kind == EventKind::UpgradeEnd
            && event.t_ms + REPLAY_SLACK_MS >= self.run_started_ms;
        if this_upgrade_ended && state.upgrade_end.is_none() {
            state.upgrade_end = Some((Instant::now(), event.clone()));
        }
        state.timeline.events.push(event);
        if phase_event {
            self.phases
                .publish(PhaseMap::from_events(&state.timeline.events));
        }
        drop(state);
        self.changed.notify_one();
    }

    fn stop(&self, problem: Option<String>) {
        let mut state = self.lock();
        state.closed = true;
        if state.problem.is_none() {
            state.problem = problem;
        }
        drop(state);
        self.changed.notify_one();
    }

    /// Waits for the next event (or the end of the subscription).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// When this run's upgrade ended (as received), and the event.
    pub fn upgrade_end(&self) -> Option<(Instant, Event)> {
        self.lock().upgrade_end.clone()
    }

    pub fn timeline(&self) -> Timeline {
        self.lock().timeline.clone()
    }

    /// Why the subscription ended early; `None` if it is live or closed after the upgrade.
    pub fn problem(&self) -> Option<String> {
        let state = self.lock();
        match (&state.problem, state.closed, &state.upgrade_end) {
            (Some(p), _, _) => Some(p.clone()),
            (None, true, None) => {
                Some("the supervisor closed the timeline subscription".to_string())
            }
            _ => None,
        }
    }
}

/// Connects to `admin` and subscribes; the returned task feeds `feed` until the stream ends.
pub async fn subscribe(
    admin: &str,
    secret: Option<&auth::Secret>,
    feed: Arc<Feed>,
) -> Result<tokio::task::JoinHandle<()>, TimelineError> {
    let addr = admin.to_string();
    let unreachable = |e: ClientError| match e {
        ClientError::Auth(reason) => TimelineError::Refused {
            addr: addr.clone(),
            reason,
        },
        e => TimelineError::Unreachable {
            addr: addr.clone(),
            reason: crate::error::describe_client_error(&e),
        },
    };
    let secret = secret.ok_or_else(|| TimelineError::NoSecret { addr: addr.clone() })?;
    let mut client = Client::connect_authenticated(admin, CONNECT_TIMEOUT, secret, "admin")
        .await
        .map_err(unreachable)?;
    client.queue(&[b"SUBSCRIBE"]);
    client.flush().await.map_err(unreachable)?;
    Ok(tokio::spawn(async move {
        loop {
            match client.read_reply().await {
                Ok(Reply::Bulk(json)) => match serde_json::from_slice::<Event>(&json) {
                    Ok(event) => feed.receive(event),
                    Err(e) => {
                        feed.stop(Some(format!("a timeline event is not valid JSON: {e}")));
                        return;
                    }
                },
                Ok(Reply::Error(message)) => {
                    feed.stop(Some(format!(
                        "the supervisor refused the timeline subscription: {message}"
                    )));
                    return;
                }
                Ok(other) => {
                    feed.stop(Some(format!(
                        "unexpected reply on the timeline subscription: {other}"
                    )));
                    return;
                }
                Err(ClientError::Closed) => {
                    feed.stop(None);
                    return;
                }
                Err(e) => {
                    feed.stop(Some(format!("timeline subscription: {e}")));
                    return;
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_upgrade_end_does_not_end_this_run() {
        let source = Arc::new(PhaseSource::default());
        let feed = Feed::new(source.clone(), 10_000);
        let end = |t_ms| Event {
            outcome: Some("completed".into()),
            ..Event::new(t_ms, EventKind::UpgradeEnd)
        };
        feed.receive(end(1_000));
        assert!(feed.upgrade_end().is_none());
        feed.receive(Event {
            phase: Some("baseline".into()),
            ..Event::new(9_000, EventKind::PhaseStart)
        });
        assert_eq!(source.version(), 1, "phases republished");
        feed.receive(end(12_000));
        assert_eq!(feed.upgrade_end().unwrap().1.t_ms, 12_000);
        assert_eq!(feed.timeline().events.len(), 3);
        assert_eq!(feed.problem(), None);
        feed.stop(None);
        assert_eq!(feed.problem(), None, "closed after the upgrade ended: fine");
    }
}
