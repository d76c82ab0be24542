//! What `regcred check` says about the webhook: registered, its CA current, reachable, and
//! the permissions it needs.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::WebhookArgs;
use super::keeper::material_of;
use super::pki;
use crate::check::{Check, Permission};
use crate::config::Config;
use crate::secrets::{API_TIMEOUT, format_time};

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

fn pass(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_owned(),
        ok: true,
        detail: detail.into(),
        hint: None,
    }
}

fn fail(name: &str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
    Check {
        name: name.to_owned(),
        ok: false,
        detail: detail.into(),
        hint: Some(hint.into()),
    }
}

/// The permissions the webhook needs: its configuration's `caBundle` and its Secret, both
/// by name — none when it is off or its certificate comes from files.
#[must_use]
pub fn permissions(config: &Config, args: &WebhookArgs, namespace: &str) -> Vec<Permission> {
    if !config.webhook.enabled || args.webhook_cert_dir.is_some() {
        return Vec::new();
    }
    let mut needed: Vec<Permission> = ["get", "list", "watch", "patch"]
        .into_iter()
        .map(|verb| Permission {
            group: "admissionregistration.k8s.io",
            resource: "mutatingwebhookconfigurations",
            verb,
            name: Some(args.webhook_configuration.clone()),
            namespace: None,
        })
        .collect();
    needed.push(Permission {
        group: "",
        resource: "secrets",
        verb: "create",
        name: None,
        namespace: Some(namespace.to_owned()),
    });
    for verb in ["get", "list", "watch", "update"] {
        needed.push(Permission {
            group: "",
            resource: "secrets",
            verb,
            name: Some(args.webhook_secret.clone()),
            namespace: Some(namespace.to_owned()),
        });
    }
    needed
}

/// Where the API server calls a webhook: host (also the TLS name), port, path.
fn target(webhook: &MutatingWebhook) -> Option<(String, u16, String)> {
    let cc = &webhook.client_config;
    if let Some(url) = &cc.url {
        let rest = url.strip_prefix("https://")?;
        let (authority, path) = rest
            .split_once('/')
            .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h.trim_matches(['[', ']']).to_owned(), p.parse().ok()?)
            }
            _ => (authority.to_owned(), 443),
        };
        return Some((host, port, path));
    }
    let svc = cc.service.as_ref()?;
    Some((
        format!("{}.{}.svc", svc.name, svc.namespace),
        u16::try_from(svc.port.unwrap_or(443)).ok()?,
        svc.path.clone().unwrap_or_else(|| "/".into()),
    ))
}

