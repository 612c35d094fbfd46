//! Durable jobs: a producing backend's events kept on a bus, so that a job
//! survives its clients' disconnects, deadlines and instance changes.
//!
//! ```toml
//! [routes.jobs]
//! path = "/jobs/{job}"
//! [routes.jobs.backends.run]
//! type = "command"
//! command = ["/srv/jobs/report.sh"]
//! [routes.jobs.durable]
//! detach = true              # the job runs on when every client has left
//! max_runtime = "1h"
//! retention = "24h"
//! [routes.jobs.durable.bus]
//! type = "redis"
//! stream = "jobs:{job}"      # one key per job: {job} is the job's id
//! allow = "jobs:*"
//! ```
//!
//! - **A job** is one run of the route's producing backend (`command`,
//!   `http`, …). Its id is the route's `{job}` path parameter, or, on a
//!   route without one, the job named by the request's `Last-Event-ID` or
//!   `?job=`, or a new random id. The gateway answers it in the
//!   `Gateway-Job-Id` header, and the job's first event (`gateway.job`,
//!   `{"job": …}`) carries it too.
//! - **Once.** The first request for a job that the bus does not hold
//!   appends a claim to the job's key, then reads the key's first entry: the
//!   instance whose claim is first runs the producer; every other request,
//!   on any instance, only reads. The bus's order decides, so two instances
//!   never both run a job, whatever the broker.
//! - **On the bus first.** Every event the producer yields is appended to the
//!   job's key, and clients read the key as a bus backend's clients do:
//!   exact resume with `Last-Event-ID` on any instance, the slow-client and
//!   loss rules of [`crate::bus`]. A client without `Last-Event-ID` reads
//!   the job from its start. Event ids are `JOB:POSITION`.
//! - **The end** is an event on the bus, `gateway.end`
//!   (`{"job":…,"status":"completed"}`; or `failed`, `cancelled`,
//!   `timeout`, `producer_lost`), with the id `JOB:end`: a stream ends after
//!   it, and a client that resumes from it is answered 204 (`EventSource`
//!   stops). A late reader gets the whole job, then the end.
//! - **Lifecycle.** The producer runs until it ends, or `max_runtime`;
//!   with `detach = false` it is cancelled when no client of the instance
//!   running it has read the job for `lease`. `DELETE` on the job's URL
//!   cancels it from any instance (an end event the producer's instance
//!   sees, and stops its producer on).
//!   A request whose work the platform bounds (`RequestContext::time_left`:
//!   a Lambda invocation's deadline) bounds the job it starts the same way,
//!   ended with `timeout` and a message that says so.
//! - **A lost producer.** While it runs, the producer's instance appends a
//!   hidden `gateway.job.alive` entry every third of `lease`. A reader that
//!   sees no entry for `lease` appends the end with `producer_lost` and
//!   ends: readers never hang on a job whose instance died. An instance
//!   that shuts down ([`Durable::stop_jobs`]) appends that end itself.
//! - **Retention.** A job's key expires `retention` after the job ends (and
//!   `max_runtime` + `retention` after it starts) where the broker can
//!   expire keys (Redis); other buses keep entries by their own retention
//!   (a NATS stream's `max_age`, a RabbitMQ stream's `max_age`, a
//!   PostgreSQL table's `max_len`).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::problem::Problem;
use crate::publish::Publication;
use crate::{
    Backend, BackendConfig, BackendError, BackendStats, Data, Encodings, ErrorKind, Event,
    EventStream, RequestContext,
};

/// The path parameter (and `{job}` placeholder of the bus key) naming a job.
pub const JOB_PARAM: &str = "job";
/// The first event of a job, naming it.
pub const STARTED: &str = "gateway.job";
/// The last event of a job.
pub const END: &str = "gateway.end";
/// A producer's failure, kept on the bus; readers get it as an error event.
const ERROR: &str = "gateway.error";
/// An instance's claim to run a job (hidden from clients).
const CLAIM: &str = "gateway.job.claim";
/// The producer's instance is alive (hidden from clients).
const ALIVE: &str = "gateway.job.alive";
/// The suffix of the end event's id.
const END_ID: &str = "end";
/// The end of a job whose producer's instance went away.
const PRODUCER_LOST: &str = "producer_lost";
/// The longest job id a request may name.
const MAX_JOB_ID: usize = 128;

