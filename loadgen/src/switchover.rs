//! Switchovers as the clients saw them. Every successful update reply marks its 100 µs
//! bucket in a shared bitmap ([`Activity`]; a connection marks a bucket once, so the atomics
//! stay cold). A switchover is known from the timeline (`switchover_begin`/`switchover_end`,
//! `failover`) or, without one, from the connections that had to redirect; its client-visible
//! gap is the longest stretch without any successful reply, across all connections, that
//! overlaps the switchover: from the last success before it to the first success after it.
//!
//! Only update replies count when the workload has updates (reads may still be served by an
//! engine that already refuses writes); a read-only workload counts reads.

use std::sync::atomic::{AtomicU64, Ordering};

use reports::summary::Switchover;
use reports::timeline::{Event, EventKind, SwitchoverKind};

/// Resolution of the gap measurement.
pub const BUCKET_US: u64 = 100;
/// Most buckets kept (16 MiB of bitmap); longer runs use coarser buckets.
const BUCKETS_MAX: u64 = 1 << 27;
/// Slack around a switchover's window when looking for its gap (clocks are read at
/// different moments by the supervisor and the clients).
const WINDOW_SLACK_US: u64 = 10_000;
/// Redirects closer than this belong to the same switchover.
const REDIRECT_EPISODE_US: u64 = 1_000_000;

/// Which buckets had a successful reply.
pub struct Activity {
    bucket_us: u64,
    words: Box<[AtomicU64]>,
}

