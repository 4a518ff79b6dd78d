//! Readiness from breakers: take a service out of the load balancer while a dependency
//! it cannot work without is down, and bring it back when it returns.
//!
//! [`Health::is_ready`] is false while any registered breaker is forced open or
//! escalated by its [watchdog](crate::watchdog); a breaker that is merely open is still
//! ready, since the service degrades gracefully and the breaker handles it. An
//! [endpoint set](Health::register_endpoints) makes it false while every one of its
//! endpoints' breakers is open.
//! [`Health::snapshot`] lists every dependency with its state and figures, ready to be
//! served as JSON from a `/health` route (with the `serde` feature).
//!
//! ```
//! use steadfast::breaker::Breaker;
//! use steadfast::health::Health;
//!
//! let db = Breaker::new("db");
//! let health = Health::new();
//! health.register(&db);
//! assert!(health.is_ready());
//! db.force_open();
//! assert!(!health.is_ready());
//! assert_eq!(health.snapshot().dependencies[0].breaker.name.as_ref(), "db");
//! ```

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use crate::breaker::{Breaker, EjectionCap, EjectionSnapshot, Snapshot, State};
use crate::keyed::{KeyedBreaker, KeyedSnapshot, KeyedView};

/// A registry of breakers whose states decide readiness. Cheap to clone; clones share
/// the registry.
#[derive(Clone, Default)]
pub struct Health {
    breakers: Arc<RwLock<Vec<Breaker>>>,
    keyed: Arc<RwLock<Vec<Arc<dyn KeyedView>>>>,
    sets: Arc<RwLock<Vec<EjectionCap>>>,
}

/// One dependency in a [`HealthSnapshot`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Dependency {
    /// The breaker's figures.
    pub breaker: Snapshot,
    /// Whether its watchdog reports it escalated.
    pub escalated: bool,
    /// Whether it makes the service not ready (escalated or forced open).
    pub blocks_readiness: bool,
}

/// Every registered dependency at one moment, from [`Health::snapshot`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct HealthSnapshot {
    /// Whether no dependency blocks readiness.
    pub ready: bool,
    /// The dependencies, in registration order.
    pub dependencies: Vec<Dependency>,
    /// The keyed breakers, in registration order: counts over all keys and a capped
    /// list of keys (see [`KeyedBreaker::snapshot`]). They never block readiness.
    /// Left out of the JSON when empty.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Vec::is_empty"))]
    pub keyed: Vec<KeyedSnapshot>,
    /// The endpoint sets, in registration order (see [`Health::register_endpoints`]).
    /// Left out of the JSON when empty.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Vec::is_empty"))]
    pub endpoint_sets: Vec<EndpointSet>,
}

/// One endpoint set in a [`HealthSnapshot`]: the breakers sharing an [`EjectionCap`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct EndpointSet {
    /// The set's figures: members, how many may reject, open, let through.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub ejection: EjectionSnapshot,
    /// Whether it makes the service not ready: every breaker of the set is open.
    pub blocks_readiness: bool,
}

fn set_blocks(s: &EjectionSnapshot) -> bool {
    s.members > 0 && s.open == s.members
}

fn blocks(breaker: &Breaker) -> bool {
    breaker.is_escalated() || breaker.state() == State::ForcedOpen
}

impl Health {
    /// An empty registry: ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a breaker (a clone of it is kept). Registering the same breaker twice
    /// lists it twice.
    pub fn register(&self, breaker: &Breaker) -> &Self {
        self.breakers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(breaker.clone());
        self
    }

