//! Shadow-sync decisions, without IO: which deltas to hand to the config hook, and what to report
//! afterwards. The shadow thread ([`crate::shadow_thread`]) feeds [`ShadowSync`] what the server
//! sent and carries out what it returns.
//!
//! Every document and delta carries the shadow's version, which each change bumps, the agent's own
//! reports included. The agent acts on each version at most once: anything at or below the newest
//! version it has seen is stale and ignored, so an old delta arriving late (or twice) is harmless,
//! and a reconnecting agent converges from the whole document it fetches. One more case is
//! skipped: when the hook reports values other than the desired ones (it adjusted them, or failed),
//! the delta survives the agent's own report; the document that report produced shows the same
//! delta again, and running the hook on it again would loop.

use drover_core::shadow::JsonObject;
use drover_proto::shadow::{ShadowDelta, ShadowView};
use serde_json::Value;

/// The reported-state key under which the agent describes itself.
pub const AGENT_KEY: &str = "drover_agent";
/// Under [`AGENT_KEY`]: why the last delta could not be applied; removed by the next success.
pub const CONFIG_ERROR_KEY: &str = "config_error";
/// Longest `config_error` reported, in characters (the shadow's size is limited).
pub const MAX_ERROR_CHARS: usize = 300;

/// A delta to hand to the config hook.
#[derive(Debug, Clone, PartialEq)]
pub struct Apply {
    /// The shadow version the delta belongs to.
    pub version: u64,
    pub delta: JsonObject,
}

/// What the agent knows about its shadow.
#[derive(Debug, Clone, Default)]
pub struct ShadowSync {
    /// The newest version seen (acted on or deliberately skipped); the long-poll asks for newer.
    seen: u64,
    /// The delta last handed to the hook and the version the agent's report of it produced.
    last: Option<Attempt>,
    /// Whether the shadow's reported state holds a `config_error`, so a success removes it.
    error_reported: bool,
}

#[derive(Debug, Clone)]
struct Attempt {
    delta: JsonObject,
    reported_version: Option<u64>,
}

impl ShadowSync {
    /// The version to wait for a newer delta than.
    pub fn since(&self) -> u64 {
        self.seen
    }

    /// The whole document, fetched on start and after every reconnect (`None`: no shadow yet).
    pub fn on_document(&mut self, document: Option<&ShadowView>) -> Option<Apply> {
        let document = document?;
        self.error_reported = document
            .state
            .reported
            .get(AGENT_KEY)
            .and_then(|agent| agent.get(CONFIG_ERROR_KEY))
            .is_some_and(|error| !error.is_null());
        self.observe(document.version, document.state.delta.as_ref())
    }

    /// A delta pushed by the server or answered by the long-poll.
    pub fn on_delta(&mut self, delta: &ShadowDelta) -> Option<Apply> {
        self.observe(delta.version, Some(&delta.state))
    }

    /// The hook's outcome for the last [`Apply`]: what to report (`None`: nothing). A success
    /// reports the hook's values and clears an earlier `config_error`; a failure reports only why.
    pub fn on_applied(&mut self, outcome: Result<JsonObject, String>) -> Option<JsonObject> {
        match outcome {
            Ok(mut report) => {
                if std::mem::take(&mut self.error_reported) {
                    clear_config_error(&mut report);
                }
                (!report.is_empty()).then_some(report)
            }
            Err(reason) => {
                self.error_reported = true;
                let reason: String = reason.chars().take(MAX_ERROR_CHARS).collect();
                let mut agent = JsonObject::new();
                agent.insert(CONFIG_ERROR_KEY.into(), Value::String(reason));
                let mut report = JsonObject::new();
                report.insert(AGENT_KEY.into(), Value::Object(agent));
                Some(report)
            }
        }
    }

    /// The server accepted the report of the last [`Apply`]; the document is now at `version`.
    pub fn on_reported(&mut self, version: u64) {
        if let Some(last) = &mut self.last {
            last.reported_version = Some(version);
        }
    }

    fn observe(&mut self, version: u64, delta: Option<&JsonObject>) -> Option<Apply> {
        if version <= self.seen {
            return None;
        }
        self.seen = version;
        let delta = delta.filter(|delta| !delta.is_empty())?;
        if let Some(last) = &self.last {
            let own_echo = last
                .reported_version
                .is_some_and(|reported| version <= reported);
            if own_echo && last.delta == *delta {
                return None;
            }
        }
        self.last = Some(Attempt {
            delta: delta.clone(),
            reported_version: None,
        });
        Some(Apply {
            version,
            delta: delta.clone(),
        })
    }
}

/// Adds `drover_agent.config_error = null` (which deletes it) to a report.
fn clear_config_error(report: &mut JsonObject) {
    let agent = report
        .entry(AGENT_KEY)
        .or_insert_with(|| Value::Object(JsonObject::new()));
    if let Value::Object(agent) = agent {
        agent.entry(CONFIG_ERROR_KEY).or_insert(Value::Null);
    }
}

