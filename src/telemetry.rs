//! Logging: to stderr always (stdout carries results), as text or JSON.

use std::collections::VecDeque;
use std::io::{IsTerminal as _, Write};
use std::sync::RwLock;

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

/// Secrets regcred holds (token passwords and `auth` values): whatever writes a log line,
/// regcred or a dependency, these never reach stderr. The newest [`NEVER_LOG_KEEP`] are kept.
static NEVER_LOG: RwLock<VecDeque<String>> = RwLock::new(VecDeque::new());
const NEVER_LOG_KEEP: usize = 64;
const REDACTED: &str = "[redacted]";

/// Registers a secret that must never be logged. Short strings are ignored (they would
/// redact ordinary words; real tokens are hundreds of characters).
pub fn never_log(secret: &str) {
    if secret.len() < 8 {
        return;
    }
    let mut all = NEVER_LOG
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if all.iter().any(|s| s == secret) {
        return;
    }
    if all.len() == NEVER_LOG_KEEP {
        all.pop_front();
    }
    all.push_back(secret.to_owned());
}

/// A log line with every registered secret replaced.
fn redact(line: &str) -> std::borrow::Cow<'_, str> {
    let all = NEVER_LOG
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = std::borrow::Cow::Borrowed(line);
    for secret in all.iter() {
        if out.contains(secret.as_str()) {
            out = std::borrow::Cow::Owned(out.replace(secret.as_str(), REDACTED));
        }
    }
    out
}

/// Stderr, through [`redact`]. The formatter hands over each event in one write, so a
/// secret is never split between two calls.
struct RedactingStderr;

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr()
            .lock()
            .write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
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
        .with_writer(|| RedactingStderr)
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
    fn registered_secrets_are_redacted_from_any_line() {
        never_log("short");
        never_log("s3cr3t-password-value");
        assert_eq!(
            redact("short and s3cr3t-password-value!"),
            "short and [redacted]!"
        );
        assert!(matches!(
            redact("nothing here"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

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