    /// Adds a [`KeyedBreaker`] (a clone of it is kept). Its keys are listed in
    /// snapshots, capped by its `snapshot_keys`, but never block readiness: one
    /// endpoint among many being down is what per-endpoint breakers are for.
    ///
    /// ```
    /// use steadfast::breaker::Breaker;
    /// use steadfast::health::Health;
    /// use steadfast::keyed::KeyedBreaker;
    ///
    /// let hosts = KeyedBreaker::builder(Breaker::builder("hosts")).build()?;
    /// hosts.breaker(&"a.example").force_open();
    /// let health = Health::new();
    /// health.register_keyed(&hosts);
    /// let snapshot = health.snapshot();
    /// assert!(snapshot.ready);
    /// assert_eq!(snapshot.keyed[0].rejecting, 1);
    /// assert_eq!(snapshot.keyed[0].shown[0].key, "\"a.example\"");
    /// # Ok::<(), steadfast::ConfigError>(())
    /// ```
    pub fn register_keyed<K>(&self, keyed: &KeyedBreaker<K>) -> &Self
    where
        K: std::hash::Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static,
    {
        self.keyed
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(keyed.clone()));
        self
    }

    /// Adds the set of endpoint breakers that share `cap` (one per endpoint of a
    /// load balancer, or a keyed breaker's keys): it makes the service not ready while
    /// every breaker of the set is open or half-open, when the process reaches none of
    /// its endpoints. That is either its own fault (its network, a bad deploy) or every
    /// endpoint down; either way its share of the traffic is better served elsewhere.
    /// Fewer open breakers never block readiness: routing around them is the
    /// balancer's and the cap's job.
    ///
    /// A process out of its load balancer gets no requests to try its endpoints with:
    /// give the set's breakers a [watchdog](crate::watchdog), whose probes close them
    /// (and so make the process ready again) when the endpoints answer.
    ///
    /// ```
    /// use steadfast::breaker::{Breaker, EjectionCap};
    /// use steadfast::health::Health;
    ///
    /// let cap = EjectionCap::default();
    /// let endpoints: Vec<Breaker> = (0..3)
    ///     .map(|i| Breaker::builder(format!("orders-{i}")).ejection_cap(&cap).build())
    ///     .collect::<Result<_, _>>()?;
    /// let health = Health::new();
    /// health.register_endpoints(&cap);
    /// assert!(health.is_ready());
    /// assert_eq!(health.snapshot().endpoint_sets[0].ejection.members, 3);
    /// # Ok::<(), steadfast::ConfigError>(())
    /// ```
    pub fn register_endpoints(&self, cap: &EjectionCap) -> &Self {
        self.sets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(cap.clone());
        self
    }

    /// Records every registered breaker's and keyed breaker's figures with the
    /// [`metrics`](crate::metrics) facade (feature `metrics`): call it in the
    /// `/metrics` handler before the exporter renders.
    #[cfg(feature = "metrics")]
    pub fn record_metrics(&self) {
        for breaker in self
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            crate::metrics::record(breaker);
        }
        for keyed in self
            .keyed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            crate::metrics::record_keyed(&keyed.snapshot());
        }
    }

    /// False while any registered breaker is escalated or forced open, or every
    /// breaker of a registered endpoint set is open.
    pub fn is_ready(&self) -> bool {
        !self
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(blocks)
            && !self
                .sets
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|cap| set_blocks(&cap.snapshot()))
    }

    /// Every dependency's state and figures.
    pub fn snapshot(&self) -> HealthSnapshot {
        let dependencies: Vec<_> = self
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|b| Dependency {
                breaker: b.snapshot(),
                escalated: b.is_escalated(),
                blocks_readiness: blocks(b),
            })
            .collect();
        let keyed = self
            .keyed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|k| k.snapshot())
            .collect();
        let endpoint_sets: Vec<_> = self
            .sets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|cap| {
                let ejection = cap.snapshot();
                EndpointSet {
                    ejection,
                    blocks_readiness: set_blocks(&ejection),
                }
            })
            .collect();
        HealthSnapshot {
            ready: !dependencies.iter().any(|d| d.blocks_readiness)
                && !endpoint_sets.iter().any(|s| s.blocks_readiness),
            dependencies,
            keyed,
            endpoint_sets,
        }
    }
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|b| b.name().to_owned())
            .collect();
        f.debug_struct("Health").field("breakers", &names).finish()
    }
}
