//! What each request is: a seeded random stream ([`Rng`]), the choice of operation by the
//! mix ([`OpChooser`]), the key it touches ([`KeyPicker`], uniform or [`Zipfian`]) and the
//! step of a session's cycle ([`SessionCursor`]).
//!
//! The key space is partitioned between connections: connection `c` of `n` only touches keys
//! `k` with `k mod n = c`, so that the writes to one key come from one connection, in order,
//! and the lost-update check can be exact. The distribution is applied within each
//! partition (its local rank `r` maps to key `r * n + c`).

use crate::config::{Distribution, Mix};

/// SplitMix64 (Steele, Lea, Flood): tiny, fast, and good enough to pick keys.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator for stream `stream` of a run seeded `seed` (one per connection).
    pub fn for_stream(seed: u64, stream: u64) -> Rng {
        let mut mixer = Rng(seed ^ stream.wrapping_mul(0xd1b5_4a32_d192_ed03));
        Rng(mixer.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n) (Lemire's multiply-shift; the bias is below 2^-64 * n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// The zipfian generator of Gray et al., "Quickly generating billion-record synthetic
/// databases" (SIGMOD 1994), as YCSB implements it: rank 0 is the most popular.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

impl Zipfian {
    /// Computing zeta(n) is O(n): build one per partition size and share it.
    pub fn new(items: u64, theta: f64) -> Zipfian {
        assert!(items > 0, "a zipfian over no items");
        assert!(
            theta > 0.0 && theta < 1.0,
            "zipfian theta {theta} out of (0, 1)"
        );
        let zeta_n = zeta(items, theta);
        let zeta_2 = zeta(2.min(items), theta);
        let eta = if items > 1 {
            (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n)
        } else {
            1.0
        };
        Zipfian {
            items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta,
        }
    }

    pub fn items(&self) -> u64 {
        self.items
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if self.items > 1 && uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.items - 1)
    }
}

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// Keys of the partition `partition` of `stride` partitions of `keys` keys: how many there
/// are (`k < keys` with `k mod stride = partition`).
pub fn partition_len(keys: u64, stride: u64, partition: u64) -> u64 {
    debug_assert!(partition < stride);
    keys.saturating_sub(partition).div_ceil(stride)
}

/// Picks keys of one connection's partition.
#[derive(Clone, Debug)]
pub struct KeyPicker {
    partition: u64,
    stride: u64,
    local_keys: u64,
    zipfian: Option<std::sync::Arc<Zipfian>>,
}

impl KeyPicker {
    /// `zipfian`, when the distribution is zipfian, must be over `partition_len(..)` items.
    pub fn new(
        keys: u64,
        stride: u64,
        partition: u64,
        zipfian: Option<std::sync::Arc<Zipfian>>,
    ) -> KeyPicker {
        let local_keys = partition_len(keys, stride, partition);
        assert!(
            local_keys > 0,
            "partition {partition} of {stride} has no key"
        );
        if let Some(z) = &zipfian {
            assert_eq!(z.items(), local_keys, "zipfian built for another partition");
        }
        KeyPicker {
            partition,
            stride,
            local_keys,
            zipfian,
        }
    }

    pub fn local_keys(&self) -> u64 {
        self.local_keys
    }

    /// A local index in [0, local_keys).
    pub fn pick_local(&self, rng: &mut Rng) -> u64 {
        match &self.zipfian {
            Some(z) => z.sample(rng),
            None => rng.below(self.local_keys),
        }
    }

    /// The global key index of a local one.
    pub fn key(&self, local: u64) -> u64 {
        local * self.stride + self.partition
    }
}

/// Builds the shared zipfian generators a run's partitions need (at most two sizes).
pub fn zipfians_for(
    distribution: Distribution,
    keys: u64,
    stride: u64,
) -> Vec<std::sync::Arc<Zipfian>> {
    let Distribution::Zipfian { theta } = distribution else {
        return Vec::new();
    };
    let mut out: Vec<std::sync::Arc<Zipfian>> = Vec::new();
    for partition in 0..stride {
        let len = partition_len(keys, stride, partition);
        if !out.iter().any(|z| z.items() == len) {
            out.push(std::sync::Arc::new(Zipfian::new(len, theta)));
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Set,
    Get,
    Session,
}

/// Draws operations in the proportions of a [`Mix`].
#[derive(Clone, Copy, Debug)]
pub struct OpChooser {
    set_below: u64,
    get_below: u64,
    total: u64,
}

impl OpChooser {
    pub fn new(mix: Mix) -> OpChooser {
        let total = mix.total();
        assert!(total > 0, "an empty mix");
        OpChooser {
            set_below: u64::from(mix.set),
            get_below: u64::from(mix.set) + u64::from(mix.get),
            total,
        }
    }

    pub fn choose(&self, rng: &mut Rng) -> OpKind {
        let x = rng.below(self.total);
        if x < self.set_below {
            OpKind::Set
        } else if x < self.get_below {
            OpKind::Get
        } else {
            OpKind::Session
        }
    }
}

/// `SESSION.UPDATE`s between a session's `SESSION.OPEN` and its `SESSION.END`.
pub const SESSION_UPDATES: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionStep {
    Open,
    Update,
    End,
}

/// A connection's sessions: generation `g` is the session id `s<conn>.<g>`, cycled through
/// open, [`SESSION_UPDATES`] updates and end; the next generation then starts.
#[derive(Clone, Debug, Default)]
pub struct SessionCursor {
    generation: u64,
    step: u32,
}

impl SessionCursor {
    /// The next session operation: (generation, step).
    pub fn next_step(&mut self) -> (u64, SessionStep) {
        let generation = self.generation;
        let step = match self.step {
            0 => SessionStep::Open,
            s if s <= SESSION_UPDATES => SessionStep::Update,
            _ => SessionStep::End,
        };
        if step == SessionStep::End {
            self.generation += 1;
            self.step = 0;
        } else {
            self.step += 1;
        }
        (generation, step)
    }

    /// Gives up generation `generation` (an operation on it had an unknown outcome): the
    /// next operation opens a new session.
    pub fn abandon(&mut self, generation: u64) {
        if self.generation <= generation {
            self.generation = generation + 1;
            self.step = 0;
        }
    }

    /// Generations started so far.
    pub fn generations(&self) -> u64 {
        self.generation + u64::from(self.step > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_seeded_and_bounded() {
        let a: Vec<u64> = (0..5)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..5)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        let mut r = Rng::for_stream(1, 3);
        assert!((0..10_000).all(|_| r.below(10) < 10));
        assert!((0..10_000).all(|_| (0.0..1.0).contains(&r.next_f64())));
        assert_ne!(
            Rng::for_stream(1, 0).next_u64(),
            Rng::for_stream(1, 1).next_u64()
        );
    }

    #[test]
    fn zipfian_prefers_low_ranks_and_stays_in_range() {
        let z = Zipfian::new(1000, 0.99);
        let mut rng = Rng::new(42);
        let mut counts = vec![0u32; 1000];
        for _ in 0..200_000 {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[500]);
        // Rank 0 has probability 1/zeta(1000, 0.99), about 13%.
        let share_0 = f64::from(counts[0]) / 200_000.0;
        assert!((0.11..0.16).contains(&share_0), "{share_0}");
        let z1 = Zipfian::new(1, 0.5);
        assert!((0..100).all(|_| z1.sample(&mut rng) == 0));
        let z2 = Zipfian::new(2, 0.5);
        assert!((0..100).all(|_| z2.sample(&mut rng) < 2));
    }

    #[test]
    fn partitions_cover_the_key_space_once() {
        for (keys, stride) in [(10, 3), (9, 3), (3, 3), (100_000, 16), (7, 1)] {
            let mut seen = vec![false; keys as usize];
            for partition in 0..stride {
                let picker = KeyPicker::new(keys, stride, partition, None);
                for local in 0..picker.local_keys() {
                    let key = picker.key(local);
                    assert_eq!(key % stride, partition);
                    assert!(!seen[key as usize], "key {key} twice");
                    seen[key as usize] = true;
                }
            }
            assert!(seen.iter().all(|s| *s), "keys={keys} stride={stride}");
        }
        let zipfians = zipfians_for(Distribution::Zipfian { theta: 0.9 }, 10, 3);
        assert_eq!(zipfians.len(), 2); // partitions of 4, 3 and 3 keys
    }

    #[test]
    fn mix_proportions() {
        let chooser = OpChooser::new(Mix {
            set: 70,
            get: 20,
            session: 10,
        });
        let mut rng = Rng::new(1);
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            counts[chooser.choose(&mut rng) as usize] += 1;
        }
        assert!((69_000..71_000).contains(&counts[0]), "{counts:?}");
        assert!((9_000..11_000).contains(&counts[2]), "{counts:?}");
        let only_get = OpChooser::new(Mix {
            set: 0,
            get: 1,
            session: 0,
        });
        assert!((0..100).all(|_| only_get.choose(&mut rng) == OpKind::Get));
    }

    #[test]
    fn session_cycle_and_abandon() {
        let mut c = SessionCursor::default();
        let steps: Vec<_> = (0..6).map(|_| c.next_step()).collect();
        use SessionStep::*;
        assert_eq!(
            steps,
            [
                (0, Open),
                (0, Update),
                (0, Update),
                (0, Update),
                (0, End),
                (1, Open)
            ]
        );
        c.abandon(1);
        assert_eq!(c.next_step(), (2, Open));
        c.abandon(0); // an older generation: nothing changes
        assert_eq!(c.next_step(), (2, Update));
        assert_eq!(c.generations(), 3);
    }
}
