//! etcd as a pair's witness (`tandem pair up --etcd URLS`).
//!
//! Keys (see `fleet::keys`): `P/leader/NAME` holds the id of the supervisor that leads the
//! pair, attached to that supervisor's etcd lease (TTL `--witness-ttl`, 3 s by default, kept
//! alive every third of it); `P/pair/NAME` holds the pair's [`PairRecord`], written only by a
//! transaction that requires `P/leader/NAME` to still be this supervisor's (its value and its
//! create revision). So two supervisors of one pair can never both grant: the second one
//! finds the leader key taken and waits as a hot spare until it goes (its lease expired: the
//! leader died or froze), then takes it and the pair over, reading the pair's state from the
//! record.
//!
//! The supervisor side is [`Witness`] (held by the supervisor) with a keep-alive task that
//! reports [`Health`]; the engine side is [`EngineWitness`]: an engine offered a new epoch
//! (PROMOTE, FOLLOW, SWITCHOVER, LEASE above its own) reads the record and takes the epoch
//! only if the record holds it.
//!
//! Failure behaviour, in short:
//! - a leader whose last successful keep-alive was sent more than `ttl - margin` ago may have
//!   lost its lease (frozen, SIGSTOPped): it makes no engine call until a keep-alive
//!   succeeds again; one that etcd tells its lease expired takes a new lease and the leader
//!   key again if nobody took them and the pair's record is still the one it last wrote
//!   (`Witness::retake`), and steps down (exits 3) otherwise; meanwhile, no engine call;
//! - etcd unreachable (keep-alives tried on time, none answered): the leader keeps the pair
//!   serving at its epoch with sync leases only (they need nothing new from etcd), grants no
//!   epoch and does not let the active run simplex (the standby's being stale must be in etcd
//!   before then); what waits is retried when etcd answers again;
//! - a write of the record is slow (etcd busy): a grant that needs it (a switchover, an
//!   upgrade's start) waits for it up to `WITNESS_WAIT`, with the write in the background
//!   and the pair served meanwhile (`Supervisor::await_witness`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet::keys::{Layout, PairRecord};
use fleet::{Client, Compare, Op};

/// `--etcd`, `--etcd-prefix`, `--witness-ttl`.
#[derive(Clone, Debug)]
pub struct WitnessArgs {
    pub urls: String,
    pub prefix: String,
    pub ttl: Duration,
}

/// The id a supervisor writes as the pair's leader: `host/pid/start_ms`.
pub fn supervisor_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!(
        "{host}/{}/{}",
        std::process::id(),
        reports::timeline::now_ms()
    )
}

/// What the keep-alive task knows of the supervisor's etcd lease.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// When the last keep-alive that etcd accepted was sent (monotonic).
    pub last_ok_sent: Option<Instant>,
    /// When the last keep-alive was tried, whatever came of it.
    pub last_attempt: Option<Instant>,
    /// etcd has not answered since (monotonic, wall ms, why).
    pub unreachable_since: Option<(Instant, u64, String)>,
    /// etcd said the lease is gone: this supervisor leads nothing any more.
    pub lost: Option<String>,
}

/// May the leader act on the engines now?
#[derive(Clone, Debug, PartialEq)]
pub enum Standing {
    /// Its lease is surely alive: anything.
    Sure,
    /// etcd is unreachable and the keep-alives were tried on time: the pair keeps serving at
    /// its epoch (sync leases, statuses), nothing that etcd would have to witness.
    EtcdDown,
    /// The lease may have expired without this supervisor noticing (it was frozen): no
    /// engine call at all until a keep-alive tells.
    Doubtful,
    /// The lease is gone: step down.
    Lost(String),
}

/// Why the pair's record could not be written.
#[derive(Debug)]
pub enum PublishError {
    /// Another supervisor leads the pair (its id, if the key exists).
    NotLeader(Option<String>),
    /// etcd did not answer, or answered something else.
    Unreachable(String),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::NotLeader(Some(id)) => write!(f, "another supervisor leads: {id}"),
            PublishError::NotLeader(None) => f.write_str("this supervisor no longer leads"),
            PublishError::Unreachable(e) => write!(f, "etcd unreachable: {e}"),
        }
    }
}

