//! The examples' one printer of steadfast's `tracing` events, as lines stamped with
//! the seconds since the example's start: breaker transitions (target
//! `steadfast::breaker`), the ejection cap holding, retries (`steadfast::retry`), and
//! the watchdog's escalations and their clearing (`steadfast::watchdog`, `info` and
//! above; not each failed probe). Included with `#[path]` by the examples that use it.

use std::fmt;
use tokio::time::Instant;

use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Real seconds since `start`, for timestamps.
pub fn stamp(start: Instant) -> String {
    format!("{:5.2}s", start.elapsed().as_secs_f64())
}

/// Installs the printer as the process's subscriber.
pub fn print_from(start: Instant) -> Result<(), tracing::subscriber::SetGlobalDefaultError> {
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Printer { start }))
}

struct Printer {
    start: Instant,
}

impl<S: tracing::Subscriber> Layer<S> for Printer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let mut f = Fields::default();
        event.record(&mut f);
        let stamp = stamp(self.start);
        match meta.target() {
            "steadfast::breaker" if f.get("breaker").is_empty() => {
                println!("{stamp}  {}", f.get("message"))
            }
            "steadfast::breaker" => println!(
                "{stamp}  breaker `{}` {} -> {} ({})",
                f.get("breaker"),
                f.get("from"),
                f.get("to"),
                f.get("reason")
            ),
            "steadfast::retry" => println!(
                "{stamp}  retry   attempt {} failed ({}): {}{}",
                f.get("attempt"),
                f.get("why"),
                f.get("message"),
                match f.get("delay_ms") {
                    "" => String::new(),
                    ms => format!(", in {ms} ms"),
                }
            ),
            "steadfast::watchdog" if *meta.level() <= tracing::Level::INFO => {
                println!("{stamp}  watchdog: {}", f.get("message"))
            }
            _ => {}
        }
    }
}

/// An event's fields, as text.
#[derive(Default)]
struct Fields(Vec<(&'static str, String)>);

impl Fields {
    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name(), value.to_owned()));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.push((field.name(), format!("{value:?}")));
    }
}