/// A bus as a durable job's log: the job's key read as a bus backend reads
/// it, and appended to as its publish target writes.
#[async_trait]
pub trait JobLog: Send + Sync + fmt::Debug {
    /// The job's key for a request (`{job}` filled in).
    fn key(&self, ctx: &RequestContext) -> Result<String, BackendError>;
    /// The key's first entry as an event (its id the bus's), `None` when
    /// the key holds nothing.
    async fn first(&self, key: &str) -> Result<Option<Event>, BackendError>;
    /// A client of the key from after the bus id `after`, or from its
    /// start.
    async fn read(&self, key: &str, after: Option<&str>) -> Result<EventStream, BackendError>;
    /// Appends an event to the request's key, answering its bus id.
    async fn append(
        &self,
        ctx: &RequestContext,
        publication: &Publication,
    ) -> Result<String, BackendError>;
    /// Makes the key go `after` from now; `false` when the bus cannot.
    async fn expire(&self, key: &str, after: Duration) -> Result<bool, BackendError>;
    /// What the bus's reader counts (reconnects, lagging clients).
    fn stats(&self) -> &BackendStats;
}

/// `[routes.NAME.durable]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DurableConfig {
    /// The bus that keeps jobs (`[routes.NAME.durable.bus]`): a `redis`,
    /// `nats`, `postgres` or `rabbitmq` backend's settings, whose key holds
    /// `{job}`. Required.
    pub bus: BackendConfig,
    /// Whether a job runs on when every client has left. Default: `true`.
    #[serde(default = "yes")]
    pub detach: bool,
    /// The longest a job runs; then it ends with `timeout`. Default: `1h`.
    #[serde(default = "default_max_runtime", with = "humantime_serde")]
    pub max_runtime: Duration,
    /// How long a job's key is kept after the job ends (where the bus can
    /// expire keys). Default: `24h`.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// How long readers wait without a sign of the producer before they
    /// end the job with `producer_lost`. Default: `30s`.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
}

fn yes() -> bool {
    true
}
fn default_max_runtime() -> Duration {
    Duration::from_secs(3600)
}
fn default_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_lease() -> Duration {
    Duration::from_secs(30)
}

impl DurableConfig {
    /// The settings with `bus` and every other key at its default.
    pub fn new(bus: BackendConfig) -> Self {
        Self {
            bus,
            detach: true,
            max_runtime: default_max_runtime(),
            retention: default_retention(),
            lease: default_lease(),
        }
    }

    /// Every problem with the settings, keys relative to the `durable` table.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = self
            .bus
            .validate()
            .into_iter()
            .map(|p| Problem::new(format!("bus.{}", p.key), p.reason))
            .collect();
        match self.bus.job_log() {
            None => problems.push(Problem::new(
                "bus.type",
                "must be a bus that keeps jobs: redis, nats, postgres or rabbitmq",
            )),
            Some(log) if problems.is_empty() => {
                // Two jobs must have two keys.
                let key = |job: &str| {
                    log.key(&RequestContext {
                        params: [(JOB_PARAM.to_string(), job.to_string())].into(),
                        ..RequestContext::default()
                    })
                };
                if let (Ok(a), Ok(b)) = (key("a"), key("b")) {
                    if a == b {
                        problems.push(Problem::new(
                            "bus",
                            format!(
                                "every job needs a key of its own: put {{{JOB_PARAM}}} in the key ({a:?} for every job)"
                            ),
                        ));
                    }
                }
            }
            Some(_) => {}
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&self.lease) {
            problems.push(Problem::new("lease", "must be from 100ms to 10m"));
        }
        if self.max_runtime.is_zero() {
            problems.push(Problem::new("max_runtime", "must be more than 0"));
        }
        if self.retention.is_zero() {
            problems.push(Problem::new("retention", "must be more than 0"));
        }
        problems
    }

    /// Durable jobs of `producer` (see [`validate`](Self::validate)).
    pub fn build(&self, producer: Arc<dyn Backend>) -> Result<Durable, BackendError> {
        let log = self.bus.job_log().ok_or_else(|| {
            BackendError::new(ErrorKind::Internal, "durable.bus is not a bus backend")
        })?;
        Ok(Durable {
            inner: Arc::new(Inner {
                producer,
                log,
                detach: self.detach,
                max_runtime: self.max_runtime,
                retention: self.retention,
                lease: self.lease,
                owner: random_id(8),
                running: Mutex::new(HashMap::new()),
                stopping: watch::Sender::new(false),
                finished: Notify::new(),
            }),
        })
    }
}