/// The supervisor's side.
pub struct Witness {
    pub client: Client,
    /// The same, with a short deadline: the record is written from the supervisor's loop,
    /// which must not stop renewing the active's lease for long while etcd is out of reach.
    fast: Client,
    pub layout: Layout,
    pub name: String,
    pub id: String,
    pub ttl: Duration,
    pub lease: i64,
    /// The create revision of `P/leader/NAME` once this supervisor holds it.
    pub leader_rev: Option<i64>,
    /// The leader's id as last seen (this supervisor's once it leads).
    pub leader: Option<String>,
    health: Arc<Mutex<Health>>,
    /// Wakes the keep-alive task at once (after a pause).
    poke: Arc<tokio::sync::Notify>,
    /// The epoch and promotability the last record written to etcd held.
    pub published: Option<(u64, bool)>,
    /// The supervisor's state changed since the record was written.
    pub dirty: bool,
    /// The last time a write was tried and etcd did not answer.
    pub last_failed_publish: Option<Instant>,
    /// Why the last write failed.
    pub last_publish_error: Option<String>,
    /// The mod revision of `P/pair/NAME` this supervisor last wrote: a lease that expired
    /// during an etcd outage is taken again only if the record is still this one.
    pub record_rev: Option<i64>,
    /// A write of the record runs in the background (`spawn_publish`): the loop's own writes
    /// wait, so that an older record does not land after it.
    pub in_flight: bool,
    /// The last time the leader key was tried again after the lease expired (`retake`).
    pub last_retake: Option<Instant>,
    /// The keep-alive task of the current lease (ended when a new lease replaces it).
    keeper: Option<tokio::task::JoinHandle<()>>,
}

impl Witness {
    /// Connects (grants the lease, starts keeping it alive).
    pub async fn connect(args: &WitnessArgs, name: &str) -> anyhow::Result<Witness> {
        fleet::keys::check_name(name).map_err(anyhow::Error::msg)?;
        let ttl = args.ttl.max(Duration::from_secs(1));
        // A call must end well within a third of the TTL: keep-alives are that far apart.
        let timeout = (ttl / 3).clamp(Duration::from_millis(200), Duration::from_secs(2));
        let client = Client::new(&args.urls)
            .map_err(anyhow::Error::msg)?
            .with_timeout(timeout);
        let ttl_s = ttl.as_secs_f64().ceil() as i64;
        let lease = client
            .lease_grant(ttl_s)
            .await
            .map_err(|e| anyhow::anyhow!("granting an etcd lease at {}: {e}", args.urls))?;
        let health = Arc::new(Mutex::new(Health {
            last_ok_sent: Some(Instant::now()),
            ..Health::default()
        }));
        let poke = Arc::new(tokio::sync::Notify::new());
        let keeper = tokio::spawn(keep_alive(
            client.clone(),
            lease,
            ttl,
            health.clone(),
            poke.clone(),
        ));
        Ok(Witness {
            fast: client.clone().with_timeout(PUBLISH_TIMEOUT),
            client,
            layout: Layout::new(&args.prefix),
            name: name.to_string(),
            id: supervisor_id(),
            ttl,
            lease,
            leader_rev: None,
            leader: None,
            health,
            poke,
            published: None,
            dirty: true,
            last_failed_publish: None,
            last_publish_error: None,
            record_rev: None,
            in_flight: false,
            last_retake: None,
            keeper: Some(keeper),
        })
    }

    pub fn leader_key(&self) -> String {
        self.layout.leader(&self.name)
    }

    pub fn pair_key(&self) -> String {
        self.layout.pair(&self.name)
    }

    pub fn health(&self) -> Health {
        self.health.lock().expect("health lock").clone()
    }

