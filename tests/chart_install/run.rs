//! `regcred run` as the installed chart's ServiceAccount.

use std::io::{Read as _, Write as _};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, DeleteParams};

use super::*;

/// A `regcred run` process; killed on drop.
struct Controller {
    child: std::process::Child,
    admin_port: u16,
    log: tempfile::NamedTempFile,
}

impl Controller {
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.admin_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        Some((
            code,
            response
                .split_once("\r\n\r\n")
                .map_or("", |(_, b)| b)
                .to_owned(),
        ))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn regcred_run_does_its_job_as_the_charts_service_account() {
    let it = install_for_test("controller", &["default"]).await;
    let admin = &it.admin;
    let a = it.ns("a");
    create_namespace(admin, &a, &[]).await;
    create_service_account(admin, &a, "default", &[]).await;

    // The Deployment's own command line, with the chart's Lease name; the namespace and
    // identity come as the downward API would give them.
    let deployment = Api::<Deployment>::namespaced(admin.clone(), &it.release)
        .get(&it.release)
        .await
        .unwrap();
    let args = deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    let admin_port = free_port();
    let args: Vec<String> = args
        .into_iter()
        .map(|a| match a.as_str() {
            "/etc/regcred/config.yaml" => it.config.to_str().unwrap().to_owned(),
            "0.0.0.0:8080" => format!("127.0.0.1:{admin_port}"),
            _ => a,
        })
        .collect();
    let log = tempfile::NamedTempFile::new().unwrap();
    let (mut cmd, _key) = regcred(&it.who);
    let child = cmd
        .args(&args)
        .env("POD_NAMESPACE", &it.release)
        .env("POD_NAME", format!("{}-0", it.release))
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .expect("start regcred run");
    let run = Controller {
        child,
        admin_port,
        log,
    };

    wait_for(
        "the controller to be ready",
        Duration::from_mins(1),
        || async { matches!(run.get("/readyz"), Some((200, _))).then_some(()) },
    )
    .await;
    assert!(
        get_secret(admin, &a, &it.secret).await.is_some(),
        "{}",
        run.log()
    );

    // It holds the chart's Lease, in its own namespace.
    let lease = wait_for("the Lease", Duration::from_secs(30), || async {
        Api::<Lease>::namespaced(admin.clone(), &it.release)
            .get_opt("regcred")
            .await
            .unwrap()
    })
    .await;
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some(format!("{}-0", it.release).as_str())
    );

    // A new namespace, through its watch; then drift, through the secrets watch.
    let b = it.ns("b");
    create_namespace(admin, &b, &[]).await;
    create_service_account(admin, &b, "default", &[]).await;
    wait_for(
        "the secret in a new namespace",
        Duration::from_secs(30),
        || async { get_secret(admin, &b, &it.secret).await },
    )
    .await;
    wait_for(
        "the ServiceAccount reference",
        Duration::from_secs(30),
        || async {
            let sa = Api::<ServiceAccount>::namespaced(admin.clone(), &b)
                .get("default")
                .await
                .unwrap();
            sa.image_pull_secrets
                .filter(|r| r.iter().any(|r| r.name == it.secret))
        },
    )
    .await;
    Api::<Secret>::namespaced(admin.clone(), &a)
        .delete(&it.secret, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "the deleted secret to come back",
        Duration::from_secs(30),
        || async { get_secret(admin, &a, &it.secret).await },
    )
    .await;

    let (_, metrics) = run.get("/metrics").expect("metrics");
    let leader = metrics
        .lines()
        .find_map(|l| l.strip_prefix("regcred_leader "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(leader, Some(1.0), "{metrics}");
    let log = run.log();
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
}
