//! The on-disk token cache: reuse until half the lifetime, one fetch for concurrent calls,
//! corrupt files replaced, the cached token served while renewal fails.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use regcred::dockerconfig::Credential;
use regcred::ecr::Token;
use regcred::registry::{Registry, TokenSource};
use regcred::token_cache::{Key, TokenCache};
use serde_json::{Value, json};

use super::*;

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_cached_second_call_makes_no_token_call() {
    let (env, key) = aws_env();
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("tokens");
    let first = response(&call(
        provider(&env, Some(&cache_dir)),
        &fixture("private.json"),
    ));
    assert_eq!(stack().token_calls(&key), 1);
    let second = response(&call(
        provider(&env, Some(&cache_dir)),
        &fixture("private.json"),
    ));
    assert_eq!(
        stack().token_calls(&key),
        1,
        "the second call used the cache"
    );
    let password = issued(&first["auth"][PRIVATE_HOST]["password"], account(), &key);
    assert_eq!(
        second["auth"][PRIVATE_HOST]["password"], password,
        "the cached token"
    );
    assert!(go_seconds(&second["cacheDuration"]) <= go_seconds(&first["cacheDuration"]));
    // Another region is another token; another identity does not see this one.
    response(&call(
        provider(&env, Some(&cache_dir)),
        &request_for("123456789012.dkr.ecr.eu-west-1.amazonaws.com/app"),
    ));
    assert_eq!(stack().token_calls(&key), 2);
    let (other_env, other_key) = aws_env();
    response(&call(
        provider(&other_env, Some(&cache_dir)),
        &fixture("private.json"),
    ));
    assert_eq!(stack().token_calls(&other_key), 1);
    assert_eq!(mode(&cache_dir), 0o700);
    let files = cache_files(&cache_dir);
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
}

#[tokio::test]
async fn a_token_is_reused_until_half_its_lifetime_then_renewed() {
    let (env, key) = aws_env();
    stack().set_aws_key(&key, &json!({"ttl": 6}));
    let dir = tempfile::tempdir().unwrap();
    let first = response(&call(
        provider(&env, Some(dir.path())),
        &fixture("private.json"),
    ));
    let secs = go_seconds(&first["cacheDuration"]);
    assert!((2..=3).contains(&secs), "half of a 6 s token: {secs}");
    response(&call(
        provider(&env, Some(dir.path())),
        &fixture("private.json"),
    ));
    assert_eq!(stack().token_calls(&key), 1, "within the half-life: cached");
    wait_for(
        "a renewal after the half-life",
        Duration::from_secs(15),
        || {
            let out = call(provider(&env, Some(dir.path())), &fixture("private.json"));
            response(&out);
            async { (stack().token_calls(&key) == 2).then_some(()) }
        },
    )
    .await;
}

#[test]
fn concurrent_calls_share_one_fetch() {
    let (env, key) = aws_env();
    // A slow ECR makes the calls overlap.
    stack().set_aws_key(&key, &json!({"delay": 1}));
    let dir = tempfile::tempdir().unwrap();
    let request = fixture("private.json");
    let children: Vec<_> = (0..6)
        .map(|_| {
            let mut child = provider(&env, Some(dir.path()))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&request).unwrap();
            child
        })
        .collect();
    let passwords: BTreeSet<String> = children
        .into_iter()
        .map(|child| {
            let v = response(&child.wait_with_output().unwrap());
            issued(&v["auth"][PRIVATE_HOST]["password"], account(), &key).to_owned()
        })
        .collect();
    assert_eq!(
        passwords.len(),
        1,
        "all six answered with the one token fetched"
    );
    assert_eq!(
        stack().token_calls(&key),
        1,
        "one fetched, the others waited"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| Path::new(n).extension().is_some_and(|e| e == "tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_corrupt_cache_file_is_ignored_and_replaced() {
    let (env, key) = aws_env();
    let dir = tempfile::tempdir().unwrap();
    response(&call(
        provider(&env, Some(dir.path())),
        &fixture("private.json"),
    ));
    let [file] = cache_files(dir.path()).try_into().unwrap();
    std::fs::write(&file, b"{\"version\": 1, \"password\": tr").unwrap();
    let out = call(provider(&env, Some(dir.path())), &fixture("private.json"));
    let v = response(&out);
    issued(&v["auth"][PRIVATE_HOST]["password"], account(), &key);
    assert!(stderr(&out).contains("corrupt"), "{}", stderr(&out));
    assert_eq!(stack().token_calls(&key), 2);
    let stored: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(stored["username"], "AWS", "replaced by a sound file");
    assert_eq!(mode(&file), 0o600);
}

#[test]
fn a_failed_renewal_serves_the_cached_token_until_it_expires() {
    let (env, key) = aws_env();
    stack().set_aws_key(&key, &json!({"fail": "ThrottlingException"}));
    let dir = tempfile::tempdir().unwrap();
    let cache = TokenCache::open(dir.path()).unwrap();
    let source = TokenSource::of(
        &Registry::parse("123456789012.dkr.ecr.us-east-1.amazonaws.com").unwrap(),
        None,
    );
    let cache_key = Key::new(&source, env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let now = Timestamp::now();
    let stale = |left: SignedDuration| Token {
        credential: Credential {
            username: "AWS".into(),
            password: "stale-but-valid".to_owned().into(),
        },
        expires_at: now + left,
        fetched_at: now + left - SignedDuration::from_hours(12),
    };
    // Past its half-life (so renewal is due) but two hours left: served.
    cache
        .store(&cache_key, &source, &stale(SignedDuration::from_hours(2)))
        .unwrap();
    let out = call(provider(&env, Some(dir.path())), &fixture("private.json"));
    let v = response(&out);
    assert_eq!(
        v["auth"]["123456789012.dkr.ecr.us-east-1.amazonaws.com"]["password"],
        "stale-but-valid"
    );
    let secs = go_seconds(&v["cacheDuration"]);
    assert!(
        (3500..=3600).contains(&secs),
        "half of the 2 h left: {secs}"
    );
    assert!(stderr(&out).contains("could not renew"), "{}", stderr(&out));
    assert!(stack().token_calls(&key) >= 1, "renewal was tried first");
    // Expired: nothing to fall back on.
    cache
        .store(&cache_key, &source, &stale(SignedDuration::from_secs(-60)))
        .unwrap();
    let out = call(provider(&env, Some(dir.path())), &fixture("private.json"));
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("Throttling"), "{}", stderr(&out));
}