/// The `caBundle` of the first webhook, as PEM text.
fn ca_bundle(webhook: &MutatingWebhook) -> String {
    webhook
        .client_config
        .ca_bundle
        .as_ref()
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

fn registered(config: &MutatingWebhookConfiguration, name: &str) -> Check {
    const ROW: &str = "webhook registered";
    let webhooks = config.webhooks.clone().unwrap_or_default();
    let Some(first) = webhooks.first() else {
        return fail(
            ROW,
            format!("mutatingwebhookconfiguration {name} has no webhooks"),
            "render it from the chart (webhook.enabled: true)",
        );
    };
    let for_pods = webhooks.iter().all(|w| {
        w.rules.iter().flatten().any(|r| {
            r.operations
                .iter()
                .flatten()
                .any(|o| o == "CREATE" || o == "*")
                && r.resources
                    .iter()
                    .flatten()
                    .any(|x| x == "pods" || x == "*")
        })
    });
    let open = webhooks
        .iter()
        .all(|w| w.failure_policy.as_deref() == Some("Ignore"));
    let calls = target(first).map_or_else(
        || "no usable clientConfig".to_owned(),
        |(h, p, path)| format!("https://{h}:{p}{path}"),
    );
    if !for_pods {
        return fail(
            ROW,
            format!("{name} has no rule for pods CREATE"),
            "render it from the chart",
        );
    }
    if !open {
        return fail(
            ROW,
            format!("{name}: failurePolicy is not Ignore"),
            "set failurePolicy: Ignore (the chart does): with Fail, pods cannot be created while regcred is down",
        );
    }
    pass(
        ROW,
        format!(
            "{name}: {} webhook(s), pods CREATE, failurePolicy Ignore, calls {calls}",
            webhooks.len()
        ),
    )
}

/// The published CAs are valid, and (with regcred's own certificate) the Secret's serving
/// certificate is signed by one of them.
fn ca_current(bundle_pem: &str, secret: Option<&Secret>, own: bool) -> Check {
    const ROW: &str = "webhook CA current";
    let now = jiff::Timestamp::now();
    let bundle = match pki::bundle(bundle_pem, "caBundle") {
        Ok(b) => b,
        Err(_) if bundle_pem.trim().is_empty() => {
            return fail(
                ROW,
                "caBundle is empty",
                if own {
                    "regcred run fills it within seconds of starting; if it stays empty, see its log (it needs patch on this mutatingwebhookconfiguration)"
                } else {
                    "with --webhook-cert-dir another tool fills it: cert-manager's CA injector does, given the annotation cert-manager.io/inject-ca-from"
                },
            );
        }
        Err(e) => {
            return fail(
                ROW,
                crate::chain(&e),
                "put the CA's PEM certificate in caBundle",
            );
        }
    };
    let live: Vec<_> = bundle.iter().filter(|f| f.not_after > now).collect();
    let Some(latest) = live.iter().map(|f| f.not_after).max() else {
        return fail(ROW, "every CA in caBundle has expired", "renew the CA");
    };
    let mut detail = format!(
        "{} CA(s), trusted until {}",
        live.len(),
        format_time(latest)
    );
    if own {
        let Some(material) = secret.and_then(material_of) else {
            return fail(
                ROW,
                format!("{detail}; regcred's webhook Secret is missing or incomplete"),
                "regcred run makes it at start; check its log",
            );
        };
        let Ok(serving) = pki::facts(&material.serving.cert, "serving certificate") else {
            return fail(
                ROW,
                format!("{detail}; the Secret's serving certificate does not parse"),
                "delete the Secret: regcred makes a new one",
            );
        };
        if !live.iter().any(|f| f.subject == serving.issuer) {
            return fail(
                ROW,
                format!(
                    "{detail}; the serving certificate's CA ({}) is not among them",
                    serving.issuer
                ),
                "regcred publishes its CA within seconds; if this stays, something else writes caBundle (a GitOps tool?): leave caBundle out of the manifests",
            );
        }
        if serving.not_after <= now {
            return fail(
                ROW,
                format!(
                    "{detail}; the serving certificate expired {}",
                    format_time(serving.not_after)
                ),
                "regcred renews it well before; check its log",
            );
        }
        write!(
            detail,
            "; serving certificate valid until {}",
            format_time(serving.not_after)
        )
        .ok();
    }
    pass(ROW, detail)
}

/// Sends one AdmissionReview the way the API server does, trusting only `caBundle`.
async fn probe(host: &str, port: u16, path: &str, bundle_pem: &str) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()).flatten() {
        let _ = roots.add(der);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))?;
    let uid = format!("regcred-check-{:08x}", rand::random::<u32>());
    let body = serde_json::json!({
        "apiVersion": super::review::API_VERSION, "kind": "AdmissionReview",
        "request": {
            "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "kube-system", "operation": "CREATE",
            "object": {"metadata": {"name": "regcred-check"}, "spec": {"containers": []}},
        },
    })
    .to_string();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
        let mut stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}:{port}, trusting only caBundle: {e}"))?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer from {host}:{port} within {PROBE_TIMEOUT:?}"))??;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        return Err(format!("HTTP {status}: {}", body.trim()));
    }
    let answer: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    if answer["response"]["uid"] != uid || answer["response"]["allowed"] != true {
        return Err(format!("the answer is not this review's: {answer}"));
    }
    Ok(format!("https://{host}:{port}{path} answered"))
}

async fn reachable(webhook: &MutatingWebhook, bundle_pem: &str) -> Check {
    const ROW: &str = "webhook reachable";
    let Some((host, port, path)) = target(webhook) else {
        return fail(
            ROW,
            "no usable clientConfig (url or service)",
            "render it from the chart",
        );
    };
    match probe(&host, port, &path, bundle_pem).await {
        Ok(detail) => pass(ROW, detail),
        Err(why) => {
            let hint = if why.contains("TLS") && !why.contains("connect to") {
                "the certificate served is not signed by a CA in caBundle, or not for this name: see 'webhook CA current'"
            } else if host.rsplit('.').next() == Some("svc") && why.contains("connect to") {
                "a Service name resolves only inside the cluster: run check there (kubectl -n <namespace> exec deploy/<release> -- regcred check); \
                 otherwise no ready replica serves the webhook (is regcred running with webhook.enabled: true?)"
            } else {
                "no replica answers: is regcred running with webhook.enabled: true, and is it ready? Pods are still created meanwhile (failurePolicy Ignore), without the pull secret"
            };
            fail(ROW, why, hint)
        }
    }
}

