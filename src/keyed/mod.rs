//! Breakers per endpoint: one breaker per key of the request (a host, say), made on
//! first use from a template, with bounded memory.
//!
//! # Why keyed breakers?
//!
//! A client that calls many hosts through one breaker turns one bad host into a total
//! outage: its failures trip the breaker for every host. A [`KeyedBreaker`] keeps one
//! breaker per key instead, built from a template [`BreakerBuilder`] the first time
//! the key is seen, so a failing host is cut off alone.
//!
//! # Bounded
//!
//! A client that sees a million hosts must not keep a million breakers. A keyed
//! breaker holds at most [`max_keys`](KeyedBreakerBuilder::max_keys) keys, and forgets
//! a key not used for [`idle`](KeyedBreakerBuilder::idle) (measured on tokio's clock):
//!
//! - **Idle eviction.** A key used within `idle` is never evicted as idle. Idle keys
//!   are swept when a new key is created (at most once every `idle / 8`), and by
//!   [`KeyedBreaker::evict_idle`].
//! - **At the cap.** Creating a key when `max_keys` are held first sweeps idle keys;
//!   if none was idle, it evicts the least recently used eighth of the keys (at least
//!   one; recency is tracked to the sweep, not to the call). The key count never
//!   exceeds `max_keys`, nothing panics, and no call is refused for it: a key evicted
//!   while still in use gets a fresh breaker (closed, with empty windows) at its next
//!   call. Calls in flight on an evicted breaker finish normally.
//!
//! An evicted breaker is freed once no lookup can still see it, so keys churning at
//! the cap hold transient extra bytes; see
//! [`max_keys`](KeyedBreakerBuilder::max_keys) ("Memory under churn") for how much.
//!
//! Each key costs a [`Breaker`] (its counters are striped per thread: about 4 KiB with a
//! count or consecutive rule, 6 KiB with a time window, on 2 cores) plus the key.
//!
//! # Cost
//!
//! Looking up a known key takes no lock and allocates nothing: the map is
//! [`scc::HashIndex`], whose reads are lock-free (epoch-based reclamation), and a
//! call's breaker then costs what a single breaker's does. Only creating a key takes
//! the keyed breaker's mutex (it allocates the breaker anyway). See the README for
//! measured numbers.
//!
//! Keys are hashed with [foldhash](https://docs.rs/foldhash), not std's SipHash: a
//! fraction of the cost per call. It is seeded at random for each keyed breaker, so
//! keys taken from requests (a URI's authority) cannot be picked to collide without
//! knowing the seed; foldhash claims only minimal resistance to such HashDoS attempts,
//! but even a crafted collision costs at most a longer probe over the `max_keys`
//! keys held, never unbounded growth.
//!
//! # Names
//!
//! Every key's breaker carries the keyed breaker's name, so events, errors
//! ([`Open::breaker`](crate::breaker::error::Open::breaker)) and snapshots stay
//! low-cardinality however many keys there are; [`KeyedBreaker::snapshot`] pairs each
//! snapshot with its key.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), steadfast::BoxError> {
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use steadfast::breaker::{error::Open, Breaker};
//! use steadfast::keyed::KeyedBreaker;
//!
//! let hosts = KeyedBreaker::builder(Breaker::builder("hosts").consecutive_failures(2))
//!     .max_keys(1_000)
//!     .build()?;
//! // The key of a request: here the host part of "host/path".
//! let host = |req: &String| req.split('/').next().unwrap_or_default().to_owned();
//! let mut client = ServiceBuilder::new()
//!     .layer(hosts.layer(host))
//!     .service(service_fn(|req: String| async move {
//!         if req.starts_with("down.example") { Err("connection refused") } else { Ok(req) }
//!     }));
//!
//! for _ in 0..2 {
//!     let _ = client.ready().await?.call("down.example/a".into()).await;
//! }
//! let err = client.ready().await?.call("down.example/b".into()).await.unwrap_err();
//! assert!(err.downcast_ref::<Open>().is_some()); // that host is cut off ...
//! let ok = client.ready().await?.call("up.example/c".into()).await?;
//! assert_eq!(ok, "up.example/c"); // ... the others are not
//! assert_eq!(hosts.len(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! # With a load balancer
//!
//! The keyed service picks its breaker from the request, so its `poll_ready` cannot
//! know which breaker the next call needs and never waits on one. For a balancer over
//! known endpoints, give each endpoint its own service with
//! [`KeyedBreaker::layer_for`] and a template built with
//! [`Readiness::Wait`](crate::breaker::Readiness::Wait): an endpoint whose breaker is
//! open is then not ready, and the balancer routes around it. Give the template an
//! [`EjectionCap`](crate::breaker::EjectionCap) too, and at most a share of the
//! endpoints are ever out at once: when most look bad, the fault is likelier the
//! caller's own, and the balancer keeps endpoints to route to.

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use foldhash::fast::RandomState;
use scc::ebr::{AtomicShared, Guard, Shared, Tag};
use scc::HashIndex;
use tokio::time::Instant;