/// A route's producing backend made durable (see the module).
#[derive(Clone, Debug)]
pub struct Durable {
    inner: Arc<Inner>,
}

struct Inner {
    producer: Arc<dyn Backend>,
    log: Arc<dyn JobLog>,
    detach: bool,
    max_runtime: Duration,
    retention: Duration,
    lease: Duration,
    /// This instance, in its claims.
    owner: String,
    /// The jobs this instance runs, with their readers here.
    running: Mutex<HashMap<String, Arc<Local>>>,
    /// Set when the gateway shuts down: the jobs it runs end.
    stopping: watch::Sender<bool>,
    /// Told each time a job this instance runs has ended.
    finished: Notify,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Durable")
            .field("producer", &self.producer)
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

/// What bounds a job's runtime.
#[derive(Clone, Copy)]
enum Bound {
    MaxRuntime,
    /// The platform's deadline for the request that started it.
    Deadline,
}

/// A job this instance runs: how many of its clients read it here.
#[derive(Default)]
struct Local {
    readers: AtomicUsize,
    changed: Notify,
}

/// One reader of a local job, counted while it lives.
struct Reading(Arc<Local>);

impl Reading {
    fn new(local: Arc<Local>) -> Self {
        local.readers.fetch_add(1, Ordering::SeqCst);
        local.changed.notify_waiters();
        Self(local)
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

impl Durable {
    /// Names the request's job (see the module): sets `ctx.job` and the
    /// `{job}` parameter, and answers the id. `start` says whether a
    /// request that names none gets a new one (not for `DELETE`).
    pub fn identify(&self, ctx: &mut RequestContext, start: bool) -> Result<String, BackendError> {
        let from_id = ctx
            .last_event_id
            .as_deref()
            .map(|id| split_id(id).map(|(job, _)| job.to_string()))
            .transpose()?;
        let named = [
            ctx.params.get(JOB_PARAM).cloned(),
            from_id,
            ctx.query_param(JOB_PARAM).map(str::to_string),
        ];
        let mut job: Option<String> = None;
        for name in named.into_iter().flatten() {
            check_job_id(&name)?;
            match &job {
                Some(known) if *known != name => {
                    return Err(BackendError::bad_request(format!(
                        "the request names two jobs, {} and {}",
                        crate::Shown(known),
                        crate::Shown(&name)
                    )));
                }
                _ => job = Some(name),
            }
        }
        let job = match job {
            Some(job) => job,
            None if start => random_id(16),
            None => {
                return Err(BackendError::bad_request(format!(
                    "name the job: in the path, or as ?{JOB_PARAM}="
                )));
            }
        };
        ctx.params.insert(JOB_PARAM.into(), job.clone());
        ctx.job = Some(job.clone());
        Ok(job)
    }

    /// Cancels the request's job (`DELETE`): its end is appended, which
    /// stops the producer wherever it runs. 404 when the bus holds no such
    /// job.
    pub async fn cancel(&self, ctx: &RequestContext) -> Result<serde_json::Value, BackendError> {
        let inner = &self.inner;
        let job = job_of(ctx)?;
        let key = inner.log.key(ctx)?;
        if inner.log.first(&key).await?.is_none() {
            return Err(no_such_job(job));
        }
        inner.log.append(ctx, &end(job, "cancelled", None)).await?;
        Ok(json!({"job": job, "status": "cancelled"}))
    }

    /// Ends every job this instance runs (the gateway shuts down): each
    /// producer is stopped and its job's end, `producer_lost`, appended, so
    /// readers elsewhere learn it now rather than a lease later. Returns
    /// once every end is on the bus (or given up, a lease later); the
    /// caller bounds it by the shutdown grace.
    pub async fn stop_jobs(&self) {
        let inner = &self.inner;
        inner.stopping.send_replace(true);
        loop {
            let finished = inner.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let running = inner
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len();
            if running == 0 {
                return;
            }
            finished.await;
        }
    }
}

fn job_of(ctx: &RequestContext) -> Result<&str, BackendError> {
    ctx.job
        .as_deref()
        .ok_or_else(|| BackendError::new(ErrorKind::Internal, "the request's job is not named"))
}

fn no_such_job(job: &str) -> BackendError {
    BackendError::new(
        ErrorKind::NotFound,
        format!(
            "no job {}: it never started, or it ended longer ago than the route keeps jobs",
            crate::Shown(job)
        ),
    )
}

/// A job id: 1 to 128 of `A-Z a-z 0-9 - _ .`.
fn check_job_id(job: &str) -> Result<(), BackendError> {
    let fine = (1..=MAX_JOB_ID).contains(&job.len())
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if fine {
        Ok(())
    } else {
        Err(BackendError::bad_request(format!(
            "{} is not a job id: 1 to {MAX_JOB_ID} letters, digits, '-', '_' or '.'",
            crate::Shown(job)
        )))
    }
}

/// `JOB:POSITION` into its parts.
fn split_id(id: &str) -> Result<(&str, &str), BackendError> {
    id.split_once(':')
        .filter(|(job, position)| !job.is_empty() && !position.is_empty())
        .ok_or_else(|| {
            BackendError::bad_request(format!(
                "Last-Event-ID {} is not an id of a job (JOB:POSITION)",
                crate::Shown(id)
            ))
        })
}

/// `n` random bytes as hex.
fn random_id(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: time and a counter, unique if guessable.
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = now ^ (COUNT.fetch_add(1, Ordering::Relaxed) as u128) << 96;
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8;
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn end(job: &str, status: &str, message: Option<&str>) -> Publication {
    let mut data = json!({"job": job, "status": status});
    if let Some(message) = message {
        data["message"] = json!(message);
    }
    Publication {
        data: Data::json(&data),
        name: Some(END.into()),
    }
}

fn hidden(name: &str, data: serde_json::Value) -> Publication {
    Publication {
        data: Data::json(&data),
        name: Some(name.into()),
    }
}

#[async_trait]
impl Backend for Durable {
    async fn open(&self, ctx: &RequestContext) -> Result<EventStream, BackendError> {
        let inner = &self.inner;
        let job: Arc<str> = Arc::from(job_of(ctx)?);
        let key = inner.log.key(ctx)?;
        let resume = match ctx.last_event_id.as_deref() {
            None => None,
            Some(id) => match split_id(id)? {
                (_, END_ID) => return Err(BackendError::finished()),
                (_, position) => Some(position),
            },
        };
        let first = inner.log.first(&key).await?;
        match (first, resume) {
            (None, Some(_)) => return Err(no_such_job(&job)),
            (None, None) => Arc::clone(inner).start(ctx, &key, &job).await?,
            (Some(_), _) => {}
        }
        let events = inner.log.read(&key, resume).await?;
        let reading = inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&*job)
            .map(|local| Reading::new(Arc::clone(local)));
        let reader = Reader {
            inner: Arc::clone(inner),
            ctx: ctx.clone(),
            job,
            events,
            done: false,
            _reading: reading,
        };
        Ok(futures::stream::unfold(reader, Reader::next).boxed())
    }

    fn stats(&self) -> Option<&BackendStats> {
        Some(self.inner.log.stats())
    }
}

impl Inner {
    /// Claims the job and, when this instance's claim is the first, starts
    /// its producer.
    async fn start(
        self: Arc<Self>,
        ctx: &RequestContext,
        key: &str,
        job: &str,
    ) -> Result<(), BackendError> {
        let token = random_id(16);
        let claim = json!({"owner": self.owner, "token": token});
        self.log.append(ctx, &hidden(CLAIM, claim)).await?;
        let first = self.log.first(key).await?;
        let won = first.is_some_and(|e| {
            e.name.as_deref() == Some(CLAIM) && e.data.to_value()["token"] == json!(token)
        });
        if !won {
            return Ok(());
        }
        self.expire(key, self.max_runtime + self.retention).await;
        self.log
            .append(ctx, &hidden(STARTED, json!({"job": job})))
            .await?;
        let mut producer_ctx = ctx.clone();
        producer_ctx.last_event_id = None;
        let events = match self.producer.open(&producer_ctx).await {
            Ok(events) => events,
            Err(e) => {
                let failed = end(job, "failed", Some(&e.message));
                if let Err(e) = self.log.append(ctx, &failed).await {
                    tracing::warn!(%job, error = %e, "Cannot end a job whose producer failed to start");
                }
                self.expire(key, self.retention).await;
                return Err(e);
            }
        };
        let local = Arc::new(Local::default());
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job.to_string(), Arc::clone(&local));
        // The watcher reads the job from its start: whoever appends its end
        // (a DELETE, a reader that lost the producer) stops the producer.
        let watch = self.log.read(key, None).await;
        tracing::info!(%job, "Job started");
        tokio::spawn(Arc::clone(&self).produce(
            producer_ctx,
            key.to_string(),
            job.to_string(),
            events,
            watch,
            local,
        ));
        Ok(())
    }

    async fn expire(&self, key: &str, after: Duration) {
        match self.log.expire(key, after).await {
            Ok(_) => {}
            Err(e) => tracing::warn!(%key, error = %e, "Cannot set a job's retention"),
        }
    }

    /// Runs a job's producer to its end, every event appended to the bus.
    async fn produce(
        self: Arc<Self>,
        ctx: RequestContext,
        key: String,
        job: String,
        mut events: EventStream,
        watch: Result<EventStream, BackendError>,
        local: Arc<Local>,
    ) {
        let mut watch = match watch {
            Ok(watch) => Some(watch),
            Err(e) => {
                tracing::warn!(%job, error = %e, "Cannot watch a job for its end; DELETE will not reach it");
                None
            }
        };
        // A platform that ends the request's work (a Lambda invocation's
        // deadline) ends the job first, with its reason.
        let (runtime, bound) = match ctx.time_left {
            Some(left) if left < self.max_runtime => (left, Bound::Deadline),
            _ => (self.max_runtime, Bound::MaxRuntime),
        };
        let deadline = tokio::time::sleep(runtime);
        tokio::pin!(deadline);
        let mut stopping = self.stopping.subscribe();
        let stop = async {
            // (The borrow it answers must not live across an await.)
            let _ = stopping.wait_for(|stop| *stop).await.map(drop);
        };
        tokio::pin!(stop);
        let beat = self.lease / 3;
        let mut alive = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
        // Made once: a timer made again each turn would never run out.
        let abandon = async {
            if self.detach {
                std::future::pending().await
            } else {
                abandoned(&local, self.lease).await
            }
        };
        tokio::pin!(abandon);
        let mut failure: Option<String> = None;
        let status = loop {
            tokio::select! {
                item = events.next() => {
                    let publication = match item {
                        None => break if failure.is_some() { "failed" } else { "completed" },
                        Some(Ok(event)) => {
                            failure = None;
                            match event.name {
                                Some(name) if name.starts_with("gateway.") => hidden(ERROR, json!({
                                    "kind": ErrorKind::Upstream.as_str(),
                                    "message": format!("the producer sent an event named {name:?}; names starting with gateway. are the gateway's"),
                                })),
                                name => Publication { data: event.data, name: name.map(|n| n.to_string()) },
                            }
                        }
                        Some(Err(e)) => {
                            failure = Some(e.message.clone());
                            hidden(ERROR, json!({"kind": e.kind.as_str(), "message": e.message}))
                        }
                    };
                    if !self.append(&ctx, &job, &publication).await {
                        return self.finish(&job);
                    }
                }
                _ = alive.tick() => {
                    if !self.append(&ctx, &job, &hidden(ALIVE, json!({"owner": self.owner}))).await {
                        return self.finish(&job);
                    }
                }
                () = &mut deadline => break "timeout",
                () = ended(&mut watch) => {
                    tracing::info!(%job, "Job ended elsewhere (cancelled, or its producer was thought lost): its producer stops");
                    drop(events);
                    self.expire(&key, self.retention).await;
                    return self.finish(&job);
                }
                () = &mut abandon => break "cancelled",
                () = &mut stop => break PRODUCER_LOST,
            }
        };
        // The producer goes first (a command's processes are killed).
        drop(events);
        let message = match (status, bound) {
            ("timeout", Bound::MaxRuntime) => Some(format!(
                "the job ran for max_runtime ({:?})",
                self.max_runtime
            )),
            ("timeout", Bound::Deadline) => Some(format!(
                "the Lambda invocation running it reached its deadline ({runtime:?} after it started, less lambda.deadline_margin): run jobs longer than the function timeout where they can outlive a request"
            )),
            (PRODUCER_LOST, _) => Some("the gateway running it shut down".to_string()),
            ("cancelled", _) => Some("every client left (detach = false)".to_string()),
            _ => failure,
        };
        let last = end(&job, status, message.as_deref());
        self.append(&ctx, &job, &last).await;
        self.expire(&key, self.retention).await;
        tracing::info!(%job, status, "Job ended");
        self.finish(&job);
    }

    /// Appends, trying again for up to `lease` while the bus is away; `false`
    /// when it stayed away (the job's readers will see no sign of it and end
    /// it with `producer_lost`).
    async fn append(&self, ctx: &RequestContext, job: &str, publication: &Publication) -> bool {
        let until = tokio::time::Instant::now() + self.lease;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.log.append(ctx, publication).await {
                Ok(_) => return true,
                Err(e) if tokio::time::Instant::now() + pause < until => {
                    tracing::debug!(%job, error = %e, "Appending to a job failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(%job, error = %e, "The bus is away: the job stops, its readers will end it with producer_lost");
                    return false;
                }
            }
        }
    }

    fn finish(&self, job: &str) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job);
        self.finished.notify_waiters();
    }
}