impl Activity {
    /// Room for `span_us` microseconds from the run's start.
    pub fn new(span_us: u64) -> Activity {
        let bucket_us = BUCKET_US.max(span_us.div_ceil(BUCKETS_MAX));
        let buckets = span_us.div_ceil(bucket_us).max(1);
        let words = (0..buckets.div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Activity { bucket_us, words }
    }

    pub fn bucket_of(&self, at_us: u64) -> u64 {
        at_us / self.bucket_us
    }

    /// Marks bucket `bucket` (see [`Activity::bucket_of`]); beyond the end, nothing.
    pub fn mark(&self, bucket: u64) {
        if let Some(word) = self.words.get((bucket / 64) as usize) {
            word.fetch_or(1 << (bucket % 64), Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> ActivityBits {
        ActivityBits {
            bucket_us: self.bucket_us,
            words: self
                .words
                .iter()
                .map(|w| w.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// A copy of the bitmap, to measure gaps in.
#[derive(Clone, Debug)]
pub struct ActivityBits {
    pub bucket_us: u64,
    pub words: Vec<u64>,
}

impl ActivityBits {
    fn active(&self, bucket: u64) -> bool {
        self.words
            .get((bucket / 64) as usize)
            .is_some_and(|w| w & (1 << (bucket % 64)) != 0)
    }

    fn buckets(&self) -> u64 {
        self.words.len() as u64 * 64
    }

    /// The longest stretch without success overlapping `[from_us, to_us]`, in milliseconds:
    /// from the last active bucket before it to the first one after (so at least one
    /// bucket). `None` if there was no success on one of its sides (the run ended, or had
    /// not begun).
    pub fn gap_ms(&self, from_us: u64, to_us: u64) -> Option<f64> {
        let from = from_us / self.bucket_us;
        let to = (to_us / self.bucket_us).min(self.buckets().saturating_sub(1));
        let mut best: Option<u64> = None;
        // Walk the quiet runs that touch [from, to]: start from the last active bucket at or
        // before `from`.
        let mut at = from.min(to);
        while at > 0 && !self.active(at) {
            at -= 1;
        }
        if !self.active(at) {
            return None;
        }
        while at <= to {
            // `at` is active: find the next active bucket.
            let mut next = at + 1;
            while next < self.buckets() && !self.active(next) {
                next += 1;
            }
            if next >= self.buckets() {
                break; // no success after: the run ended in this gap
            }
            let span = next - at;
            if best.is_none_or(|b| span > b) {
                best = Some(span);
            }
            at = next;
        }
        best.map(|buckets| (buckets * self.bucket_us) as f64 / 1000.0)
    }
}

/// A connection that found it was talking to the wrong engine and had to find the active.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Redirect {
    /// When it noticed: microseconds since the run's start.
    pub at_us: u64,
    /// `Planned` for a refusal (`-NOTACTIVE`, `-READONLY`), `Failover` for a lost
    /// connection.
    pub kind: SwitchoverKind,
    /// When it had its first success from the engine it found (µs since the start);
    /// `None` if it never did.
    pub found_us: Option<u64>,
}

impl Redirect {
    /// From noticing to the first success after it.
    fn span_us(&self) -> (u64, u64) {
        (
            self.at_us,
            self.found_us.unwrap_or(self.at_us).max(self.at_us),
        )
    }
}

/// Requests a connection sent again (refused by an engine that was not the active, or in
/// flight on a connection that was lost), at one moment: each request counted once, at
/// its first re-send (one refused twice counts 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retried {
    /// Microseconds since the run's start.
    pub at_us: u64,
    pub count: u64,
}

/// How far outside a switchover's window a redirect or a retry is still its doing.
pub const ATTRIBUTION_SLACK_MS: u64 = 1_000;

/// A switchover to measure: when, and where its gap may lie.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub kind: SwitchoverKind,
    /// Wall-clock milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub stepup_ms: f64,
    /// Wall-clock bounds of the switchover.
    pub from_ms: u64,
    pub to_ms: u64,
}

/// The switchovers of a timeline between `started_ms` and `ended_ms`: begin/end pairs and
/// failovers (whose window reaches back over the step-up time it reports).
pub fn windows_from_timeline(events: &[Event], started_ms: u64, ended_ms: u64) -> Vec<Window> {
    let mut out = Vec::new();
    let mut open: Option<&Event> = None;
    for e in events {
        match e.kind {
            EventKind::SwitchoverBegin => open = Some(e),
            EventKind::SwitchoverEnd => {
                let begin = open.take();
                let from_ms = begin.map_or(e.t_ms, |b| b.t_ms);
                out.push(Window {
                    kind: e
                        .switchover
                        .or(begin.and_then(|b| b.switchover))
                        .unwrap_or(SwitchoverKind::Planned),
                    at_ms: from_ms,
                    stepup_ms: e.stepup_ms.unwrap_or(0.0),
                    from_ms,
                    to_ms: e.t_ms.max(from_ms),
                });
            }
            EventKind::Failover => {
                let stepup_ms = e.stepup_ms.unwrap_or(0.0);
                let from_ms = e.t_ms.saturating_sub(stepup_ms.ceil() as u64);
                out.push(Window {
                    kind: e.switchover.unwrap_or(SwitchoverKind::Failover),
                    at_ms: from_ms,
                    stepup_ms,
                    from_ms,
                    to_ms: e.t_ms,
                });
            }
            _ => {}
        }
    }
    if let Some(begin) = open {
        out.push(Window {
            kind: begin.switchover.unwrap_or(SwitchoverKind::Planned),
            at_ms: begin.t_ms,
            stepup_ms: 0.0,
            from_ms: begin.t_ms,
            to_ms: ended_ms.max(begin.t_ms),
        });
    }
    out.retain(|w| w.to_ms >= started_ms && w.from_ms <= ended_ms);
    out
}

/// Switchovers inferred from redirects (no timeline): redirects less than a second apart
/// (from one's first success to the next one's notice) are one episode, which ends when the
/// last of its connections had a success again; a lost connection makes it a failover.
pub fn windows_from_redirects(
    mut redirects: Vec<Redirect>,
    wall_ms_at_us: impl Fn(u64) -> u64,
) -> Vec<Window> {
    redirects.sort_by_key(|r| r.at_us);
    let mut out: Vec<(u64, u64, SwitchoverKind)> = Vec::new();
    for r in redirects {
        let (at_us, end_us) = r.span_us();
        match out.last_mut() {
            Some((_, last, kind)) if at_us <= *last + REDIRECT_EPISODE_US => {
                *last = (*last).max(end_us);
                if r.kind == SwitchoverKind::Failover {
                    *kind = SwitchoverKind::Failover;
                }
            }
            _ => out.push((at_us, end_us, r.kind)),
        }
    }
    out.into_iter()
        .map(|(first, last, kind)| Window {
            kind,
            at_ms: wall_ms_at_us(first),
            stepup_ms: 0.0,
            from_ms: wall_ms_at_us(first),
            to_ms: wall_ms_at_us(last),
        })
        .collect()
}

pub fn kind_name(kind: SwitchoverKind) -> &'static str {
    match kind {
        SwitchoverKind::Planned => "planned",
        SwitchoverKind::Failover => "failover",
        SwitchoverKind::Fallback => "fallback",
    }
}

/// Measures each window's gap in `bits` (offsets from a run that started at wall-clock
/// microsecond `start_wall_us`).
pub fn summarize(windows: &[Window], bits: &ActivityBits, start_wall_us: u64) -> Vec<Switchover> {
    let offset_us = |ms: u64| (ms * 1000).saturating_sub(start_wall_us);
    windows
        .iter()
        .map(|w| {
            let from = offset_us(w.from_ms).saturating_sub(WINDOW_SLACK_US);
            let to = offset_us(w.to_ms) + WINDOW_SLACK_US;
            Switchover {
                kind: kind_name(w.kind).to_string(),
                at_ms: w.at_ms,
                stepup_ms: w.stepup_ms,
                client_gap_ms: bits.gap_ms(from, to).unwrap_or(0.0),
                retried: 0,
                redirected: 0,
                pair: None,
            }
        })
        .collect()
}

/// Fills each switchover's `retried` and `redirected` (`switchovers` are `windows`'
/// summaries, in order): a redirect belongs to the switchover whose window, widened by
/// [`ATTRIBUTION_SLACK_MS`] on both sides, overlaps its span from notice to first success,
/// and a retry to the one whose widened window holds its moment; the nearest when several
/// do, none when no window does (a connection lost for a reason of its own).
pub fn attribute(
    switchovers: &mut [Switchover],
    windows: &[Window],
    redirects: &[Redirect],
    retried: &[Retried],
    wall_ms_at_us: impl Fn(u64) -> u64,
) {
    let nearest = |from_ms: u64, to_ms: u64| -> Option<usize> {
        windows
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let distance = if to_ms < w.from_ms {
                    w.from_ms - to_ms
                } else {
                    from_ms.saturating_sub(w.to_ms)
                };
                (distance <= ATTRIBUTION_SLACK_MS).then_some((distance, i))
            })
            .min()
            .map(|(_, i)| i)
    };
    for r in redirects {
        let (at_us, end_us) = r.span_us();
        if let Some(s) = nearest(wall_ms_at_us(at_us), wall_ms_at_us(end_us))
            .and_then(|i| switchovers.get_mut(i))
        {
            s.redirected += 1;
        }
    }
    for r in retried {
        let at_ms = wall_ms_at_us(r.at_us);
        if let Some(s) = nearest(at_ms, at_ms).and_then(|i| switchovers.get_mut(i)) {
            s.retried += r.count;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits_with(active: &[u64]) -> ActivityBits {
        let a = Activity::new(100_000);
        for &b in active {
            a.mark(b);
        }
        a.snapshot()
    }

    #[test]
    fn the_longest_quiet_stretch_over_the_window_is_the_gap() {
        // Busy every bucket until 100, quiet until 150, busy again; a short quiet at 300.
        let mut active: Vec<u64> = (0..100).chain(150..300).chain(305..400).collect();
        active.sort();
        let bits = bits_with(&active);
        // Buckets are 100 us: the quiet 100..150 is a 5 ms gap (99 -> 150 = 51 buckets).
        assert_eq!(bits.gap_ms(120 * 100, 130 * 100), Some(5.1));
        // A window over both gaps takes the longer.
        assert_eq!(bits.gap_ms(50 * 100, 350 * 100), Some(5.1));
        // A window over busy buckets only: one bucket.
        assert_eq!(bits.gap_ms(200 * 100, 210 * 100), Some(0.1));
        // After the last success: no gap to speak of.
        assert_eq!(bits.gap_ms(500 * 100, 510 * 100), None);
        // Before the first success.
        assert_eq!(bits_with(&[10]).gap_ms(0, 5 * 100), None);
        assert_eq!(bits_with(&[]).gap_ms(0, 5 * 100), None);
    }

    #[test]
    fn marks_outside_the_bitmap_are_ignored() {
        let a = Activity::new(1000);
        a.mark(1 << 40);
        assert!(a.snapshot().words.iter().all(|w| *w == 0));
        let long = Activity::new(1 << 40);
        assert!(long.bucket_of((1 << 40) - 1) < BUCKETS_MAX);
    }

    #[test]
    fn windows_from_a_timeline() {
        let begin = Event {
            switchover: Some(SwitchoverKind::Fallback),
            ..Event::new(1_000, EventKind::SwitchoverBegin)
        };
        let end = Event {
            switchover: Some(SwitchoverKind::Fallback),
            stepup_ms: Some(4.5),
            ..Event::new(1_005, EventKind::SwitchoverEnd)
        };
        let failover = Event {
            stepup_ms: Some(800.0),
            ..Event::new(5_000, EventKind::Failover)
        };
        let old = Event::new(10, EventKind::Failover);
        let w = windows_from_timeline(&[old, begin, end, failover], 500, 9_000);
        assert_eq!(w.len(), 2, "the failover before the run is left out");
        assert_eq!(w[0].kind, SwitchoverKind::Fallback);
        assert_eq!(
            (w[0].from_ms, w[0].to_ms, w[0].stepup_ms),
            (1_000, 1_005, 4.5)
        );
        assert_eq!(w[1].kind, SwitchoverKind::Failover);
        assert_eq!((w[1].from_ms, w[1].to_ms), (4_200, 5_000));
        let unfinished =
            windows_from_timeline(&[Event::new(2_000, EventKind::SwitchoverBegin)], 0, 3_000);
        assert_eq!(unfinished[0].to_ms, 3_000);
        assert_eq!(unfinished[0].kind, SwitchoverKind::Planned);
    }

    #[test]
    fn redirect_episodes() {
        let r = |at_us, kind| Redirect {
            at_us,
            kind,
            found_us: None,
        };
        let windows = windows_from_redirects(
            vec![
                r(2_000_000, SwitchoverKind::Planned),
                r(2_100_000, SwitchoverKind::Failover),
                r(9_000_000, SwitchoverKind::Planned),
            ],
            |us| us / 1000,
        );
        assert_eq!(windows.len(), 2);
        assert_eq!(windows[0].kind, SwitchoverKind::Failover);
        assert_eq!((windows[0].from_ms, windows[0].to_ms), (2_000, 2_100));
        assert_eq!(windows[1].kind, SwitchoverKind::Planned);
        // An episode lasts until its last connection found the active.
        let windows = windows_from_redirects(
            vec![
                Redirect {
                    at_us: 2_000_000,
                    kind: SwitchoverKind::Failover,
                    found_us: Some(4_500_000),
                },
                Redirect {
                    at_us: 5_000_000,
                    kind: SwitchoverKind::Failover,
                    found_us: Some(5_100_000),
                },
            ],
            |us| us / 1000,
        );
        assert_eq!(windows.len(), 1, "{windows:?}");
        assert_eq!((windows[0].from_ms, windows[0].to_ms), (2_000, 5_100));
    }

    #[test]
    fn redirects_and_retries_go_to_the_switchover_they_fall_near() {
        let window = |from_ms, to_ms| Window {
            kind: SwitchoverKind::Planned,
            at_ms: from_ms,
            stepup_ms: 0.0,
            from_ms,
            to_ms,
        };
        let windows = vec![window(10_000, 10_010), window(20_000, 20_500)];
        let bits = bits_with(&[]);
        let mut switchovers = summarize(&windows, &bits, 0);
        let redirect = |at_ms: u64, found_ms: Option<u64>| Redirect {
            at_us: at_ms * 1000,
            kind: SwitchoverKind::Planned,
            found_us: found_ms.map(|ms| ms * 1000),
        };
        let redirects = [
            redirect(10_005, Some(10_020)),
            redirect(9_500, None),
            // Noticed long before (a hung active), found the new one just after.
            redirect(15_000, Some(20_600)),
            redirect(30_000, Some(30_001)), // no switchover near
        ];
        let retried = [
            Retried {
                at_us: 10_015_000,
                count: 7,
            },
            Retried {
                at_us: 21_400_000,
                count: 3,
            },
            Retried {
                at_us: 25_000_000,
                count: 100,
            },
        ];
        attribute(&mut switchovers, &windows, &redirects, &retried, |us| {
            us / 1000
        });
        assert_eq!((switchovers[0].redirected, switchovers[0].retried), (2, 7));
        assert_eq!((switchovers[1].redirected, switchovers[1].retried), (1, 3));
    }

    #[test]
    fn summaries_name_the_kind_and_gap() {
        let active: Vec<u64> = (0..100).chain(150..300).collect();
        let bits = bits_with(&active);
        let w = Window {
            kind: SwitchoverKind::Planned,
            at_ms: 1,
            stepup_ms: 2.0,
            from_ms: 12,
            to_ms: 13,
        };
        let s = summarize(&[w], &bits, 0);
        assert_eq!(s[0].kind, "planned");
        assert_eq!(s[0].client_gap_ms, 5.1);
        assert_eq!(s[0].stepup_ms, 2.0);
    }
}
