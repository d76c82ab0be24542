//! Tokens kept on disk between `credential-provider` calls, so a node's kubelet does not ask
//! ECR for a token on every pull.
//!
//! One file per token source and AWS identity (`<source>-<scope>.json`, mode 0600), written
//! to a temporary file and renamed into place, so a reader sees the old token or the new one,
//! never half of one. A lock file per entry lets one of several concurrent calls fetch while
//! the others wait and then read what it stored. A file that cannot be read or parsed is
//! treated as absent and replaced by the next store.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};

use crate::dockerconfig::Credential;
use crate::ecr::Token;
use crate::registry::{Endpoint, TokenSource};

/// Version of the file format; a file of another version is ignored.
const FORMAT: u32 = 1;

/// How long a call waits for another one that is fetching the same token. Past that it
/// fetches on its own (kubelet gives a plugin one minute in all).
const LOCK_WAIT: Duration = Duration::from_secs(50);

/// Environment variables whose values never go into the scope hash.
const SECRET_VARS: &[&str] = &["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

/// A directory of cached tokens.
#[derive(Clone, Debug)]
pub struct TokenCache {
    dir: PathBuf,
}

/// The name of one cache entry: which source, seen by which AWS identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    /// The entry for `source` as seen by the AWS configuration in `env`: `AWS_*` variables
    /// (other than secrets) decide credentials, profile and endpoints, so tokens fetched under
    /// one configuration are never handed out under another that shares the directory.
    pub fn new<'a>(
        source: &TokenSource,
        env: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut slug = match &source.endpoint {
            Endpoint::Private {
                region,
                fips,
                dual_stack,
                ..
            } => {
                let mut s = format!("ecr-{region}");
                if *fips {
                    s.push_str("-fips");
                }
                if *dual_stack {
                    s.push_str("-dualstack");
                }
                s
            }
            Endpoint::Public => "ecr-public".to_owned(),
        };
        slug.retain(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let mut vars: Vec<(&str, &str)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("AWS_") && !SECRET_VARS.contains(k))
            .collect();
        vars.sort_unstable();
        let mut scope = Fnv::default();
        scope.write(source.to_string().as_bytes());
        for (k, v) in vars {
            scope.write(b"\n");
            scope.write(k.as_bytes());
            scope.write(b"=");
            scope.write(v.as_bytes());
        }
        Self(format!("{slug}-{:016x}", scope.0))
    }

    /// The entry for `source` under this process's environment.
    #[must_use]
    pub fn from_process_env(source: &TokenSource) -> Self {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::new(source, env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms (unlike `DefaultHasher`), and enough
/// to tell a handful of configurations apart. Not a security boundary: the files are 0600.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The file's content. No `Debug`: it holds the password.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Stored {
    version: u32,
    source: String,
    username: String,
    password: String,
    expires_at: Timestamp,
    fetched_at: Timestamp,
}

/// Whether a cached token may still be handed out: until half its lifetime has passed.
#[must_use]
pub fn is_reusable(token: &Token, now: Timestamp) -> bool {
    let lifetime = token.expires_at.duration_since(token.fetched_at);
    lifetime.is_positive() && now >= token.fetched_at && now < token.fetched_at + lifetime / 2
}

/// Held while one call fetches an entry's token; released on drop.
#[derive(Debug)]
pub struct Lock {
    _file: Option<File>,
}

impl TokenCache {
    /// Uses `dir`, creating it (mode 0700) when missing.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.dir.join(format!("{}.json", key.0))
    }

    /// The cached token, if there is a readable one for this source. A missing file is
    /// silent; an unreadable or corrupt one is logged (never its content) and ignored.
    #[must_use]
    pub fn load(&self, key: &Key, source: &TokenSource) -> Option<Token> {
        let path = self.path(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the cached token; fetching a new one");
                return None;
            }
        };
        let stored: Stored = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => {
                // serde_json's message names a position, not the content.
                tracing::warn!(path = %path.display(), error = %e, "cached token file is corrupt; ignoring and replacing it");
                return None;
            }
        };
        let sound = stored.version == FORMAT
            && stored.source == source.to_string()
            && !stored.username.is_empty()
            && !stored.password.is_empty()
            && stored.fetched_at < stored.expires_at;
        if !sound {
            tracing::warn!(path = %path.display(), "cached token file does not fit this source; ignoring and replacing it");
            return None;
        }
        let credential = Credential {
            username: stored.username,
            password: stored.password.into(),
        };
        crate::telemetry::never_log(credential.password.expose_secret());
        crate::telemetry::never_log(credential.auth().expose_secret());
        Some(Token {
            credential,
            expires_at: stored.expires_at,
            fetched_at: stored.fetched_at,
        })
    }

    /// Stores a token atomically: a new 0600 file in the same directory, synced, then
    /// renamed over the entry.
    pub fn store(&self, key: &Key, source: &TokenSource, token: &Token) -> std::io::Result<()> {
        let stored = Stored {
            version: FORMAT,
            source: source.to_string(),
            username: token.credential.username.clone(),
            password: token.credential.password.expose_secret().to_owned(),
            expires_at: token.expires_at,
            fetched_at: token.fetched_at,
        };
        let bytes = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
        let tmp = self.dir.join(format!(
            ".{}.{}.{:08x}.tmp",
            key.0,
            std::process::id(),
            rand::random::<u32>()
        ));
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, self.path(key))
        };
        write().inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Waits (up to 50 s) until no other call is fetching this entry. When the
    /// lock cannot be had the call goes on without it: a duplicate fetch is better than no
    /// answer.
    pub async fn lock(&self, key: &Key) -> Lock {
        let path = self.dir.join(format!("{}.lock", key.0));
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open the cache lock; going on without it");
                return Lock { _file: None };
            }
        };
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Lock { _file: Some(file) },
                Err(std::fs::TryLockError::WouldBlock)
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot take the cache lock; going on without it");
                    return Lock { _file: None };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use std::os::unix::fs::PermissionsExt as _;

    fn source(host: &str) -> TokenSource {
        TokenSource::of(&Registry::parse(host).unwrap(), None)
    }

    fn token(fetched: &str, expires: &str) -> Token {
        Token {
            credential: Credential {
                username: "AWS".into(),
                password: "secret-pw".to_owned().into(),
            },
            expires_at: expires.parse().unwrap(),
            fetched_at: fetched.parse().unwrap(),
        }
    }

    const PRIVATE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

    #[test]
    fn keys_separate_sources_and_identities_but_not_secrets() {
        let s = source(PRIVATE);
        let env = |pairs: &[(&'static str, &'static str)]| Key::new(&s, pairs.iter().copied());
        let base = env(&[("AWS_ACCESS_KEY_ID", "AKIA1"), ("HOME", "/root")]);
        assert!(base.as_str().starts_with("ecr-us-east-1-"), "{base:?}");
        assert_eq!(
            base,
            env(&[("HOME", "/other"), ("AWS_ACCESS_KEY_ID", "AKIA1")])
        );
        assert_eq!(
            base,
            env(&[
                ("AWS_ACCESS_KEY_ID", "AKIA1"),
                ("AWS_SECRET_ACCESS_KEY", "x")
            ]),
            "secrets do not go into the key"
        );
        assert_ne!(base, env(&[("AWS_ACCESS_KEY_ID", "AKIA2")]));
        assert_ne!(
            base,
            env(&[("AWS_ACCESS_KEY_ID", "AKIA1"), ("AWS_PROFILE", "p")])
        );
        let fips = Key::new(
            &source("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com"),
            [("AWS_ACCESS_KEY_ID", "AKIA1")],
        );
        assert!(fips.as_str().starts_with("ecr-us-east-1-fips-"));
        let public = Key::new(&source("public.ecr.aws"), []);
        assert!(public.as_str().starts_with("ecr-public-"));
    }

    #[test]
    fn reusable_until_half_life() {
        let t = token("2026-11-29T00:00:00Z", "2026-11-29T12:00:00Z");
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert!(is_reusable(&t, at("2026-11-29T00:00:00Z")));
        assert!(is_reusable(&t, at("2026-11-29T05:59:59Z")));
        assert!(!is_reusable(&t, at("2026-11-29T06:00:00Z")));
        assert!(
            !is_reusable(&t, at("2026-11-28T23:00:00Z")),
            "a token from the future (clock moved back) is not trusted"
        );
    }

    #[test]
    fn store_then_load_round_trips_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::open(&dir.path().join("sub")).unwrap();
        let s = source(PRIVATE);
        let key = Key::new(&s, []);
        assert!(cache.load(&key, &s).is_none());
        let t = token("2026-11-29T00:00:00Z", "2026-11-29T12:00:00Z");
        cache.store(&key, &s, &t).unwrap();
        let back = cache.load(&key, &s).unwrap();
        assert_eq!(back.credential.password.expose_secret(), "secret-pw");
        assert_eq!(back.expires_at, t.expires_at);
        assert_eq!(back.fetched_at, t.fetched_at);
        let mode = std::fs::metadata(cache.path(&key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(dir.path().join("sub"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // Another source's entry under the same name is not handed out.
        assert!(cache.load(&key, &source("public.ecr.aws")).is_none());
    }

    #[test]
    fn corrupt_files_are_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::open(dir.path()).unwrap();
        let s = source(PRIVATE);
        let key = Key::new(&s, []);
        for garbage in [
            &b"{not json"[..],
            b"",
            br#"{"version":1}"#,
            br#"{"version":9,"source":"ecr us-east-1","username":"AWS","password":"p","expiresAt":"2026-11-29T12:00:00Z","fetchedAt":"2026-11-29T00:00:00Z"}"#,
        ] {
            std::fs::write(cache.path(&key), garbage).unwrap();
            assert!(cache.load(&key, &s).is_none());
        }
        let t = token("2026-11-29T00:00:00Z", "2026-11-29T12:00:00Z");
        cache.store(&key, &s, &t).unwrap();
        assert!(cache.load(&key, &s).is_some());
    }

    #[tokio::test]
    async fn the_lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::open(dir.path()).unwrap();
        let key = Key::new(&source(PRIVATE), []);
        let held = cache.lock(&key).await;
        let path = dir.path().join(format!("{}.lock", key.as_str()));
        let other = File::open(&path).unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(held);
        other.try_lock().unwrap();
    }
}