    /// Asks the keep-alive task for a keep-alive now.
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// A lease that may have run out without a word is taken as run out `margin` before its
    /// TTL: a third of it (the keep-alive period), at least 300 ms.
    fn margin(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(300))
    }

    pub fn standing(&self) -> Standing {
        let h = self.health();
        if let Some(why) = h.lost {
            return Standing::Lost(why);
        }
        let now = Instant::now();
        let sure_for = self.ttl.saturating_sub(self.margin());
        if h.last_ok_sent
            .is_some_and(|t| now.duration_since(t) < sure_for)
        {
            return Standing::Sure;
        }
        // etcd down, not this process frozen: keep-alives were tried on time and failed.
        let on_time = self.ttl / 3 + self.client_timeout() + Duration::from_millis(500);
        match (&h.unreachable_since, h.last_attempt) {
            (Some(_), Some(at)) if now.duration_since(at) < on_time => Standing::EtcdDown,
            _ => Standing::Doubtful,
        }
    }

    fn client_timeout(&self) -> Duration {
        (self.ttl / 3).clamp(Duration::from_millis(200), Duration::from_secs(2))
    }

    /// Tries to take `P/leader/NAME`: Ok(None) if this supervisor leads now, Ok(Some(id)) if
    /// another one does.
    pub async fn campaign(&mut self) -> Result<Option<String>, fleet::Error> {
        let key = self.leader_key();
        let outcome = self
            .client
            .txn(
                &[Compare::Version(key.clone(), 0)],
                &[
                    Op::Put {
                        key: key.clone(),
                        value: self.id.clone().into_bytes(),
                        lease: self.lease,
                    },
                    Op::Get(key.clone()),
                ],
                &[Op::Get(key.clone())],
            )
            .await?;
        let kv = outcome.gets.first().and_then(|g| g.first()).cloned();
        let holder = kv
            .as_ref()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        if outcome.succeeded {
            self.leader_rev = Some(kv.map_or(outcome.revision, |kv| kv.create_revision));
            self.leader = Some(self.id.clone());
            return Ok(None);
        }
        self.leader = holder.clone();
        Ok(Some(holder.unwrap_or_default()))
    }

    /// The leader's id, if the key exists.
    pub async fn current_leader(&self) -> Result<Option<String>, fleet::Error> {
        Ok(self
            .client
            .get(&self.leader_key())
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// The pair's record, if there is one.
    pub async fn read_record(&self) -> Result<Option<PairRecord>, String> {
        self.client
            .get_json(&self.pair_key())
            .await
            .map_err(|e| e.to_string())
    }

    /// Writes the pair's record, if this supervisor still leads: with a short deadline, or
    /// (`patient`, for a grant) the client's.
    pub async fn publish(
        &mut self,
        record: &PairRecord,
        patient: bool,
    ) -> Result<(), PublishError> {
        let client = if patient { &self.client } else { &self.fast };
        let write = self.write(client.clone(), record)?;
        let outcome = write.await;
        self.published_with(record, outcome)
    }

    /// The write of `record` as a future of its own (to run in the background while the
    /// supervisor's loop keeps the pair served), with `timeout` as its deadline; then
    /// `published_with` its outcome.
    pub fn spawn_publish(
        &self,
        record: &PairRecord,
        timeout: Duration,
    ) -> Result<tokio::task::JoinHandle<fleet::etcd::Result<fleet::etcd::TxnOutcome>>, PublishError>
    {
        let write = self.write(self.client.clone().with_timeout(timeout), record)?;
        Ok(tokio::spawn(write))
    }

    fn write(
        &self,
        client: Client,
        record: &PairRecord,
    ) -> Result<
        impl std::future::Future<Output = fleet::etcd::Result<fleet::etcd::TxnOutcome>> + Send + 'static,
        PublishError,
    > {
        let key = self.leader_key();
        let Some(rev) = self.leader_rev else {
            return Err(PublishError::NotLeader(self.leader.clone()));
        };
        let value = serde_json::to_vec(record).expect("record serializes");
        let (id, pair_key) = (self.id.clone(), self.pair_key());
        Ok(async move {
            client
                .txn(
                    &[
                        Compare::Value(key.clone(), id.into_bytes()),
                        Compare::CreateRevision(key.clone(), rev),
                    ],
                    &[Op::put(pair_key, value)],
                    &[Op::Get(key)],
                )
                .await
        })
    }

    /// What came of writing `record`.
    pub fn published_with(
        &mut self,
        record: &PairRecord,
        outcome: fleet::etcd::Result<fleet::etcd::TxnOutcome>,
    ) -> Result<(), PublishError> {
        match outcome {
            Ok(o) if o.succeeded => {
                self.published = Some((record.epoch, promotable_of(record)));
                self.record_rev = Some(o.revision);
                self.last_failed_publish = None;
                Ok(())
            }
            Ok(o) => {
                let holder = o
                    .gets
                    .first()
                    .and_then(|g| g.first())
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                self.leader = holder.clone();
                Err(PublishError::NotLeader(holder))
            }
            Err(e) => {
                self.last_failed_publish = Some(Instant::now());
                self.last_publish_error = Some(e.to_string());
                Err(PublishError::Unreachable(e.to_string()))
            }
        }
    }

    /// etcd said this supervisor's lease expired (an etcd outage longer than the TTL, or
    /// this process frozen): takes a new lease and the leader key again, but only if nobody
    /// holds the key and `P/pair/NAME` is still the record this supervisor last wrote (its
    /// mod revision, or its own id and epoch): then nothing happened meanwhile and it goes
    /// on leading. Ok(true) leads again; Ok(false) another supervisor took the pair over (or
    /// wrote its record): step down; Err: etcd did not answer, try again later.
    pub async fn retake(&mut self) -> Result<bool, String> {
        self.last_retake = Some(Instant::now());
        let ttl_s = self.ttl.as_secs_f64().ceil() as i64;
        let lease = self
            .client
            .lease_grant(ttl_s)
            .await
            .map_err(|e| e.to_string())?;
        let (key, pair_key) = (self.leader_key(), self.pair_key());
        let mut compares = vec![Compare::Version(key.clone(), 0)];
        if let Some(rev) = self.record_rev {
            compares.push(Compare::ModRevision(pair_key.clone(), rev));
        }
        let outcome = self
            .client
            .txn(
                &compares,
                &[
                    Op::Put {
                        key: key.clone(),
                        value: self.id.clone().into_bytes(),
                        lease,
                    },
                    Op::Get(key.clone()),
                ],
                &[Op::Get(key.clone()), Op::Get(pair_key.clone())],
            )
            .await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                let _ = self.client.lease_revoke(lease).await;
                return Err(e.to_string());
            }
        };
        if outcome.succeeded {
            let kv = outcome.gets.first().and_then(|g| g.first());
            self.leader_rev = Some(kv.map_or(outcome.revision, |kv| kv.create_revision));
            self.leader = Some(self.id.clone());
            self.lease = lease;
            *self.health.lock().expect("health lock") = Health {
                last_ok_sent: Some(Instant::now()),
                ..Health::default()
            };
            if let Some(old) = self.keeper.take() {
                old.abort();
            }
            self.keeper = Some(tokio::spawn(keep_alive(
                self.client.clone(),
                lease,
                self.ttl,
                self.health.clone(),
                self.poke.clone(),
            )));
            return Ok(true);
        }
        let _ = self.client.lease_revoke(lease).await;
        let gets = |i: usize| outcome.gets.get(i).and_then(|g| g.first());
        if let Some(holder) = gets(0) {
            self.leader = Some(String::from_utf8_lossy(&holder.value).into_owned());
            return Ok(false);
        }
        // The key is free but the record moved: this supervisor's own write (one whose
        // answer it never got) is still its; anyone else's is not.
        let Some(kv) = gets(1) else {
            return Ok(false);
        };
        match serde_json::from_slice::<PairRecord>(&kv.value) {
            Ok(r)
                if r.supervisor == self.id
                    && self.published.is_some_and(|(epoch, _)| epoch == r.epoch) =>
            {
                self.record_rev = Some(kv.mod_revision);
                Err("the pair's record is this supervisor's own last write: trying again".into())
            }
            _ => Ok(false),
        }
    }

    /// A write found the leader key gone (the lease expired, etcd has not told the
    /// keep-alive yet): as if it had, the key is taken again or the supervisor steps down
    /// at the next tick (`retake`), no engine call meanwhile.
    pub fn mark_lost(&self, why: String) {
        let mut h = self.health.lock().expect("health lock");
        if h.lost.is_none() {
            h.lost = Some(why);
        }
    }

    /// Whether a refusal names another supervisor as the leader (else the key is gone).
    pub fn overtaken_by(&self, holder: &Option<String>) -> bool {
        holder.as_deref().is_some_and(|h| h != self.id)
    }

    /// Ends the lease (the leader key goes with it): a spare may take over at once.
    pub async fn resign(&self) {
        let _ = self.client.lease_revoke(self.lease).await;
    }
}

