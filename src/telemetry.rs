//! Logs: tracing to stderr, JSON by default (text for a terminal or when configured), level
//! from `RUST_LOG` or the config. pingora's own `log` records are bridged into the same
//! output. Nothing logged ever includes a token, a secret or an Authorization header: our
//! own events never carry them, and pingora's debug/trace records (which dump request
//! headers and raw request bytes) are dropped whatever level is configured.

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::{LogFormat, LoggingSettings};

/// pingora records above this level can contain request headers or raw request bytes.
const PINGORA_MAX_LEVEL: Level = Level::INFO;

fn is_safe(meta: &tracing::Metadata<'_>) -> bool {
    !(meta.target().starts_with("pingora") && *meta.level() > PINGORA_MAX_LEVEL)
}

/// Install the global subscriber once; later calls are ignored.
pub fn init(settings: &LoggingSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_target(true)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed()
    };
    let installed = tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(filter_fn(is_safe)))
        .try_init();
    if installed.is_ok() {
        // `log` records (pingora's) above INFO are dropped by `is_safe` anyway: stop them at
        // the macro instead of formatting and dispatching each one (measured: ~2% of CPU).
        log::set_max_level(log::LevelFilter::Info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_debug_records_are_never_safe() {
        use tracing::callsite::Identifier;
        struct Cs;
        impl tracing::callsite::Callsite for Cs {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &tracing::Metadata<'_> {
                unreachable!()
            }
        }
        static CS: Cs = Cs;
        let meta = |target: &'static str, level: Level| {
            tracing::Metadata::new(
                "x",
                target,
                level,
                None,
                None,
                None,
                tracing::field::FieldSet::new(&[], Identifier(&CS)),
                tracing::metadata::Kind::EVENT,
            )
        };
        assert!(!is_safe(&meta("pingora_proxy::proxy_h1", Level::DEBUG)));
        assert!(!is_safe(&meta("pingora_core::protocols", Level::TRACE)));
        assert!(is_safe(&meta("pingora_core::server", Level::INFO)));
        assert!(is_safe(&meta("wetrials_gateway::proxy", Level::DEBUG)));
    }
}
