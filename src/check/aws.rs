//! The AWS rows: the identity regcred runs as and a token from each source.

use super::Check;
use crate::config::Config;
use crate::ecr::Tokens;
use crate::registry::{Endpoint, TokenSource};
use crate::secrets::format_time;

fn token_hint(source: &TokenSource) -> String {
    let base = match source.endpoint {
        Endpoint::Public => {
            "the AWS identity needs ecr-public:GetAuthorizationToken and sts:GetServiceBearerToken \
             (ECR Public is served from us-east-1)"
        }
        Endpoint::Private { .. } => {
            "the AWS identity needs ecr:GetAuthorizationToken, and the ECR API of that region must \
             be reachable (VPC endpoint or NAT)"
        }
    };
    match &source.role {
        Some(role) => format!(
            "{base}; it must also be allowed sts:AssumeRole on {} and be trusted by that role",
            role.arn
        ),
        None => base.to_owned(),
    }
}

pub(super) async fn aws_checks(config: &Config) -> Vec<Check> {
    let tokens = Tokens::from_env().await;
    let sources = config.token_sources();
    let (identity, fetched) = tokio::join!(tokens.identity(), tokens.fetch_all(&sources));
    let mut checks = vec![match identity {
        Ok(arn) => Check::pass("aws identity", arn),
        Err(e) => Check::fail(
            "aws identity",
            crate::chain(&e),
            "no usable AWS credentials: give the pod an IRSA role annotation or an EKS Pod \
             Identity association, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE",
        ),
    }];
    for (source, result) in fetched {
        let hosts: Vec<String> = config
            .secrets
            .iter()
            .flat_map(|s| &s.registries)
            .filter(|r| r.token_source() == source)
            .map(|r| r.registry.host().to_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let name = format!("token {source}");
        checks.push(match result {
            Ok(token) => Check::pass(
                name,
                format!(
                    "expires {} (for {})",
                    format_time(token.expires_at),
                    hosts.join(", ")
                ),
            ),
            Err(e) => Check::fail(name, crate::chain(&e), token_hint(&source)),
        });
    }
    checks
}