use crate::breaker::{Breaker, BreakerBuilder, BreakerLayer, Config, Snapshot, State};
use crate::config::{check_duration, ConfigError};
use crate::nanos::{nanos, nanos_since};
use crate::watchdog::{Probe, Watchdog, WatchdogBuilder, WatchdogHandle};

mod layer;
mod service;

pub mod future;

pub use self::layer::KeyedBreakerLayer;
pub use self::service::KeyedBreakerService;

/// The default [`max_keys`](KeyedBreakerBuilder::max_keys).
#[doc(hidden)]
pub const DEFAULT_MAX_KEYS: usize = 1_024;
/// The default [`idle`](KeyedBreakerBuilder::idle) time after which a key is forgotten.
#[doc(hidden)]
pub const DEFAULT_IDLE: Duration = Duration::from_secs(600);
/// The default [`snapshot_keys`](KeyedBreakerBuilder::snapshot_keys).
#[doc(hidden)]
pub const DEFAULT_SNAPSHOT_KEYS: usize = 16;

const MAX_MAX_KEYS: usize = 1 << 24;
const MIN_IDLE: Duration = Duration::from_millis(1);
/// Longest key text in a snapshot, in bytes.
const KEY_TEXT: usize = 64;

/// How a keyed layer finds the key of a request.
///
/// Implemented for every `Fn(&Req) -> K`. With the `http` feature,
/// [`http::ByAuthority`](crate::http::ByAuthority) keys HTTP requests by their URI's
/// authority, and [`http::ByOrigin`](crate::http::ByOrigin) by scheme and authority.
pub trait KeyFn<Req> {
    /// The key: a host, an address, a tenant.
    type Key;

    /// The key of `req`.
    fn key(&self, req: &Req) -> Self::Key;
}

impl<F, Req, K> KeyFn<Req> for F
where
    F: Fn(&Req) -> K,
{
    type Key = K;

    #[inline]
    fn key(&self, req: &Req) -> K {
        self(req)
    }
}

/// Moved to [`steadfast::http::ByAuthority`](crate::http::ByAuthority), with the
/// other HTTP keys.
#[cfg(feature = "http")]
#[doc(hidden)]
pub use crate::http::ByAuthority;

type MakeWatchdog<K> =
    Arc<dyn Fn(&K, &Breaker) -> Result<WatchdogHandle, ConfigError> + Send + Sync>;

/// Builds a [`KeyedBreaker`]; from [`KeyedBreaker::builder`].
///
/// # Defaults
///
/// At most 1,024 keys ([`max_keys`](Self::max_keys)); a key unused for 10 minutes
/// forgotten ([`idle`](Self::idle)); 16 keys in a snapshot
/// ([`snapshot_keys`](Self::snapshot_keys)); no watchdog. Each key's breaker is built
/// from the template, with its defaults (see [`BreakerBuilder`]).
#[must_use = "a builder does nothing until `build` is called"]
pub struct KeyedBreakerBuilder<K> {
    template: BreakerBuilder,
    max_keys: usize,
    idle: Duration,
    snapshot_keys: usize,
    watchdog: Option<MakeWatchdog<K>>,
}