/// The webhook's rows: nothing when it is off.
pub async fn checks(config: &Config, args: &WebhookArgs, namespace: &str) -> Vec<Check> {
    if !config.webhook.enabled {
        return Vec::new();
    }
    let name = &args.webhook_configuration;
    let client = match crate::k8s::client().await {
        Ok(c) => c,
        Err(e) => {
            return vec![fail(
                "webhook registered",
                crate::chain(&e),
                "see the kubernetes row",
            )];
        }
    };
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let found = match tokio::time::timeout(API_TIMEOUT, api.get_opt(name)).await {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => {
            return vec![fail(
                "webhook registered",
                format!("mutatingwebhookconfiguration {name} not found"),
                "install the chart with webhook.enabled: true (it renders it), or give --webhook-configuration its name",
            )];
        }
        Ok(Err(e)) => {
            return vec![fail(
                "webhook registered",
                format!(
                    "get mutatingwebhookconfiguration {name}: {}",
                    crate::chain(&e)
                ),
                "this identity needs get on it (the chart grants it by name)",
            )];
        }
        Err(_) => {
            return vec![fail(
                "webhook registered",
                format!("no answer within {API_TIMEOUT:?}"),
                "check the connection",
            )];
        }
    };
    let mut rows = vec![registered(&found, name)];
    let Some(first) = found.webhooks.as_ref().and_then(|w| w.first()) else {
        return rows;
    };
    let bundle = ca_bundle(first);
    let own = args.webhook_cert_dir.is_none();
    let secret = if own {
        tokio::time::timeout(
            API_TIMEOUT,
            Api::<Secret>::namespaced(client, namespace).get_opt(&args.webhook_secret),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
    } else {
        None
    };
    rows.push(ca_current(&bundle, secret.as_ref(), own));
    rows.push(reachable(first, &bundle).await);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::{ServiceReference, WebhookClientConfig};

    fn webhook(cc: WebhookClientConfig) -> MutatingWebhook {
        MutatingWebhook {
            client_config: cc,
            ..MutatingWebhook::default()
        }
    }

    #[test]
    fn targets_come_from_a_url_or_a_service() {
        let url = webhook(WebhookClientConfig {
            url: Some("https://127.0.0.1:9443/mutate".into()),
            ..WebhookClientConfig::default()
        });
        assert_eq!(
            target(&url),
            Some(("127.0.0.1".into(), 9443, "/mutate".into()))
        );
        let bare = webhook(WebhookClientConfig {
            url: Some("https://hooks.example".into()),
            ..WebhookClientConfig::default()
        });
        assert_eq!(
            target(&bare),
            Some(("hooks.example".into(), 443, "/".into()))
        );
        let svc = webhook(WebhookClientConfig {
            service: Some(ServiceReference {
                name: "regcred-webhook".into(),
                namespace: "regcred".into(),
                path: Some("/mutate".into()),
                port: Some(443),
            }),
            ..WebhookClientConfig::default()
        });
        assert_eq!(
            target(&svc),
            Some(("regcred-webhook.regcred.svc".into(), 443, "/mutate".into()))
        );
    }

    #[test]
    fn the_ca_is_current_only_when_it_signed_the_served_certificate() {
        let now = jiff::Timestamp::now();
        let policy = super::super::rotation::Policy {
            hosts: ["a.example".to_owned()].into(),
            lifetime: jiff::SignedDuration::from_hours(1),
        };
        let m = super::super::rotation::execute(
            None,
            &[super::super::rotation::Step::Bootstrap],
            &policy,
            now,
        )
        .unwrap();
        let secret = Secret {
            data: Some(
                [
                    ("tls.crt", m.serving.cert.clone()),
                    (
                        "tls.key",
                        secrecy::ExposeSecret::expose_secret(&m.serving.key).to_owned(),
                    ),
                    ("ca.crt", m.bundle_pem()),
                    ("ca-signer.crt", m.signer.cert.clone()),
                    (
                        "ca-signer.key",
                        secrecy::ExposeSecret::expose_secret(&m.signer.key).to_owned(),
                    ),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), k8s_openapi::ByteString(v.into_bytes())))
                .collect(),
            ),
            ..Secret::default()
        };
        assert!(ca_current(&m.bundle_pem(), Some(&secret), true).ok);
        let other = pki::new_ca(now, jiff::SignedDuration::from_hours(1)).unwrap();
        let wrong = ca_current(&other.cert, Some(&secret), true);
        assert!(
            !wrong.ok && wrong.detail.contains("is not among them"),
            "{wrong:?}"
        );
        assert!(!ca_current("", Some(&secret), true).ok);
        assert!(!ca_current(&m.bundle_pem(), None, true).ok);
        // Files: the bundle alone.
        assert!(ca_current(&other.cert, None, false).ok);
    }
}
