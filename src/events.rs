//! Kubernetes Events for what an operator should see: foreign secrets and failures, on the
//! Secret when there is one, else on its Namespace.

use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::Resource as _;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// Event notes are capped by the API server; keep well inside.
const MAX_NOTE: usize = 1000;

/// Publishes Events as the `regcred` controller.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

impl Events {
    #[must_use]
    pub fn new(client: kube::Client) -> Self {
        Self {
            recorder: Recorder::new(client, Reporter::from("regcred")),
        }
    }

    /// A secret of regcred's name that regcred does not manage.
    pub async fn foreign_secret(
        &self,
        ns: &Namespace,
        secret: Option<ObjectReference>,
        name: &str,
    ) {
        let note = format!(
            "Secret {name} exists and was not created by regcred; it is left as it is. \
             Set adopt: true to let regcred take it over."
        );
        self.publish(ns, secret, EventType::Warning, "ForeignSecret", note)
            .await;
    }

    /// The secret could not be brought in line.
    pub async fn failed(
        &self,
        ns: &Namespace,
        secret: Option<ObjectReference>,
        name: &str,
        why: &str,
    ) {
        let note = format!("Secret {name} could not be updated: {why}");
        self.publish(ns, secret, EventType::Warning, "SyncFailed", note)
            .await;
    }

    /// A watch regcred needs cannot be made (`problem` says which and what it lacks), about
    /// `regarding` (regcred's Lease, so the Event sits in regcred's own namespace).
    pub async fn watch_failed(&self, regarding: &ObjectReference, problem: &str) {
        let note = format!("{problem}. Everything else is still served.");
        self.send(regarding.clone(), EventType::Warning, "WatchFailed", note)
            .await;
    }

    async fn publish(
        &self,
        ns: &Namespace,
        secret: Option<ObjectReference>,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let reference: ObjectReference = if let Some(secret) = secret {
            secret
        } else {
            let mut r = ns.object_ref(&());
            // Keep the Event in the namespace it is about, where its owners look.
            r.namespace.clone_from(&ns.metadata.name);
            r
        };
        self.send(reference, type_, reason, note).await;
    }

    async fn send(
        &self,
        reference: ObjectReference,
        type_: EventType,
        reason: &str,
        mut note: String,
    ) {
        if note.len() > MAX_NOTE {
            let mut end = MAX_NOTE;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Sync".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(reason, namespace = ?reference.namespace, error = %e, "could not publish an Event");
        }
    }
}