impl<K> fmt::Debug for KeyedBreakerBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakerBuilder")
            .field("template", &self.template)
            .field("max_keys", &self.max_keys)
            .field("idle", &self.idle)
            .field("snapshot_keys", &self.snapshot_keys)
            .field("watchdog", &self.watchdog.is_some())
            .finish()
    }
}

impl<K> KeyedBreakerBuilder<K>
where
    K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
{
    /// At most `n` keys are held (default 1,024; 1 to 16,777,216);
    /// see the [module docs](self) for what happens at the cap.
    ///
    /// # Memory under churn
    ///
    /// `n` bounds the keys held, not the bytes at every instant. Lookups take no lock
    /// (epoch-based reclamation, [`scc::ebr`]), so an evicted key's breaker is freed
    /// only once no thread can still be reading it: by the thread that evicted it,
    /// after every thread inside a lookup has moved on (three epochs later). New keys
    /// arriving at the cap evict a breaker each, so the bytes awaiting reclamation
    /// grow with the churn rate times the slowest thread's delay; a thread
    /// descheduled mid-lookup holds everyone's back. The peak is a transient multiple
    /// of `n` keys' bytes, not a trend: two threads calling through 150,000 new keys
    /// each at `max_keys(64)` peaked at 2.5x to 13x the bytes of 64 held keys in a
    /// debug build, 3.5x to 27x in release, on a 2-core machine busy compiling, and
    /// came back to 1.05x once each thread had freed its garbage. A thread that goes
    /// idle keeps what it retired until its next lookup or its exit. Measure with
    /// `cargo test --release --test keyed_memory -- --nocapture`.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// A key not used for `idle` is forgotten (default 10 minutes; 1 ms to one
    /// day). Keep it well above the template's longest open delay, or a down host's
    /// open breaker may be forgotten while nobody calls it.
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// How many keys [`KeyedBreaker::snapshot`] (and so a
    /// [`Health`](crate::health::Health) snapshot) lists at most; keys that are not
    /// closed first (default 16; 0 lists none).
    pub fn snapshot_keys(mut self, n: usize) -> Self {
        self.snapshot_keys = n;
        self
    }

    /// Attaches a [watchdog](crate::watchdog) to each key's breaker when the key is
    /// created: `probe` makes the key's probe, `configure` sets the watchdog (pass
    /// `|w| w` for the defaults). The watchdog ends when the key is evicted.
    ///
    /// The watchdog's settings can only be checked once there is a probe, so when a
    /// key is created: a [`ConfigError`] then is logged (an `error` event, target
    /// `steadfast::keyed`) and that key runs without a watchdog.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), steadfast::ConfigError> {
    /// use std::time::Duration;
    /// use steadfast::breaker::Breaker;
    /// use steadfast::keyed::KeyedBreaker;
    ///
    /// let hosts = KeyedBreaker::builder(Breaker::builder("hosts"))
    ///     .watchdog(
    ///         |host: &String| {
    ///             let host = host.clone();
    ///             move || {
    ///                 let _target = host.clone(); // e.g. GET http://{host}/health
    ///                 async { Ok::<_, std::io::Error>(()) }
    ///             }
    ///         },
    ///         |w| w.interval(Duration::from_secs(2)),
    ///     )
    ///     .build()?;
    /// let _breaker = hosts.breaker(&"db-1:5432".to_string());
    /// # Ok(())
    /// # }
    /// ```
    pub fn watchdog<P, F, W>(mut self, probe: F, configure: W) -> Self
    where
        P: Probe,
        F: Fn(&K) -> P + Send + Sync + 'static,
        W: Fn(WatchdogBuilder<P>) -> WatchdogBuilder<P> + Send + Sync + 'static,
    {
        self.watchdog = Some(Arc::new(move |key: &K, breaker: &Breaker| {
            configure(Watchdog::builder(breaker, probe(key))).spawn()
        }));
        self
    }

    /// Checks the settings and builds the keyed breaker.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a template that would not build (see
    /// [`BreakerBuilder::build`]), `max_keys` of 0 or above 16,777,216, or an `idle`
    /// below 1 ms or above one day.
    pub fn build(self) -> Result<KeyedBreaker<K>, ConfigError> {
        let config = Config {
            // A ticker task per key would be made and dropped with each key.
            coarse_clock: false,
            ..self.template.config()?
        };
        if self.max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be at least 1"));
        }
        if self.max_keys > MAX_MAX_KEYS {
            return Err(ConfigError::new(
                "max_keys",
                format!("must be at most {MAX_MAX_KEYS}, got {}", self.max_keys),
            ));
        }
        check_duration("idle", self.idle)?;
        if self.idle < MIN_IDLE {
            return Err(ConfigError::new(
                "idle",
                format!("must be at least 1ms, got {:?}", self.idle),
            ));
        }
        Ok(KeyedBreaker {
            inner: Arc::new(Inner {
                name: self.template.name().clone(),
                config,
                map: HashIndex::with_hasher(RandomState::default()),
                len: AtomicUsize::new(0),
                max_keys: self.max_keys,
                idle: nanos(self.idle),
                snapshot_keys: self.snapshot_keys,
                start: Instant::now(),
                create: Mutex::new(Sweeps { last: 0 }),
                evicted: AtomicU64::new(0),
                watchdog: self.watchdog,
            }),
        })
    }
}

