//! `regcred render`: the `.dockerconfigjson`, or Secret manifests in any of the formats, on
//! stdout. Nothing is written to the cluster.

use std::collections::BTreeSet;

use clap::{Args, ValueEnum};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;

use crate::config::{Config, ConfigArgs, SecretConfig, ServiceAccounts};
use crate::ecr::Tokens;
use crate::formats::{self, Format};
use crate::reconcile::{self, Freshness, Step, TokenView};
use crate::{Error, Exit};

/// What `render` prints (`--format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The `.dockerconfigjson` document.
    #[default]
    Dockerconfigjson,
    /// The entry's Secret manifest(s) (YAML), in the entry's own format.
    Secret,
    /// Argo CD repository Secret manifests, one per registry (YAML).
    ArgocdRepository,
    /// Argo CD credential-template (repo-creds) Secret manifests, one per registry (YAML).
    ArgocdRepoCreds,
    /// A `kubernetes.io/basic-auth` Secret manifest (YAML; one registry).
    BasicAuth,
}

impl Output {
    /// The format of the secrets printed, for an entry written in `configured`.
    fn shape(self, configured: Format) -> Format {
        match self {
            Self::Dockerconfigjson => Format::Dockerconfigjson,
            Self::Secret => configured,
            Self::ArgocdRepository => Format::ArgocdRepository,
            Self::ArgocdRepoCreds => Format::ArgocdRepoCreds,
            Self::BasicAuth => Format::BasicAuth,
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct RenderArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// What to print.
    #[arg(long, value_enum, default_value_t = Output::Dockerconfigjson)]
    pub format: Output,
    /// Namespace of the Secret manifests.
    #[arg(
        long = "target-namespace",
        env = "REGCRED_TARGET_NAMESPACE",
        default_value = "default",
        value_name = "NAMESPACE"
    )]
    pub target_namespace: String,
    /// Which configured entry to render (its name, or the name of one of its secrets), when
    /// the configuration has several.
    #[arg(long, value_name = "NAME")]
    pub secret: Option<String>,
}

pub async fn run(args: &RenderArgs) -> Result<Exit, Error> {
    let config = args.config.load()?;
    let entry = pick(&config, args.secret.as_deref())?;
    let shape = args.format.shape(entry.format);
    let chosen = entry.clone();
    let secrets = formats::expand(SecretConfig {
        format: shape,
        // Printed, not applied: which ServiceAccounts would reference it does not matter.
        service_accounts: if shape == entry.format {
            entry.service_accounts
        } else {
            ServiceAccounts::None
        },
        ..entry
    })
    .map_err(|problem| {
        let message = match problem {
            formats::Problem::Registries(m)
            | formats::Problem::Registry(_, m)
            | formats::Problem::ServiceAccounts(m) => m,
        };
        Error::Usage(format!(
            "--format {shape}: secret {}: {message}",
            chosen.name
        ))
    })?;
    let sources: BTreeSet<_> = secrets
        .iter()
        .flat_map(|s| {
            s.registries
                .iter()
                .map(crate::config::RegistryConfig::token_source)
        })
        .collect();
    let tokens = Tokens::from_env().await;
    let mut view = TokenView::default();
    for (source, result) in tokens.fetch_all(&sources).await {
        view.tokens.insert(source, result?);
    }
    let mut rendered = Vec::with_capacity(secrets.len());
    for spec in &secrets {
        rendered.push(planned(&config, spec, &args.target_namespace, &view)?);
    }
    let text = if args.format == Output::Dockerconfigjson {
        let bytes = rendered
            .first()
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(crate::secrets::DATA_KEY))
            .map(|b| b.0.as_slice())
            .unwrap_or_default();
        let mut text = String::from_utf8_lossy(bytes).into_owned();
        text.push('\n');
        text
    } else {
        let mut documents = Vec::with_capacity(rendered.len());
        for secret in &rendered {
            documents.push(manifest(secret)?);
        }
        documents.join("---\n")
    };
    crate::write_stdout(&mut std::io::stdout().lock(), &text)?;
    Ok(Exit::Ok)
}

/// The secret as regcred would create it in `namespace`.
fn planned(
    config: &Config,
    spec: &SecretConfig,
    namespace: &str,
    view: &TokenView,
) -> Result<Secret, Error> {
    let step = reconcile::plan(
        spec,
        namespace,
        None,
        view,
        Timestamp::now(),
        config.refresh.before,
        Freshness::Exact,
    );
    match step {
        Step::Apply { secret, .. } => Ok(*secret),
        _ => Err(Error::Other(format!(
            "nothing to render for secret {}",
            spec.name
        ))),
    }
}

/// A Secret as a YAML manifest.
fn manifest(secret: &Secret) -> Result<String, Error> {
    let mut manifest = serde_json::to_value(secret).map_err(|e| Error::Other(e.to_string()))?;
    if let Some(obj) = manifest.as_object_mut() {
        obj.insert("apiVersion".into(), "v1".into());
        obj.insert("kind".into(), "Secret".into());
    }
    serde_saphyr::to_string(&manifest).map_err(|e| Error::Other(e.to_string()))
}

/// The configured entry to render: the only one, or the one named `name` — by its own
/// name, or by the name of one of its secrets (then that secret's registry alone).
fn pick(config: &Config, name: Option<&str>) -> Result<SecretConfig, Error> {
    let entries: Vec<SecretConfig> = (0..).map_while(|i| config.entry(i)).collect();
    let Some(name) = name else {
        return match entries.as_slice() {
            [only] => Ok(only.clone()),
            _ => Err(Error::Usage(
                "the configuration has several secrets; choose one with --secret NAME".into(),
            )),
        };
    };
    let mut by_entry = entries.iter().filter(|e| e.name.as_str() == name);
    match (by_entry.next(), by_entry.next()) {
        (Some(e), None) => return Ok(e.clone()),
        (Some(_), Some(_)) => {
            return Err(Error::Usage(format!(
                "several configured secrets are named {name}; render from a file holding one"
            )));
        }
        (None, _) => {}
    }
    let mut by_secret = config.secrets.iter().filter(|s| s.name.as_str() == name);
    match (by_secret.next(), by_secret.next()) {
        (Some(s), None) => Ok(SecretConfig {
            name: s.entry_name.clone(),
            ..s.clone()
        }),
        (Some(_), Some(_)) => Err(Error::Usage(format!(
            "several configured secrets are named {name}; render from a file holding one"
        ))),
        (None, _) => Err(Error::Usage(format!(
            "no configured secret is named {name}"
        ))),
    }
}
