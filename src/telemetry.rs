//! Logging: to stderr always (stdout carries results), as text or JSON.

use std::io::IsTerminal as _;

use clap::{Args, ValueEnum};
use tracing::{Level, Metadata};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, fmt};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logging flags, shared by every mode.
#[derive(Args, Clone, Debug)]
pub struct LogArgs {
    /// Log level (error, warn, info, debug, trace) or a full filter such as
    /// `regcred=debug,kube=info`. `RUST_LOG`, when set, wins.
    #[arg(
        long,
        global = true,
        env = "REGCRED_LOG_LEVEL",
        default_value = "info",
        value_name = "LEVEL"
    )]
    pub log_level: String,
    /// Log line format.
    #[arg(long, global = true, env = "REGCRED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Default for LogArgs {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}

/// Where the AWS SDK prints whole requests and responses at trace level: the
/// `GetAuthorizationToken` answer (the token itself, base64 `AWS:password`, the very `auth`
/// value of the secret) and STS credentials. Those events never reach the log, whatever
/// `--log-level` or `RUST_LOG` ask for; the SDK's other trace events still do.
const PAYLOAD_DUMPS: &[&str] = &["aws_smithy_runtime::client::orchestrator"];

fn dumps_payloads(target: &str, level: Level) -> bool {
    level == Level::TRACE
        && PAYLOAD_DUMPS.iter().any(|t| {
            target
                .strip_prefix(t)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

/// Installs the global subscriber.
///
/// # Errors
/// When the level is not a valid filter.
pub fn init(args: &LogArgs) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => {
            EnvFilter::try_new(env).map_err(|e| format!("RUST_LOG: {e}"))?
        }
        _ => EnvFilter::try_new(&args.log_level).map_err(|e| format!("--log-level: {e}"))?,
    };
    let layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let layer = match args.log_format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    };
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(layer.with_filter(filter_fn(|meta: &Metadata<'_>| {
            !dumps_payloads(meta.target(), *meta.level())
        })))
        .try_init();
    // A second init (tests) keeps the first subscriber.
    result.or(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sdks_payload_dumps_are_dropped() {
        let orchestrator = "aws_smithy_runtime::client::orchestrator";
        assert!(dumps_payloads(orchestrator, Level::TRACE));
        assert!(dumps_payloads(
            "aws_smithy_runtime::client::orchestrator::http",
            Level::TRACE
        ));
        assert!(!dumps_payloads(orchestrator, Level::DEBUG));
        assert!(!dumps_payloads(
            "aws_smithy_runtime::client::orchestratorx",
            Level::TRACE
        ));
        assert!(!dumps_payloads("regcred::sync", Level::TRACE));
    }
}
