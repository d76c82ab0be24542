//! Processes a test runs: a fake AWS of its own, and `regcred` itself (`Running`).

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Identity, TokenInfo, free_port, http, root, stack, token_info_at, wait_for};

/// A private fake AWS (moto wrapped by `testenv/fake_aws.py`) that a test may stop and
/// start again, unlike the shared one.
#[derive(Debug)]
pub struct FakeAws {
    pub port: u16,
    pub public_port: u16,
    ttl: Option<String>,
    child: Option<std::process::Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeAws {
    /// Starts one; `ttl` sets `REGCRED_TEST_TOKEN_TTL` (default 12h).
    pub fn start(ttl: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut aws = Self {
            port: free_port(),
            public_port: free_port(),
            ttl: ttl.map(str::to_owned),
            child: None,
            log: dir.path().join("fake_aws.log"),
            _dir: dir,
        };
        aws.resume();
        aws
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn public_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.public_port)
    }

    /// Starts it again on the same ports after [`FakeAws::stop`], and waits until it answers.
    pub fn resume(&mut self) {
        let s = stack();
        let python = Path::new(s.var("REGCRED_TEST_VENV")).join("bin/python");
        let mut cmd = Command::new(python);
        cmd.arg(s.root.join("testenv/fake_aws.py"))
            .args([
                "--port",
                &self.port.to_string(),
                "--public-port",
                &self.public_port.to_string(),
            ])
            .arg("--log")
            .arg(&self.log);
        if let Some(ttl) = &self.ttl {
            cmd.env("REGCRED_TEST_TOKEN_TTL", ttl);
        }
        self.child = Some(cmd.spawn().expect("start fake_aws.py"));
        let start = Instant::now();
        let health = format!("127.0.0.1:{}", self.port);
        while std::net::TcpStream::connect(&health).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", self.public_port)).is_err()
        {
            assert!(
                start.elapsed() < Duration::from_mins(1),
                "fake_aws.py did not start; see {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills it: its endpoints refuse connections until [`FakeAws::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn calls(&self, key: &str) -> HashMap<String, u64> {
        serde_json::from_str(&http(
            "GET",
            &format!("{}/_regcred/calls?key={key}", self.endpoint()),
            None,
        ))
        .unwrap()
    }

    /// What this instance knows of a registry password it issued (see [`Stack::token_info`]).
    pub fn token_info(&self, password: &str) -> Option<TokenInfo> {
        token_info_at(&format!("{}/_regcred", self.endpoint()), password)
    }
}

impl Drop for FakeAws {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `regcred run` process, its admin port, and its stderr log.
#[derive(Debug)]
pub struct Running {
    pub child: std::process::Child,
    pub admin: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Starts `cmd` (a `regcred(...)` command) as `regcred run` with these extra arguments
    /// and a free admin port.
    pub fn start(mut cmd: Command, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("regcred.log");
        let admin = free_port();
        let child = cmd
            .arg("run")
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start regcred run");
        Self {
            child,
            admin,
            log,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the admin port: status code and body (`None` when it does not answer).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.admin)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Some((code, body))
    }

    /// A sample of `/metrics` (the sum over all label sets of that name), 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        let Some((200, text)) = self.get("/metrics") else {
            return f64::NAN;
        };
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(series, _)| *series == name || series.starts_with(&format!("{name}{{")))
            .filter_map(|(_, v)| v.parse::<f64>().ok())
            .sum()
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.get("/readyz"), Some((200, _)))
    }

    /// Waits until `/readyz` answers 200; how long that took.
    pub async fn wait_ready(&self, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        wait_for("regcred run to be ready", timeout, || async {
            self.is_ready().then_some(())
        })
        .await;
        let took = t0.elapsed();
        #[allow(clippy::print_stderr)] // What a test reports.
        {
            eprintln!("ready after {took:?}");
        }
        took
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its status and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some((status, start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log_text();
            // Keep the whole log where CI (and a person) can read it.
            let keep = root().join("target/test-logs");
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::write(keep.join(format!("regcred-run-{}.log", self.admin)), &log);
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            #[allow(clippy::print_stderr)] // What a failing test leaves to read.
            {
                eprintln!(
                    "--- regcred run (admin port {}) log tail ---\n{}",
                    self.admin,
                    tail.join("\n")
                );
            }
        }
    }
}

/// `regcred run --config CONFIG --lease-namespace <who's namespace> ARGS...` as `who`.
pub fn run_as(who: &Identity, config: &Path, args: &[&str]) -> Running {
    let (cmd, _key) = super::regcred(who);
    let mut all = vec![
        "--config",
        config.to_str().unwrap(),
        "--lease-namespace",
        &who.namespace,
    ];
    all.extend_from_slice(args);
    Running::start(cmd, &all)
}
