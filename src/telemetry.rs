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

/// Secrets regcred holds (token passwords and `auth` values), in every form they take in a
/// log line: whatever writes one, regcred or a dependency, these never reach stderr. The
/// newest [`NEVER_LOG_KEEP`] strings are kept (a few dozen tokens' worth).
static NEVER_LOG: RwLock<VecDeque<String>> = RwLock::new(VecDeque::new());
const NEVER_LOG_KEEP: usize = 1024;
const REDACTED: &str = "[redacted]";
/// Shorter strings are never registered: they would redact ordinary words (real tokens are
/// hundreds of characters).
const SHORTEST: usize = 8;

/// Registers a secret that must never be logged, in every form a log line may carry it: as
/// is; JSON-escaped (with and without escaped slashes), as it sits in a document; and base64
/// of each of those at all three byte alignments, as it sits inside a base64 field such as
/// a Secret's `data` (a client that logs a response body it could not decode prints that).
pub fn never_log(secret: &str) {
    if secret.len() < SHORTEST {
        return;
    }
    let mut all = NEVER_LOG
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for form in forms(secret) {
        if form.len() < SHORTEST || all.contains(&form) {
            continue;
        }
        if all.len() == NEVER_LOG_KEEP {
            all.pop_front();
        }
        all.push_back(form);
    }
}

/// Every form of `secret` [`never_log`] registers.
fn forms(secret: &str) -> Vec<String> {
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json
        .strip_prefix('"')
        .and_then(|j| j.strip_suffix('"'))
        .unwrap_or(secret)
        .to_owned();
    let mut plain = vec![secret.to_owned(), json.clone(), json.replace('/', "\\/")];
    plain.dedup();
    let mut all = plain.clone();
    for text in &plain {
        all.extend((0..3).map(|offset| base64_core(text.as_bytes(), offset)));
    }
    all.dedup();
    all
}

/// The part of the base64 encoding of `bytes` that does not depend on what surrounds them,
/// when they start `offset` bytes (0 to 2) into a 3-byte group of a longer encoded text.
fn base64_core(bytes: &[u8], offset: usize) -> String {
    use base64::Engine as _;
    let mut aligned = vec![0_u8; offset];
    aligned.extend_from_slice(bytes);
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&aligned);
    // The first characters mix in the bytes before; a last partial group, the bytes after.
    let start = [0, 2, 3][offset];
    let end = encoded.len() - usize::from(!aligned.len().is_multiple_of(3));
    encoded.get(start..end).unwrap_or_default().to_owned()
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
    fn base64_cores_are_what_every_encoding_of_the_secret_contains() {
        use base64::Engine as _;
        let secret = b"s3cr3t-password-value";
        for before in ["", "x", "xy", "xyz", "wxyz"] {
            for after in ["", "!", "!!", "!!!"] {
                let text = [before.as_bytes(), secret, after.as_bytes()].concat();
                let encoded = base64::engine::general_purpose::STANDARD.encode(&text);
                let core = base64_core(secret, before.len() % 3);
                assert!(core.len() >= 24, "{core}");
                assert!(
                    encoded.contains(&core),
                    "{before:?} {after:?}: {encoded} {core}"
                );
            }
        }
    }

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

    /// Whether any of `secrets` can be read back from `text`: as is, or from any run of base64
    /// in it, decoded from every starting point.
    fn recoverable(text: &str, secrets: &[&str]) -> Option<String> {
        use base64::Engine as _;
        use base64::engine::general_purpose::STANDARD_NO_PAD;
        if let Some(s) = secrets.iter().find(|s| text.contains(**s)) {
            return Some(format!("{s} as is"));
        }
        let runs = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/'))
            .filter(|r| r.len() >= 8);
        for run in runs {
            for skip in 0..4.min(run.len()) {
                let chunk = &run[skip..];
                let Ok(bytes) = STANDARD_NO_PAD.decode(&chunk[..chunk.len() / 4 * 4]) else {
                    continue;
                };
                let decoded = String::from_utf8_lossy(&bytes);
                if let Some(s) = recoverable(&decoded, secrets) {
                    return Some(format!("{s}, in base64 {run}"));
                }
            }
        }
        None
    }

    #[test]
    fn a_secret_in_a_response_body_is_redacted_in_its_base64_and_json_forms() {
        use base64::Engine as _;
        use base64::engine::general_purpose::STANDARD as BASE64;

        // A password as ECR makes them (base64 of a JSON document), in a token as ECR sends
        // it (base64 of "AWS:" and the password, the very `auth` of the secret).
        let password = BASE64.encode(
            r#"{"payload":"aGVsbG8/Pz8+Pj4gd29ybGQ=","datakey":"AQIDAHhh","version":"2","type":"DATA_KEY","expiration":1795953600}"#,
        );
        let auth = BASE64.encode(format!("AWS:{password}"));
        let source = crate::registry::TokenSource::of(
            &crate::registry::Registry::parse("public.ecr.aws").unwrap(),
            None,
        );
        let now = jiff::Timestamp::now();
        let token = crate::ecr::Token::from_authorization(
            &source,
            &auth,
            Some(now + jiff::SignedDuration::from_hours(12)),
            now,
        )
        .unwrap();
        let secret = crate::secrets::desired(
            "regcred",
            "apps",
            &[crate::secrets::Served {
                host: "public.ecr.aws",
                token: &token,
            }],
            std::collections::BTreeMap::new(),
        );
        // The same token as Argo CD and basic-auth secrets hold it: the password alone, in
        // base64 as `data` carries it.
        let plain: Vec<String> = [
            crate::formats::Format::ArgocdRepository,
            crate::formats::Format::BasicAuth,
        ]
        .into_iter()
        .map(|format| {
            let secret = crate::formats::desired(
                format,
                "regcred-public.ecr.aws",
                "argocd",
                &[crate::secrets::Served {
                    host: "public.ecr.aws",
                    token: &token,
                }],
                std::collections::BTreeMap::new(),
            );
            serde_json::to_string(&secret).unwrap()
        })
        .collect();
        // The API server's answer for that Secret (`data` is base64 of the document), as a
        // client logs it when it cannot decode it; with its slashes escaped, as some JSON
        // writers do; and Debug-formatted.
        let body = serde_json::to_string(&secret).unwrap();
        let lines = [
            plain[0].clone(),
            plain[1].replace('/', "\\/"),
            format!("{body}, Error(\"missing field `kind`\", line: 1, column: 420)"),
            body.replace('/', "\\/"),
            format!("{body:?}"),
            // The document itself, and the password in it, JSON-escaped.
            String::from_utf8(secret.data.unwrap()[crate::secrets::DATA_KEY].0.clone()).unwrap(),
            serde_json::to_string(&serde_json::json!({ "p": password }))
                .unwrap()
                .replace('/', "\\/"),
        ];
        for line in lines {
            let out = redact(&line);
            if let Some(found) = recoverable(&out, &[&password, &auth]) {
                panic!("{found}\nin the redacted line\n{out}");
            }
        }
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