/// One key's breaker, with what eviction needs.
struct Entry {
    /// Emptied when the key is evicted. The map frees a removed entry only when a
    /// later write to its bucket finds no reader can still see it, which under churn
    /// can take many evictions; emptying the slot frees the breaker (the bulk of the
    /// entry's bytes) as soon as no reader can see it, whatever the bucket does. A
    /// reader that finds it empty treats the key as not held.
    breaker: AtomicShared<Breaker>,
    /// Set by a call, cleared by a sweep (which then stamps `seen`): the call path
    /// writes it only when it is clear, so hot keys are read-only.
    touched: AtomicBool,
    /// Nanoseconds since the keyed breaker's start at which a sweep last found the
    /// key used (or the key was created).
    seen: AtomicU64,
    watchdog: Option<WatchdogHandle>,
}

impl Entry {
    fn new(breaker: Breaker, now: u64, watchdog: Option<WatchdogHandle>) -> Self {
        Self {
            breaker: AtomicShared::new(breaker),
            touched: AtomicBool::new(false),
            seen: AtomicU64::new(now),
            watchdog,
        }
    }

    /// The breaker, unless the key was evicted.
    #[inline(always)]
    fn breaker<'g>(&self, guard: &'g Guard) -> Option<&'g Breaker> {
        self.breaker.load(Acquire, guard).as_ref()
    }

    #[inline(always)]
    fn touch(&self) {
        if !self.touched.load(Relaxed) {
            self.touched.store(true, Relaxed);
        }
    }

    /// The key is evicted: its watchdog stops now, and its breaker is freed once no
    /// reader can still see it (the map frees the rest of the entry later still).
    fn retire(&self) {
        if let Some(watchdog) = &self.watchdog {
            watchdog.stop();
        }
        drop(
            self.breaker
                .swap((None::<Shared<Breaker>>, Tag::None), AcqRel),
        );
    }

    /// When the key was last known used, folding in a touch since the last sweep.
    fn last_used(&self, now: u64) -> u64 {
        if self.touched.swap(false, Relaxed) {
            self.seen.store(now, Relaxed);
            now
        } else {
            self.seen.load(Relaxed)
        }
    }
}

/// State of the create path, under its mutex.
struct Sweeps {
    /// When idle keys were last swept.
    last: u64,
}