/// The record's promotability, from the supervisor's state it carries.
fn promotable_of(record: &PairRecord) -> bool {
    record
        .state
        .get("promotable")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false)
}

/// Keeps the lease alive every third of its TTL (or when poked), and says how it went.
async fn keep_alive(
    client: Client,
    lease: i64,
    ttl: Duration,
    health: Arc<Mutex<Health>>,
    poke: Arc<tokio::sync::Notify>,
) {
    let period = ttl / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = poke.notified() => {}
        }
        let sent = Instant::now();
        let result = client.lease_keepalive(lease).await;
        let mut h = health.lock().expect("health lock");
        h.last_attempt = Some(sent);
        match result {
            Ok(_) => {
                h.last_ok_sent = Some(sent);
                h.unreachable_since = None;
            }
            Err(e @ fleet::Error::Refused(_)) => {
                h.lost = Some(format!("etcd lease {lease:x}: {e}"));
                return;
            }
            Err(e) => {
                if h.unreachable_since.is_none() {
                    h.unreachable_since = Some((sent, reports::timeline::now_ms(), e.to_string()));
                }
            }
        }
    }
}

/// The engine's side: `--etcd URLS --etcd-key P/pair/NAME`.
pub struct EngineWitness {
    client: Client,
    key: String,
}

