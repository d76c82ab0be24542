//! Private clusters: an etcd and kube-apiserver of a test's own, for faults that would
//! disturb the shared stack.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Identity, client_from, free_port, root, stack, stderr, stdout, unique};

/// A second kube-apiserver on the stack's etcd (same data, like an HA control plane), that
/// a test may kill and start again without disturbing other tests.
#[derive(Debug)]
pub struct PrivateApiserver {
    pub port: u16,
    child: Option<std::process::Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PrivateApiserver {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self {
            port: free_port(),
            child: None,
            log: dir.path().join("apiserver.log"),
            _dir: dir,
        };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// (Re)starts it and waits until `/readyz` answers.
    pub fn resume(&mut self) {
        let s = stack();
        let child = Command::new(s.root.join("testenv/start-apiserver.sh"))
            .arg(self.port.to_string())
            .arg("/registry")
            .arg(s.var("REGCRED_TEST_STATE"))
            .env("REGCRED_TEST_BIN", s.var("REGCRED_TEST_BIN"))
            .env("REGCRED_TEST_ETCD", s.var("REGCRED_TEST_ETCD"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .expect("start kube-apiserver");
        self.child = Some(child);
        wait_apiserver_ready(&self.url(), &self.log, Duration::from_mins(3));
    }

    /// Freezes it (SIGSTOP): connections are accepted by the kernel but never answered,
    /// like a hung control plane, until [`PrivateApiserver::thaw`].
    pub fn freeze(&self) {
        self.send("STOP");
    }

    pub fn thaw(&self) {
        self.send("CONT");
    }

    fn send(&self, signal: &str) {
        let child = self.child.as_ref().expect("the API server is running");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// Kills it (SIGKILL): clients see connections refused until [`PrivateApiserver::resume`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateApiserver {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let keep = root().join("target/test-logs");
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(
                &self.log,
                keep.join(format!("kube-apiserver-{}.log", self.port)),
            );
        }
    }
}

/// A copy of a kubeconfig that talks to another server.
pub fn kubeconfig_for_server(kubeconfig: &Path, server: &str, dir: &Path) -> PathBuf {
    let path = dir.join(format!("kubeconfig-{}", unique("srv")));
    write_kubeconfig_for_server(kubeconfig, server, &path);
    path
}

/// Writes to `to` the kubeconfig at `from` with every `server:` set to `server`.
fn write_kubeconfig_for_server(from: &Path, server: &str, to: &Path) {
    let text = std::fs::read_to_string(from)
        .unwrap_or_else(|e| panic!("read kubeconfig {}: {e}", from.display()));
    let rewritten: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("server:") {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}server: {server}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(to, rewritten).unwrap();
}

/// `curl` for a GET of `url` with the stack's CA and admin certificate, giving up after
/// `max_secs`.
fn admin_curl(url: &str, max_secs: u32) -> Command {
    let pki = Path::new(stack().var("REGCRED_TEST_STATE")).join("pki");
    let mut curl = Command::new("curl");
    curl.args(["-sf", "--max-time", &max_secs.to_string(), "--cacert"])
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("admin.crt"))
        .arg("--key")
        .arg(pki.join("admin.key"))
        .arg(url);
    curl
}

/// A log file a restarted process appends to.
fn append_log(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Waits until a kube-apiserver on `url` answers `/readyz` to the admin certificate.
fn wait_apiserver_ready(url: &str, log: &Path, timeout: Duration) {
    let start = Instant::now();
    loop {
        let ok = admin_curl(&format!("{url}/readyz"), 2)
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "kube-apiserver on {url} not ready after {timeout:?}; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A cluster of its own: a private etcd (data in a temp dir) and a kube-apiserver on it,
/// trusting the stack's CA and admin certificate. A fresh, empty cluster: it can be filled
/// with thousands of namespaces without making the shared stack's lists longer, its etcd
/// and API server can be stopped and started again, and everything it held goes when it
/// is dropped.
#[derive(Debug)]
pub struct PrivateCluster {
    pub etcd_port: u16,
    etcd_peer_port: u16,
    pub port: u16,
    apiserver_flags: Vec<String>,
    etcd: Option<std::process::Child>,
    apiserver: Option<std::process::Child>,
    admin_kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

impl PrivateCluster {
    /// Starts etcd, then the API server with these extra flags, and waits until it is ready.
    pub fn start(apiserver_flags: &[String]) -> Self {
        let s = stack();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin_kubeconfig = dir.path().join("admin.kubeconfig");
        write_kubeconfig_for_server(
            Path::new(s.var("KUBECONFIG")),
            &format!("https://127.0.0.1:{port}"),
            &admin_kubeconfig,
        );
        let mut cluster = Self {
            etcd_port: free_port(),
            etcd_peer_port: free_port(),
            port,
            apiserver_flags: apiserver_flags.to_vec(),
            etcd: None,
            apiserver: None,
            admin_kubeconfig,
            dir,
        };
        cluster.resume_etcd();
        cluster.resume_apiserver();
        cluster
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A folder that lives as long as the cluster (logs are written there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An admin (system:masters) kubeconfig for this cluster.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    pub async fn admin(&self) -> kube::Client {
        client_from(&self.admin_kubeconfig).await
    }

    /// Points an identity (made on this cluster, e.g. by [`chart_identity`]) at this
    /// cluster's API server: its kubeconfig is rewritten in place.
    pub fn point_at_me(&self, who: &Identity) {
        let text = std::fs::read_to_string(&who.kubeconfig).unwrap();
        let rewritten = text.replace(stack().var("REGCRED_TEST_APISERVER"), &self.url());
        std::fs::write(&who.kubeconfig, rewritten).unwrap();
    }

    pub fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver.as_ref().map(std::process::Child::id)
    }

    /// (Re)starts etcd on the same ports and data, and waits until it answers `/health`.
    pub fn resume_etcd(&mut self) {
        let s = stack();
        let log = self.dir.path().join("etcd.log");
        let child = Command::new(s.root.join("testenv/start-etcd.sh"))
            .arg(self.etcd_port.to_string())
            .arg(self.etcd_peer_port.to_string())
            .arg(self.dir.path().join("etcd"))
            .env("REGCRED_TEST_BIN", s.var("REGCRED_TEST_BIN"))
            .stdout(std::process::Stdio::null())
            .stderr(append_log(&log))
            .spawn()
            .expect("start etcd");
        self.etcd = Some(child);
        let start = Instant::now();
        loop {
            let healthy = Command::new("curl")
                .args(["-sf", "--max-time", "2"])
                .arg(format!("http://127.0.0.1:{}/health", self.etcd_port))
                .output()
                .is_ok_and(|o| o.status.success() && stdout(&o).contains("true"));
            if healthy {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_mins(1),
                "private etcd not healthy; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills etcd (SIGKILL); its data stays for [`PrivateCluster::resume_etcd`].
    pub fn stop_etcd(&mut self) {
        if let Some(mut child) = self.etcd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the API server and waits until `/readyz` answers.
    pub fn resume_apiserver(&mut self) {
        let s = stack();
        let log = self.dir.path().join("apiserver.log");
        let child = Command::new(s.root.join("testenv/start-apiserver.sh"))
            .arg(self.port.to_string())
            .arg("/registry")
            .arg(s.var("REGCRED_TEST_STATE"))
            .args(&self.apiserver_flags)
            .env("REGCRED_TEST_BIN", s.var("REGCRED_TEST_BIN"))
            .env(
                "REGCRED_TEST_ETCD",
                format!("http://127.0.0.1:{}", self.etcd_port),
            )
            .stdout(std::process::Stdio::null())
            .stderr(append_log(&log))
            .spawn()
            .expect("start kube-apiserver");
        self.apiserver = Some(child);
        wait_apiserver_ready(&self.url(), &log, Duration::from_mins(3));
    }

    /// Kills the API server (SIGKILL).
    pub fn kill_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The API server's `/metrics` text, read with the admin certificate.
    pub fn apiserver_metrics(&self) -> String {
        let out = admin_curl(&format!("{}/metrics", self.url()), 30)
            .output()
            .expect("run curl");
        assert!(out.status.success(), "GET /metrics: {}", stderr(&out));
        stdout(&out)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.kill_apiserver();
        self.stop_etcd();
    }
}