struct Inner<K> {
    name: Arc<str>,
    config: Config,
    /// Hashed with foldhash, randomly seeded per keyed breaker: several times cheaper
    /// than std's SipHash on a call's key, and keys still cannot be chosen to collide
    /// without knowing the seed (see the module docs, "Cost").
    map: HashIndex<K, Arc<Entry>, RandomState>,
    /// Keys held; changed only under `create`, so it never passes `max_keys`.
    len: AtomicUsize,
    max_keys: usize,
    idle: u64,
    snapshot_keys: usize,
    start: Instant,
    create: Mutex<Sweeps>,
    evicted: AtomicU64,
    watchdog: Option<MakeWatchdog<K>>,
}

/// Breakers per key, made on first use from a template and bounded in number; a
/// cheap handle (clones share the keys). See the [module docs](self).
pub struct KeyedBreaker<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for KeyedBreaker<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K> fmt::Debug for KeyedBreaker<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreaker")
            .field("name", &self.inner.name)
            .field("keys", &self.inner.len.load(Relaxed))
            .field("max_keys", &self.inner.max_keys)
            .finish_non_exhaustive()
    }
}

/// One key's breaker in a [`KeyedSnapshot`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct KeySnapshot {
    /// The key, as its `Debug` form cut to 64 bytes.
    pub key: String,
    /// Its breaker's figures (named after the keyed breaker).
    pub breaker: Snapshot,
}

/// A keyed breaker's figures, from [`KeyedBreaker::snapshot`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct KeyedSnapshot {
    /// The keyed breaker's name.
    pub name: Arc<str>,
    /// Keys held now.
    pub keys: usize,
    /// Keys whose breaker rejects calls now (open or forced open, and not let
    /// through by an [`EjectionCap`](crate::breaker::EjectionCap)).
    pub rejecting: usize,
    /// Keys whose breaker is open or half-open but let through by the template's
    /// [`EjectionCap`](crate::breaker::EjectionCap); 0 without one.
    pub capped: usize,
    /// Keys evicted so far (idle or at the cap).
    pub evicted: u64,
    /// Up to `snapshot_keys` keys: those not closed first, then the others.
    pub shown: Vec<KeySnapshot>,
}

