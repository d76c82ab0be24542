//! `regcred render`: the `.dockerconfigjson`, or a Secret manifest, on stdout. Nothing is
//! written to the cluster.

use clap::{Args, ValueEnum};
use jiff::Timestamp;

use crate::config::{ConfigArgs, SecretConfig};
use crate::ecr::Tokens;
use crate::reconcile::{self, Freshness, Step, TokenView};
use crate::{Error, Exit};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The `.dockerconfigjson` document.
    #[default]
    Dockerconfigjson,
    /// A `kubernetes.io/dockerconfigjson` Secret manifest (YAML).
    Secret,
}

#[derive(Args, Clone, Debug)]
pub struct RenderArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// What to print.
    #[arg(long, value_enum, default_value_t = Format::Dockerconfigjson)]
    pub format: Format,
    /// Namespace of the Secret manifest.
    #[arg(
        long = "target-namespace",
        env = "REGCRED_TARGET_NAMESPACE",
        default_value = "default",
        value_name = "NAMESPACE"
    )]
    pub target_namespace: String,
    /// Which configured secret to render, when the configuration has several.
    #[arg(long, value_name = "NAME")]
    pub secret: Option<String>,
}

pub async fn run(args: &RenderArgs) -> Result<Exit, Error> {
    let config = args.config.load()?;
    let spec = pick(&config.secrets, args.secret.as_deref())?;
    let tokens = Tokens::from_env().await;
    let mut view = TokenView::default();
    for (source, result) in tokens.fetch_all(&config.token_sources()).await {
        view.tokens.insert(source, result?);
    }
    let step = reconcile::plan(
        spec,
        &args.target_namespace,
        None,
        &view,
        Timestamp::now(),
        config.refresh.before,
        Freshness::Exact,
    );
    let Step::Apply { secret, .. } = step else {
        return Err(Error::Other(format!(
            "nothing to render for secret {}",
            spec.name
        )));
    };
    let text = match args.format {
        Format::Dockerconfigjson => {
            let bytes = &secret
                .data
                .as_ref()
                .and_then(|d| d.get(crate::secrets::DATA_KEY))
                .expect("rendered")
                .0;
            let mut text = String::from_utf8_lossy(bytes).into_owned();
            text.push('\n');
            text
        }
        Format::Secret => {
            let mut manifest =
                serde_json::to_value(&*secret).map_err(|e| Error::Other(e.to_string()))?;
            if let Some(obj) = manifest.as_object_mut() {
                obj.insert("apiVersion".into(), "v1".into());
                obj.insert("kind".into(), "Secret".into());
            }
            serde_saphyr::to_string(&manifest).map_err(|e| Error::Other(e.to_string()))?
        }
    };
    crate::write_stdout(&mut std::io::stdout().lock(), &text)?;
    Ok(Exit::Ok)
}

fn pick<'a>(secrets: &'a [SecretConfig], name: Option<&str>) -> Result<&'a SecretConfig, Error> {
    match (name, secrets) {
        (None, [only]) => Ok(only),
        (None, _) => Err(Error::Usage(
            "the configuration has several secrets; choose one with --secret NAME".into(),
        )),
        (Some(name), _) => {
            let mut matching = secrets.iter().filter(|s| s.name.as_str() == name);
            match (matching.next(), matching.next()) {
                (Some(s), None) => Ok(s),
                (Some(_), Some(_)) => Err(Error::Usage(format!(
                    "several configured secrets are named {name}; render from a file holding one"
                ))),
                (None, _) => Err(Error::Usage(format!(
                    "no configured secret is named {name}"
                ))),
            }
        }
    }
}