#[cfg(test)]
mod tests {
    use drover_core::Timestamp;
    use drover_proto::shadow::{ShadowMetadataView, ShadowStateView};
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> JsonObject {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn delta(version: u64, state: Value) -> ShadowDelta {
        ShadowDelta {
            state: object(state),
            metadata: JsonObject::new(),
            version,
            timestamp: Timestamp::from_millis(0),
        }
    }

    fn document(version: u64, reported: Value, delta: Option<Value>) -> ShadowView {
        ShadowView {
            state: ShadowStateView {
                desired: JsonObject::new(),
                reported: object(reported),
                delta: delta.map(object),
            },
            metadata: ShadowMetadataView {
                desired: JsonObject::new(),
                reported: JsonObject::new(),
            },
            version,
            timestamp: Timestamp::from_millis(0),
        }
    }

    fn applies(apply: Option<Apply>) -> Option<(u64, Value)> {
        apply.map(|apply| (apply.version, Value::Object(apply.delta)))
    }

    #[test]
    fn each_version_is_acted_on_once_and_stale_deltas_are_ignored() {
        let mut sync = ShadowSync::default();
        assert_eq!(sync.on_document(None), None, "no shadow yet");
        let doc = document(3, json!({}), Some(json!({"led": "on"})));
        assert_eq!(
            applies(sync.on_document(Some(&doc))),
            Some((3, json!({"led": "on"})))
        );
        assert_eq!(sync.since(), 3);
        // The same delta pushed over MQTT, and the same document after a reconnect: done already.
        assert_eq!(sync.on_delta(&delta(3, json!({"led": "on"}))), None);
        assert_eq!(sync.on_document(Some(&doc)), None);
        // An older delta arriving late is stale even though it differs.
        assert_eq!(sync.on_delta(&delta(2, json!({"led": "off"}))), None);
        // A newer one is applied.
        let newer = delta(5, json!({"led": "off", "rate": 2}));
        assert_eq!(
            applies(sync.on_delta(&newer)),
            Some((5, json!({"led": "off", "rate": 2})))
        );
        // A document without a delta moves the cursor and applies nothing.
        assert_eq!(sync.on_document(Some(&document(7, json!({}), None))), None);
        assert_eq!(sync.since(), 7);
        assert_eq!(
            sync.on_delta(&delta(8, json!({}))),
            None,
            "an empty delta is no delta"
        );
    }

    #[test]
    fn the_agents_own_report_does_not_trigger_the_hook_again() {
        let mut sync = ShadowSync::default();
        sync.on_delta(&delta(4, json!({"led": "on"})));
        // The hook adjusted the value: the delta survives the report, which made version 5.
        let report = sync.on_applied(Ok(object(json!({"led": "dim"})))).unwrap();
        assert_eq!(Value::Object(report), json!({"led": "dim"}));
        sync.on_reported(5);
        assert_eq!(sync.on_delta(&delta(5, json!({"led": "on"}))), None);
        assert_eq!(
            sync.since(),
            5,
            "the long-poll moves past the agent's own report"
        );
        // The operator asks again (a newer write): that is applied.
        assert_eq!(
            applies(sync.on_delta(&delta(6, json!({"led": "on"})))),
            Some((6, json!({"led": "on"})))
        );
    }

    #[test]
    fn a_change_made_while_the_hook_ran_is_not_mistaken_for_the_agents_echo() {
        let mut sync = ShadowSync::default();
        sync.on_delta(&delta(4, json!({"led": "on"})));
        sync.on_applied(Ok(object(json!({"led": "on"}))));
        // The operator wrote version 5 meanwhile; the report made 6. The long-poll (since 4) sees
        // the document at 6 with the operator's new delta.
        sync.on_reported(6);
        let apply = sync.on_delta(&delta(6, json!({"rate": 9})));
        assert_eq!(applies(apply), Some((6, json!({"rate": 9}))));
    }

    #[test]
    fn a_failure_reports_why_and_the_next_success_clears_it() {
        let mut sync = ShadowSync::default();
        sync.on_delta(&delta(1, json!({"led": "on"})));
        let report = sync
            .on_applied(Err("exit status 2: no such led".into()))
            .unwrap();
        assert_eq!(
            Value::Object(report),
            json!({"drover_agent": {"config_error": "exit status 2: no such led"}})
        );
        sync.on_reported(2);
        // The failed delta, still there after the error report, is not retried by itself.
        assert_eq!(sync.on_delta(&delta(2, json!({"led": "on"}))), None);
        sync.on_delta(&delta(3, json!({"led": "off"})));
        let report = sync.on_applied(Ok(object(json!({"led": "off"})))).unwrap();
        assert_eq!(
            Value::Object(report),
            json!({"led": "off", "drover_agent": {"config_error": null}})
        );
        sync.on_delta(&delta(5, json!({"led": "on"})));
        let report = sync.on_applied(Ok(object(json!({"led": "on"})))).unwrap();
        assert_eq!(
            Value::Object(report),
            json!({"led": "on"}),
            "cleared only once"
        );
        let long = "x".repeat(1000);
        sync.on_delta(&delta(6, json!({"led": "off"})));
        let report = sync.on_applied(Err(long)).unwrap();
        let reason = report[AGENT_KEY][CONFIG_ERROR_KEY].as_str().unwrap();
        assert_eq!(reason.len(), MAX_ERROR_CHARS);
    }

    #[test]
    fn an_error_left_in_the_document_by_an_earlier_run_is_cleared_by_a_success() {
        let mut sync = ShadowSync::default();
        let doc = document(
            9,
            json!({"drover_agent": {"config_error": "old"}}),
            Some(json!({"led": "on"})),
        );
        assert!(sync.on_document(Some(&doc)).is_some());
        let report = sync.on_applied(Ok(object(json!({"led": "on"})))).unwrap();
        assert_eq!(report[AGENT_KEY], json!({"config_error": null}));
        // A hook that reports nothing, with nothing to clear, makes no report at all.
        sync.on_delta(&delta(11, json!({"led": "off"})));
        assert_eq!(sync.on_applied(Ok(JsonObject::new())), None);
    }
}