impl<K> KeyedBreaker<K>
where
    K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
{
    /// Starts building a keyed breaker whose keys' breakers are built from `template`
    /// (its name names them all).
    pub fn builder(template: BreakerBuilder) -> KeyedBreakerBuilder<K> {
        KeyedBreakerBuilder {
            template,
            max_keys: DEFAULT_MAX_KEYS,
            idle: DEFAULT_IDLE,
            snapshot_keys: DEFAULT_SNAPSHOT_KEYS,
            watchdog: None,
        }
    }

    /// The keyed breaker's name (the template's).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Keys held now; never more than `max_keys`.
    pub fn len(&self) -> usize {
        self.inner.len.load(Acquire)
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys evicted so far, idle or at the cap.
    pub fn evicted(&self) -> u64 {
        self.inner.evicted.load(Relaxed)
    }

    /// The breaker of `key`, made now if the key is new (which may evict others).
    /// Counts as a use of the key.
    pub fn breaker(&self, key: &K) -> Breaker {
        self.with(key, Breaker::clone)
    }

    /// The breaker of `key` if it is held now; does not count as a use.
    pub fn get(&self, key: &K) -> Option<Breaker> {
        let guard = Guard::new();
        self.inner.map.peek(key, &guard)?.breaker(&guard).cloned()
    }

    /// A [`BreakerLayer`] for `key`'s breaker (made now if new): one endpoint's
    /// service, for a load balancer. The service keeps that breaker even if the key
    /// is later evicted.
    pub fn layer_for(&self, key: &K) -> BreakerLayer {
        self.breaker(key).layer()
    }

    /// A layer that picks each request's breaker by `key_fn`, with the default
    /// classifier (every `Err` is a failure).
    pub fn layer<F>(&self, key_fn: F) -> KeyedBreakerLayer<K, F> {
        KeyedBreakerLayer::new(self.clone(), key_fn)
    }

    /// Forgets every key not used for `idle`; returns how many. Also done when keys
    /// are created; call it from a periodic task to stop idle keys' watchdogs sooner.
    pub fn evict_idle(&self) -> usize {
        let inner = &*self.inner;
        let mut sweeps = inner.lock();
        inner.sweep_idle(&mut sweeps, inner.now())
    }

    /// The keys' figures: counts over every key, and up to `snapshot_keys` keys
    /// listed, those not closed first.
    pub fn snapshot(&self) -> KeyedSnapshot {
        let inner = &*self.inner;
        let guard = Guard::new();
        let (mut rejecting, mut capped) = (0, 0);
        let (mut shown, mut closed) = (Vec::new(), Vec::new());
        for (key, entry) in inner.map.iter(&guard) {
            let Some(breaker) = entry.breaker(&guard) else {
                continue;
            };
            let state = breaker.state();
            if breaker.is_capped() {
                capped += 1;
            } else if state.is_rejecting() {
                rejecting += 1;
            }
            let list = if state == State::Closed {
                &mut closed
            } else {
                &mut shown
            };
            if list.len() < inner.snapshot_keys {
                list.push(KeySnapshot {
                    key: key_text(key),
                    breaker: breaker.snapshot(),
                });
            }
        }
        shown.extend(closed);
        shown.truncate(inner.snapshot_keys);
        KeyedSnapshot {
            name: inner.name.clone(),
            keys: inner.len.load(Acquire),
            rejecting,
            capped,
            evicted: inner.evicted.load(Relaxed),
            shown,
        }
    }

    /// Runs `f` on `key`'s breaker, made if new. The hot path: a lock-free lookup.
    #[inline]
    pub(crate) fn with<R>(&self, key: &K, f: impl FnOnce(&Breaker) -> R) -> R {
        let guard = Guard::new();
        if let Some(entry) = self.inner.map.peek(key, &guard) {
            if let Some(breaker) = entry.breaker(&guard) {
                entry.touch();
                return f(breaker);
            }
        }
        drop(guard);
        f(&self.inner.create(key))
    }
}

fn key_text<K: fmt::Debug>(key: &K) -> String {
    let mut text = format!("{key:?}");
    if text.len() > KEY_TEXT {
        let mut end = KEY_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl<K> Inner<K>
where
    K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
{
    fn now(&self) -> u64 {
        nanos_since(self.start, Instant::now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sweeps> {
        // Nothing under this lock leaves the map inconsistent if it panics.
        self.create.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `key`'s entry and returns its breaker: the slow path, under the create
    /// mutex.
    #[cold]
    #[inline(never)]
    fn create(&self, key: &K) -> Breaker {
        let mut sweeps = self.lock();
        // Another caller may have made it meanwhile (a held key's breaker is emptied
        // only under this mutex, as the key is removed).
        let guard = Guard::new();
        if let Some(entry) = self.map.peek(key, &guard) {
            if let Some(breaker) = entry.breaker(&guard) {
                entry.touch();
                return breaker.clone();
            }
        }
        drop(guard);
        let now = self.now();
        if now.saturating_sub(sweeps.last) >= self.idle / 8 {
            self.sweep_idle(&mut sweeps, now);
        }
        if self.len.load(Acquire) >= self.max_keys && self.sweep_idle(&mut sweeps, now) == 0 {
            self.evict_oldest(now);
        }
        let breaker = Breaker::from_config(self.name.clone(), self.config.clone());
        let watchdog = self.watchdog.as_ref().and_then(|make| {
            make(key, &breaker)
                .map_err(|error| {
                    tracing::error!(
                        target: "steadfast::keyed",
                        breaker = &*self.name,
                        key = ?key,
                        %error,
                        "watchdog not started"
                    );
                })
                .ok()
        });
        let entry = Arc::new(Entry::new(breaker.clone(), now, watchdog));
        if self.map.insert(key.clone(), entry).is_ok() {
            self.len.fetch_add(1, AcqRel);
        }
        breaker
    }

    /// Removes keys unused for `idle`; under the create mutex.
    fn sweep_idle(&self, sweeps: &mut Sweeps, now: u64) -> usize {
        sweeps.last = now;
        let mut removed = 0;
        self.map.retain(|_, entry| {
            let keep = now.saturating_sub(entry.last_used(now)) < self.idle;
            if !keep {
                entry.retire();
                removed += 1;
            }
            keep
        });
        self.forget(removed);
        removed
    }

    /// At the cap with no idle key: removes the least recently used eighth.
    fn evict_oldest(&self, now: u64) {
        let guard = Guard::new();
        let mut ages: Vec<(u64, K)> = self
            .map
            .iter(&guard)
            .map(|(key, entry)| (entry.last_used(now), key.clone()))
            .collect();
        drop(guard);
        let batch = (self.max_keys / 8).clamp(1, ages.len().max(1));
        if ages.len() > batch {
            ages.select_nth_unstable_by_key(batch, |(seen, _)| *seen);
        }
        let removed = ages
            .iter()
            .take(batch)
            .filter(|(_, key)| {
                self.map.remove_if(key, |entry| {
                    entry.retire();
                    true
                })
            })
            .count();
        self.forget(removed);
    }

    fn forget(&self, removed: usize) {
        if removed > 0 {
            self.len.fetch_sub(removed, AcqRel);
            self.evicted.fetch_add(removed as u64, Relaxed);
        }
    }
}

/// What [`Health`](crate::health::Health) needs of a keyed breaker, whatever its key.
pub(crate) trait KeyedView: Send + Sync {
    fn snapshot(&self) -> KeyedSnapshot;
}

impl<K> KeyedView for KeyedBreaker<K>
where
    K: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
{
    fn snapshot(&self) -> KeyedSnapshot {
        KeyedBreaker::snapshot(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> KeyedBreakerBuilder<u32> {
        KeyedBreaker::builder(Breaker::builder("t"))
    }

    #[test]
    fn invalid_settings_are_config_errors() {
        let cases = [
            (b().max_keys(0), "max_keys"),
            (b().max_keys(MAX_MAX_KEYS + 1), "max_keys"),
            (b().idle(Duration::ZERO), "idle"),
            (b().idle(Duration::from_micros(999)), "idle"),
            (b().idle(Duration::from_secs(86_401)), "idle"),
            (
                KeyedBreaker::builder(Breaker::builder("t").failure_rate(2.0)),
                "failure_rate",
            ),
        ];
        for (builder, field) in cases {
            let debug = format!("{builder:?}");
            match builder.build() {
                Err(e) => assert_eq!(e.field(), field, "{debug}: {e}"),
                Ok(_) => panic!("accepted: {debug}"),
            }
        }
        assert!(b().max_keys(1).idle(MIN_IDLE).build().is_ok());
        assert!(b().max_keys(MAX_MAX_KEYS).build().is_ok());
    }

    #[test]
    fn an_evicted_entry_lets_go_of_its_breaker_while_the_map_still_holds_it() {
        let keyed = b().max_keys(1).build().unwrap();
        let first = keyed.breaker(&1);
        let guard = Guard::new();
        // What a lookup in flight holds: the entry, readable until its guard drops.
        let entry = keyed.inner.map.peek(&1, &guard).unwrap();
        assert!(entry.breaker(&guard).is_some());
        keyed.breaker(&2); // at the cap: evicts key 1
        assert_eq!(keyed.evicted(), 1);
        // The slot is empty at once (the breaker itself is freed once no guard can
        // see it), so a lookup that still sees the entry treats the key as not held.
        assert!(entry.breaker(&guard).is_none());
        assert!(keyed.get(&1).is_none());
        drop(guard);
        // Its handles still work, and the key comes back with a fresh breaker.
        assert_eq!(first.state(), State::Closed);
        keyed.breaker(&1);
        assert_eq!((keyed.len(), keyed.evicted()), (1, 2));
    }

    #[test]
    fn key_text_is_cut_on_a_char_boundary() {
        let long = "é".repeat(100);
        let text = key_text(&long);
        assert!(text.len() <= KEY_TEXT, "{}", text.len());
        assert!(text.starts_with("\"é"));
        assert_eq!(key_text(&7u8), "7");
    }
}