/// Resolves when the watched job's end appears (never without a watcher).
async fn ended(watch: &mut Option<EventStream>) {
    let Some(stream) = watch else {
        return std::future::pending().await;
    };
    while let Some(item) = stream.next().await {
        if let Ok(event) = item {
            if event.name.as_deref() == Some(END) {
                return;
            }
        }
    }
    *watch = None;
    std::future::pending().await
}

/// Resolves when no client has read the job here for `grace`.
async fn abandoned(local: &Local, grace: Duration) {
    loop {
        // Made before the count is read: a change after it wakes it.
        let changed = local.changed.notified();
        if local.readers.load(Ordering::SeqCst) > 0 {
            changed.await;
        } else if tokio::time::timeout(grace, changed).await.is_err()
            && local.readers.load(Ordering::SeqCst) == 0
        {
            return;
        }
    }
}

/// A client of a job: the bus's entries with the hidden ones left out, ids
/// made `JOB:POSITION`, the end last.
struct Reader {
    inner: Arc<Inner>,
    ctx: RequestContext,
    job: Arc<str>,
    events: EventStream,
    done: bool,
    _reading: Option<Reading>,
}

impl Reader {
    fn id(&self, position: Option<&str>) -> Option<Arc<str>> {
        position.map(|p| Arc::from(format!("{}:{p}", self.job)))
    }

