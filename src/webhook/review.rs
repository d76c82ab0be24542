//! The `admission.k8s.io/v1` `AdmissionReview` wire format: reading a request (with a clear
//! error naming what is wrong) and writing the answer, always "allowed", with a JSON Patch
//! when there is one.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::admission::Pod;

/// The one review version regcred answers (the chart registers only it).
pub const API_VERSION: &str = "admission.k8s.io/v1";
const KIND: &str = "AdmissionReview";

/// Why a request body is not an AdmissionReview regcred can answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    #[error("request body is not JSON: {0}")]
    Json(String),
    #[error("request body is not an AdmissionReview: {0}")]
    Shape(String),
    #[error(
        "AdmissionReview apiVersion is {0}; regcred answers {API_VERSION} (list only v1 in the webhook's admissionReviewVersions)"
    )]
    ApiVersion(String),
    #[error("kind is {0}; expected {KIND}")]
    Kind(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("request.uid is empty")]
    NoUid,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<Request>,
}

/// The parts of an admission request regcred reads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub uid: String,
    #[serde(default)]
    pub kind: Kind,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub object: Option<Pod>,
}

/// The kind of the object under review.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Kind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub kind: String,
}

/// Reads an AdmissionReview; the error names what is wrong (with the JSON path of a
/// field of the wrong type).
pub fn parse_review(body: &[u8]) -> Result<Request, ReviewError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ReviewError::Json(e.to_string()))?;
    if !value.is_object() {
        return Err(ReviewError::Shape("not a JSON object".into()));
    }
    let review: Review = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ReviewError::Shape(format!("{path}: {}", e.into_inner()))
    })?;
    let shown = |v: Option<String>| v.map_or_else(|| "missing".to_owned(), |s| format!("{s:?}"));
    if review.api_version.as_deref() != Some(API_VERSION) {
        return Err(ReviewError::ApiVersion(shown(review.api_version)));
    }
    if review.kind.as_deref() != Some(KIND) {
        return Err(ReviewError::Kind(shown(review.kind)));
    }
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    if request.uid.is_empty() {
        return Err(ReviewError::NoUid);
    }
    Ok(request)
}

/// The AdmissionReview answer: always allowed; with the patch when there is one.
#[must_use]
pub fn response(uid: &str, patch: &[Value]) -> String {
    let mut response = json!({"uid": uid, "allowed": true});
    if !patch.is_empty() {
        let bytes = serde_json::to_vec(patch).unwrap_or_default();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    json!({"apiVersion": API_VERSION, "kind": KIND, "response": response}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_reviews_say_what_is_wrong() {
        let err = |body: &str| parse_review(body.as_bytes()).unwrap_err().to_string();
        assert!(err("").starts_with("request body is not JSON"));
        assert!(err("[1]").contains("not a JSON object"));
        assert!(err(r#"{"kind": "AdmissionReview"}"#).contains("apiVersion is missing"));
        assert!(
            err(r#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}"#)
                .contains("\"admission.k8s.io/v1beta1\"; regcred answers admission.k8s.io/v1")
        );
        assert!(
            err(r#"{"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}"#)
                .contains("kind is \"Pod\"")
        );
        assert_eq!(
            err(r#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#),
            "AdmissionReview has no request"
        );
        assert_eq!(
            err(
                r#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": ""}}"#
            ),
            "request.uid is empty"
        );
        let typed = err(
            r#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u", "object": {"spec": {"containers": [{"image": 7}]}}}}"#,
        );
        assert!(
            typed.contains("request.object.spec.containers[0].image: invalid type: integer `7`"),
            "{typed}"
        );
    }

    #[test]
    fn the_response_carries_the_uid_and_a_base64_json_patch() {
        let ops = vec![
            json!({"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "ecr"}]}),
        ];
        let r: Value = serde_json::from_str(&response("u-1", &ops)).unwrap();
        assert_eq!(r["apiVersion"], API_VERSION);
        assert_eq!(r["kind"], "AdmissionReview");
        assert_eq!(r["response"]["uid"], "u-1");
        assert_eq!(r["response"]["allowed"], true);
        assert_eq!(r["response"]["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(r["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(serde_json::from_slice::<Vec<Value>>(&bytes).unwrap(), ops);
        let plain: Value = serde_json::from_str(&response("u-2", &[])).unwrap();
        assert_eq!(plain["response"], json!({"uid": "u-2", "allowed": true}));
    }
}
