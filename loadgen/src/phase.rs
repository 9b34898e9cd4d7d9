//! Attributing a sample to the phase it fell in. A [`PhaseMap`] is the timeline's phases as
//! spans (start, end) on the wall clock, looked up by a sample's intended send time (the
//! open-loop schedule's; closed loop: the actual send; see `record`) with the rule of
//! `reports::timeline::Timeline::phase_at` (the latest phase that started at or before it and
//! had not ended); a sample outside every phase belongs to the "steady" phase. The phases
//! are known as the timeline arrives, so the map is rebuilt on each phase event and
//! published through a [`PhaseSource`] that the connections poll cheaply (one atomic load).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use reports::timeline::{Event, EventKind};

/// Where a sample falls outside every phase of the timeline (all of a run without one).
pub const STEADY: &str = "steady";

/// A phase of the map: its index in timeline order, or [`PhaseId::STEADY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhaseId(pub u16);

impl PhaseId {
    pub const STEADY: PhaseId = PhaseId(u16::MAX);
}

/// Most phases a timeline may carry (an upgrade has 8, a fallback 4 more).
pub const PHASES_MAX: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseSpan {
    pub name: String,
    /// Wall-clock milliseconds since the Unix epoch.
    pub start_ms: u64,
    /// `None` while the phase is open.
    pub end_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PhaseMap {
    spans: Vec<PhaseSpan>,
}

impl PhaseMap {
    /// The phases of `events`, in order: a `phase_end` closes the latest open phase of that
    /// name (as `Timeline::phases` reads them).
    pub fn from_events(events: &[Event]) -> PhaseMap {
        let mut spans: Vec<PhaseSpan> = Vec::new();
        for e in events {
            match (e.kind, &e.phase) {
                (EventKind::PhaseStart, Some(name)) if spans.len() < PHASES_MAX => {
                    spans.push(PhaseSpan {
                        name: name.clone(),
                        start_ms: e.t_ms,
                        end_ms: None,
                    })
                }
                (EventKind::PhaseEnd, Some(name)) => {
                    if let Some(open) = spans
                        .iter_mut()
                        .rev()
                        .find(|s| &s.name == name && s.end_ms.is_none())
                    {
                        open.end_ms = Some(e.t_ms.max(open.start_ms));
                    }
                }
                _ => {}
            }
        }
        PhaseMap { spans }
    }

    pub fn spans(&self) -> &[PhaseSpan] {
        &self.spans
    }

    /// The phase of a sample whose request was intended at wall-clock millisecond `t_ms`.
    pub fn phase_at_ms(&self, t_ms: u64) -> PhaseId {
        self.spans
            .iter()
            .enumerate()
            .rev()
            .find(|(_, s)| {
                let end = s.end_ms.map_or(u64::MAX, |e| e.max(s.start_ms + 1));
                s.start_ms <= t_ms && t_ms < end
            })
            .map_or(PhaseId::STEADY, |(i, _)| PhaseId(i as u16))
    }

    pub fn name(&self, id: PhaseId) -> &str {
        self.spans
            .get(usize::from(id.0))
            .map_or(STEADY, |s| s.name.as_str())
    }

    /// The span of a phase; `None` for steady (it has no bounds of its own).
    pub fn span(&self, id: PhaseId) -> Option<&PhaseSpan> {
        self.spans.get(usize::from(id.0))
    }
}

/// The current [`PhaseMap`], shared between the timeline subscription (which publishes) and
/// the connections (which check `version` and take a new snapshot when it moved).
#[derive(Debug, Default)]
pub struct PhaseSource {
    version: AtomicU64,
    map: RwLock<Arc<PhaseMap>>,
}

impl PhaseSource {
    pub fn publish(&self, map: PhaseMap) {
        let mut current = self.map.write().unwrap_or_else(|e| e.into_inner());
        *current = Arc::new(map);
        self.version.fetch_add(1, Ordering::Release);
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> (u64, Arc<PhaseMap>) {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        (self.version(), map.clone())
    }
}

/// A connection's cached view of a [`PhaseSource`].
#[derive(Debug)]
pub struct PhaseView {
    source: Arc<PhaseSource>,
    version: u64,
    map: Arc<PhaseMap>,
}

impl PhaseView {
    pub fn new(source: Arc<PhaseSource>) -> PhaseView {
        let (version, map) = source.snapshot();
        PhaseView {
            source,
            version,
            map,
        }
    }

    /// The latest map (refreshed only if a phase event arrived since the last call).
    pub fn current(&mut self) -> &PhaseMap {
        if self.source.version() != self.version {
            let (version, map) = self.source.snapshot();
            self.version = version;
            self.map = map;
        }
        &self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reports::timeline::{phase, Timeline};

    fn ev(t_ms: u64, kind: EventKind, name: &str) -> Event {
        Event {
            phase: Some(name.into()),
            ..Event::new(t_ms, kind)
        }
    }

    fn upgrade_events() -> Vec<Event> {
        vec![
            Event::new(90, EventKind::UpgradeStart),
            ev(100, EventKind::PhaseStart, phase::BASELINE),
            ev(200, EventKind::PhaseEnd, phase::BASELINE),
            ev(200, EventKind::PhaseStart, phase::B_OUT_OF_SERVICE),
            ev(250, EventKind::PhaseEnd, phase::B_OUT_OF_SERVICE),
            ev(260, EventKind::PhaseStart, phase::B_CATCH_UP),
            ev(300, EventKind::PhaseStart, phase::SWITCHOVER_TO_B),
            ev(300, EventKind::PhaseEnd, phase::SWITCHOVER_TO_B),
            ev(330, EventKind::PhaseEnd, phase::B_CATCH_UP),
            ev(400, EventKind::PhaseStart, phase::EVALUATION),
        ]
    }

    #[test]
    fn samples_fall_in_the_phase_of_their_time() {
        let map = PhaseMap::from_events(&upgrade_events());
        let at = |t| map.name(map.phase_at_ms(t)).to_string();
        assert_eq!(at(50), STEADY, "before the first phase");
        assert_eq!(at(100), phase::BASELINE);
        assert_eq!(at(199), phase::BASELINE);
        assert_eq!(
            at(200),
            phase::B_OUT_OF_SERVICE,
            "a boundary belongs to the next"
        );
        assert_eq!(at(255), STEADY, "between phases");
        assert_eq!(at(270), phase::B_CATCH_UP);
        assert_eq!(at(300), phase::SWITCHOVER_TO_B, "an empty phase lasts 1 ms");
        assert_eq!(at(301), phase::B_CATCH_UP, "back in the enclosing phase");
        assert_eq!(at(350), STEADY);
        assert_eq!(at(10_000), phase::EVALUATION, "an open phase runs on");
        assert_eq!(map.span(PhaseId::STEADY), None);
        assert_eq!(map.spans().len(), 5);
    }

    #[test]
    fn agrees_with_the_reports_timeline() {
        let mut timeline = Timeline::new();
        timeline.events = upgrade_events();
        let map = PhaseMap::from_events(&timeline.events);
        for t in 0..500 {
            let ours = map.phase_at_ms(t);
            let theirs = timeline.phase_at(t, 10_000);
            assert_eq!(
                (ours != PhaseId::STEADY).then(|| map.name(ours).to_string()),
                theirs,
                "at {t} ms"
            );
        }
        let phases: Vec<_> = map
            .spans()
            .iter()
            .map(|s| (s.name.clone(), s.start_ms, s.end_ms.unwrap_or(10_000)))
            .collect();
        assert_eq!(phases, timeline.phases(10_000));
    }

    #[test]
    fn views_follow_the_source() {
        let source = Arc::new(PhaseSource::default());
        let mut view = PhaseView::new(source.clone());
        assert_eq!(view.current().phase_at_ms(150), PhaseId::STEADY);
        source.publish(PhaseMap::from_events(&upgrade_events()));
        assert_eq!(view.current().phase_at_ms(150), PhaseId(0));
    }
}