impl EngineWitness {
    pub fn new(urls: &str, key: &str) -> Result<EngineWitness, String> {
        Ok(EngineWitness {
            client: Client::new(urls)?.with_timeout(Duration::from_secs(1)),
            key: key.to_string(),
        })
    }

    /// Whether etcd's record of the pair holds `epoch`: Err says why not.
    pub async fn check(&self, epoch: u64) -> Result<(), String> {
        let kv = self
            .client
            .get(&self.key)
            .await
            .map_err(|e| format!("the pair's witness cannot be read ({e})"))?;
        let Some(kv) = kv else {
            return Err(format!("{} does not exist in etcd", self.key));
        };
        let record: PairRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| format!("{} is not a pair record: {e}", self.key))?;
        if record.epoch != epoch {
            return Err(format!(
                "epoch {epoch} is not the one etcd holds for the pair ({})",
                record.epoch
            ));
        }
        Ok(())
    }
}

static ENGINE_WITNESS: std::sync::OnceLock<EngineWitness> = std::sync::OnceLock::new();

/// Sets the engine process's witness (once, at start).
pub fn set_engine_witness(w: EngineWitness) {
    let _ = ENGINE_WITNESS.set(w);
}

pub fn engine_witness() -> Option<&'static EngineWitness> {
    ENGINE_WITNESS.get()
}

/// A write of the pair's record from the supervisor's loop gives up after this long (and is
/// tried again later): half the default hang timeout, so that the active's lease renewals go
/// on while etcd is out of reach.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(250);

/// How long an upgrade (and a planned switchover) waits for etcd to take the pair's record
/// before a grant: etcd busy (3.4 fsyncs every write) or out of reach for a while.
pub const WITNESS_WAIT: Duration = Duration::from_secs(30);

/// The deadline of one background write of the record while a grant waits for it.
pub const WAIT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Used while no engine is touched: how a spare waits.
pub const SPARE_POLL: Duration = Duration::from_millis(250);