    async fn next(mut self) -> Option<(Result<Event, BackendError>, Self)> {
        loop {
            if self.done {
                return None;
            }
            let Ok(item) = tokio::time::timeout(self.inner.lease, self.events.next()).await else {
                // No sign of the producer for a lease: its instance is gone.
                self.done = true;
                let lost = end(
                    &self.job,
                    PRODUCER_LOST,
                    Some(&format!(
                        "no sign of the job's producer for {:?}: the instance running it stopped",
                        self.inner.lease
                    )),
                );
                if let Err(e) = self.inner.log.append(&self.ctx, &lost).await {
                    tracing::warn!(job = %self.job, error = %e, "Cannot record a lost producer");
                }
                let event = Event::new(lost.data)
                    .with_name(END)
                    .with_id(format!("{}:{END_ID}", self.job));
                return Some((Ok(event), self));
            };
            match item {
                None => return None,
                Some(Err(mut e)) => {
                    e.resume_id = e.resume_id.map(|p| format!("{}:{p}", self.job));
                    return Some((Err(e), self));
                }
                Some(Ok(mut event)) => match event.name.as_deref() {
                    Some(CLAIM | ALIVE) => continue,
                    Some(END) => {
                        self.done = true;
                        event.id = Some(Arc::from(format!("{}:{END_ID}", self.job)));
                        // Its bytes as the bus had it would carry its old id.
                        event.encodings = Encodings::default();
                        return Some((Ok(event), self));
                    }
                    Some(ERROR) => {
                        let value = event.data.to_value();
                        let kind = match value["kind"].as_str() {
                            Some("timeout") => ErrorKind::Timeout,
                            Some("unavailable") => ErrorKind::Unavailable,
                            Some("bad_request") => ErrorKind::BadRequest,
                            Some("internal") => ErrorKind::Internal,
                            _ => ErrorKind::Upstream,
                        };
                        let message = value["message"].as_str().unwrap_or("the producer failed");
                        let mut e = BackendError::new(kind, message);
                        e.resume_id = self.id(event.id.as_deref()).map(|id| id.to_string());
                        return Some((Err(e), self));
                    }
                    _ => {
                        event.id = self.id(event.id.as_deref());
                        event.encodings = Encodings::default();
                        return Some((Ok(event), self));
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_plain_and_bounded() {
        for good in ["a", "job-1_x.y", &"z".repeat(128)] {
            assert!(check_job_id(good).is_ok(), "{good}");
        }
        for bad in ["", "a/b", "a:b", "a b", "é", &"z".repeat(129), "{job}"] {
            assert!(check_job_id(bad).is_err(), "{bad}");
        }
        assert_eq!(random_id(16).len(), 32);
        assert_ne!(random_id(16), random_id(16));
    }

    #[test]
    fn ids_are_job_and_position() {
        assert_eq!(split_id("abc:1-0").unwrap(), ("abc", "1-0"));
        assert_eq!(split_id("abc:end").unwrap(), ("abc", "end"));
        for bad in ["abc", ":1", "abc:", ""] {
            assert!(split_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_request_names_one_job() {
        let durable = DurableConfig::new(BackendConfig::Redis(crate::redis::RedisConfig {
            stream: "jobs:{job}".into(),
            allow: Some("jobs:*".into()),
            ..Default::default()
        }))
        .build(Arc::new(crate::ticker::Ticker::new(Default::default())))
        .unwrap();
        let mut ctx = RequestContext::default();
        let job = durable.identify(&mut ctx, true).unwrap();
        assert_eq!(job.len(), 32);
        assert_eq!(ctx.params[JOB_PARAM], job);
        assert!(
            durable
                .identify(&mut RequestContext::default(), false)
                .is_err()
        );
        let mut ctx = RequestContext {
            params: [(JOB_PARAM.into(), "a".into())].into(),
            last_event_id: Some("b:1-0".into()),
            ..RequestContext::default()
        };
        let e = durable.identify(&mut ctx, true).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        let mut ctx = RequestContext {
            last_event_id: Some("b:1-0".into()),
            ..RequestContext::default()
        };
        assert_eq!(durable.identify(&mut ctx, true).unwrap(), "b");
    }

    #[test]
    fn every_job_needs_its_own_key() {
        let config = DurableConfig::new(BackendConfig::Redis(crate::redis::RedisConfig {
            stream: "jobs".into(),
            ..Default::default()
        }));
        let keys: Vec<_> = config.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["bus"]);
        let not_a_bus = DurableConfig::new(BackendConfig::Ticker(Default::default()));
        let keys: Vec<_> = not_a_bus.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["bus.type"]);
    }
}
