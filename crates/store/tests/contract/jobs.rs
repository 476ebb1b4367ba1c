//! Fleet jobs and diagnostics in the store: validation, `max_parallel` across concurrent ticks,
//! timeouts with retries and backoff, rejections never retried, cancel, `config` jobs converging
//! through the shadow, and single-use reboot confirmations.

use std::collections::HashMap;

use drover_core::shadow::{ShadowLimits, ShadowUpdate};
use drover_proto::jobs::{
    DiagAction, DiagResponse, ExecutionId, JobId, JobStatusReport, NewJob, ReportedJobState,
};
use drover_store::{AnswerOutcome, Confirmation, DiagState, JobReportOutcome, Store, StoreError};
use serde_json::json;

use crate::support::*;

fn job(body: serde_json::Value) -> NewJob {
    serde_json::from_value(body).unwrap()
}

fn report(state: ReportedJobState) -> JobStatusReport {
    JobStatusReport {
        execution_id: None,
        attempt: None,
        state,
        result: None,
        message: None,
    }
}

/// Executions by state, from the paged listing.
async fn states(store: &Store, id: JobId) -> HashMap<String, Vec<String>> {
    let page = store.job_executions(id, None, None, 1000).await.unwrap();
    let mut by_state: HashMap<String, Vec<String>> = HashMap::new();
    for execution in page.items {
        by_state
            .entry(execution.state)
            .or_default()
            .push(execution.device);
    }
    by_state
}

/// The offer of `device`, which must have one.
async fn offer(store: &Store, device: &str) -> (ExecutionId, u32) {
    let offer = store
        .next_job(&id(device))
        .await
        .unwrap()
        .expect("an offer");
    (offer.execution_id, offer.attempt)
}

contract_tests! {
    /// Bad jobs are refused with the reason, and nothing is written.
    async fn invalid_jobs_are_refused_with_the_reason(store: Store) {
        create_active(&store, "job-1", at(0)).await;
        for (body, needle) in [
            (json!({"kind": "reboot", "target": {"devices": ["job-1"]}, "max_parallel": 0}), "max_parallel"),
            (json!({"kind": "reboot", "target": {"devices": ["job-1"]}, "timeout": "0s"}), "timeout"),
            (json!({"kind": "reboot", "target": {"devices": ["job-1"]}, "retries": 11}), "retries"),
            (json!({"kind": "reboot", "target": {"devices": ["job-1"]}, "payload": {"x": 1}}), "no payload"),
            (json!({"kind": "config", "target": {"devices": ["job-1"]}}), "needs a payload"),
            (json!({"kind": "config", "target": {"devices": ["job-1"]}, "payload": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}), "nested too deeply"),
            (json!({"kind": "command", "target": {"devices": ["job-1"]}, "payload": {"args": []}}), "\"name\""),
            (json!({"kind": "command", "target": {"devices": ["job-1"]}, "payload": {"name": "rm -rf"}}), "command name"),
            (json!({"kind": "diagnostics", "target": {"devices": ["job-1"]}, "payload": {"action": "reboot"}}), "reboot job"),
            (json!({"kind": "diagnostics", "target": {"devices": ["job-1"]}, "payload": {"action": "dance"}}), "payload"),
            (json!({"kind": "reboot", "target": {"devices": []}}), "empty"),
            (json!({"kind": "reboot", "target": {"devices": ["nobody"]}}), "unknown devices"),
            (json!({"kind": "reboot", "target": {"query": "tags.env = nowhere"}}), "selects no devices"),
            (json!({"kind": "reboot", "target": {"query": "tags.env = = x"}}), "target query"),
        ] {
            let result = store.create_job(&operator(), job(body.clone()), at(1)).await;
            assert_err!(result, StoreError::Invalid(ref m) if m.contains(needle));
        }
        assert_err!(
            store.create_job(&operator(), job(json!({"kind": "reboot", "target": {"group": "ghosts"}})), at(1)).await,
            StoreError::NotFound { .. }
        );
        assert!(store.list_jobs(None, 100).await.unwrap().is_empty());
        assert_err!(store.get_job(JobId(12345)).await, StoreError::NotFound { .. });
    }

    /// Two replicas ticking one job at once never run more than `max_parallel` devices, and the
    /// counters always add up to the executions.
    async fn max_parallel_holds_across_concurrent_ticks(store: Store) {
        for idx in 0..30 {
            create_active(&store, &format!("mp-{idx:02}"), at(0)).await;
        }
        let view = store
            .create_job(&operator(), job(json!({"kind": "reboot", "target": {"query": "id ~ \"mp-*\""}, "max_parallel": 4})), at(1))
            .await
            .unwrap();
        assert_eq!(view.progress.total, 30);
        assert_eq!(view.progress.queued, 30);
        assert_eq!(view.state, "running");
        let mut replicas = Vec::new();
        for _ in 0..2 {
            let store = store.clone();
            replicas.push(tokio::spawn(async move {
                for _ in 0..5 {
                    store.tick_job(view.id, at(2)).await.unwrap();
                }
            }));
        }
        for replica in replicas {
            replica.await.unwrap();
        }
        let view = store.get_job(view.id).await.unwrap();
        assert_eq!(view.progress.in_progress, 4, "{:?}", view.progress);
        assert_eq!(view.progress.queued, 26);
        assert_eq!(states(&store, view.id).await["in_progress"].len(), 4);

        // Finishing two makes room for two more on the next tick.
        let running = states(&store, view.id).await["in_progress"].clone();
        for device in &running[..2] {
            let (execution, _) = offer(&store, device).await;
            let outcome = store.report_job(&id(device), execution, report(ReportedJobState::Succeeded), at(3)).await.unwrap();
            assert_eq!(outcome, JobReportOutcome::Accepted { state: "succeeded".into() });
        }
        store.tick_job(view.id, at(3)).await.unwrap();
        let view = store.get_job(view.id).await.unwrap();
        assert_eq!((view.progress.succeeded, view.progress.in_progress, view.progress.queued), (2, 4, 24));
    }

    /// A silent device times out and is tried again after the backoff; once attempts run out it
    /// is `timed_out`. A failure is retried too; a rejection never is; the job then completes.
    async fn timeouts_retry_with_backoff_and_rejections_are_final(store: Store) {
        for device in ["rt-1", "rt-2", "rt-3"] {
            create_active(&store, device, at(0)).await;
        }
        let view = store
            .create_job(&operator(), job(json!({
                "kind": "command", "target": {"devices": ["rt-1", "rt-2", "rt-3"]},
                "payload": {"name": "flush"}, "timeout": "1m", "retries": 1, "backoff": "2m"
            })), at(0))
            .await
            .unwrap();
        store.tick_job(view.id, at(0)).await.unwrap();
        // rt-1 stays silent; rt-2 fails; rt-3 rejects.
        let (e2, attempt) = offer(&store, "rt-2").await;
        assert_eq!(attempt, 1);
        let failed = JobStatusReport { message: Some("disk full".into()), ..report(ReportedJobState::Failed) };
        assert_eq!(
            store.report_job(&id("rt-2"), e2, failed, at(0)).await.unwrap(),
            JobReportOutcome::Accepted { state: "queued".into() }
        );
        let (e3, _) = offer(&store, "rt-3").await;
        store.report_job(&id("rt-3"), e3, report(ReportedJobState::Rejected), at(0)).await.unwrap();

        store.tick_job(view.id, at(1)).await.unwrap(); // rt-1's deadline passes
        let by_state = states(&store, view.id).await;
        assert_eq!(by_state["queued"].len(), 2, "{by_state:?}");
        assert_eq!(by_state["rejected"], vec!["rt-3".to_string()]);
        // Not before the backoff ends (rt-2 at 2 minutes, rt-1 at 3).
        assert!(store.next_job(&id("rt-2")).await.unwrap().is_none());
        store.tick_job(view.id, at(3)).await.unwrap();
        let (e2, attempt) = offer(&store, "rt-2").await;
        assert_eq!(attempt, 2);
        let (_, attempt) = offer(&store, "rt-1").await;
        assert_eq!(attempt, 2);
        // A late report of attempt 1 is recognised as stale.
        let stale = JobStatusReport { attempt: Some(1), ..report(ReportedJobState::Succeeded) };
        assert_eq!(
            store.report_job(&id("rt-2"), e2, stale, at(3)).await.unwrap(),
            JobReportOutcome::StaleAttempt { current: 2 }
        );
        store.report_job(&id("rt-2"), e2, report(ReportedJobState::Succeeded), at(3)).await.unwrap();
        store.tick_job(view.id, at(5)).await.unwrap(); // rt-1 times out for good
        let view = store.get_job(view.id).await.unwrap();
        assert_eq!(view.state, "completed");
        let p = view.progress;
        assert_eq!((p.succeeded, p.timed_out, p.rejected, p.queued, p.in_progress), (1, 1, 1, 0, 0));
        // Finished executions accept no more reports.
        assert_eq!(
            store.report_job(&id("rt-3"), e3, report(ReportedJobState::Succeeded), at(5)).await.unwrap(),
            JobReportOutcome::NotInProgress { state: "rejected".into() }
        );
    }

    /// Canceling stops what is queued and running; a device reporting on it is told so; another
    /// device's execution is not found.
    async fn cancel_stops_queued_and_running_executions(store: Store) {
        for device in ["cn-1", "cn-2", "cn-3"] {
            create_active(&store, device, at(0)).await;
        }
        let view = store
            .create_job(&operator(), job(json!({"kind": "reboot", "target": {"query": "id ~ \"cn-*\""}, "max_parallel": 1})), at(0))
            .await
            .unwrap();
        store.tick_job(view.id, at(0)).await.unwrap();
        let running = states(&store, view.id).await["in_progress"][0].clone();
        let (execution, _) = offer(&store, &running).await;
        let other = ["cn-1", "cn-2", "cn-3"].into_iter().find(|d| *d != running).unwrap();
        assert_err!(
            store.report_job(&id(other), execution, report(ReportedJobState::Succeeded), at(0)).await,
            StoreError::NotFound { .. }
        );
        let (view, devices) = store.cancel_job(&operator(), view.id, "wrong target", at(1)).await.unwrap();
        assert_eq!(view.state, "canceled");
        assert_eq!(view.progress.canceled, 3);
        assert_eq!(devices, vec![id(&running)]);
        assert_eq!(
            store.report_job(&id(&running), execution, report(ReportedJobState::InProgress), at(1)).await.unwrap(),
            JobReportOutcome::Canceled
        );
        assert!(store.next_job(&id(&running)).await.unwrap().is_none());
        assert_err!(store.cancel_job(&operator(), view.id, "again", at(2)).await, StoreError::Conflict(_));
        store.tick_job(view.id, at(2)).await.unwrap();
        assert_eq!(store.get_job(view.id).await.unwrap().state, "canceled");
    }

    /// A config job sets the desired state when a device's execution starts, and succeeds once
    /// the device reports it.
    async fn config_jobs_converge_through_the_shadow(store: Store) {
        create_active(&store, "cf-1", at(0)).await;
        let view = store
            .create_job(&operator(), job(json!({
                "kind": "config", "target": {"devices": ["cf-1"]}, "payload": {"rate": 5, "led": {"on": true}}
            })), at(0))
            .await
            .unwrap();
        let outcome = store.tick_job(view.id, at(0)).await.unwrap().unwrap();
        assert_eq!(outcome.offered, vec![id("cf-1")]);
        assert_eq!(outcome.desired_changed.len(), 1);
        let shadow = store.get_shadow(&id("cf-1"), None).await.unwrap().unwrap();
        assert_eq!(shadow.desired()["rate"], json!(5));
        let reported = ShadowUpdate::from_json(json!({"state": {"reported": {"rate": 5, "led": {"on": true}}}})).unwrap();
        store
            .update_shadow(&drover_store::Actor::device("cf-1"), &id("cf-1"), None, reported, at(1), ShadowLimits::default())
            .await
            .unwrap();
        store.tick_job(view.id, at(1)).await.unwrap();
        let view = store.get_job(view.id).await.unwrap();
        assert_eq!((view.state.as_str(), view.progress.succeeded), ("completed", 1));
    }

    /// A device deleted during a job takes its execution along, and the job still completes with
    /// counters that match what is left.
    async fn a_job_completes_when_a_device_is_deleted_under_it(store: Store) {
        create_active(&store, "del-1", at(0)).await;
        create_active(&store, "del-2", at(0)).await;
        let view = store
            .create_job(&operator(), job(json!({"kind": "reboot", "target": {"devices": ["del-1", "del-2"]}, "max_parallel": 1})), at(0))
            .await
            .unwrap();
        store.tick_job(view.id, at(0)).await.unwrap();
        let (execution, _) = offer(&store, "del-1").await;
        store.delete_device(&operator(), &id("del-2"), at(1)).await.unwrap();
        store.report_job(&id("del-1"), execution, report(ReportedJobState::Succeeded), at(1)).await.unwrap();
        store.tick_job(view.id, at(1)).await.unwrap();
        let view = store.get_job(view.id).await.unwrap();
        assert_eq!(view.state, "completed", "{:?}", view.progress);
        assert_eq!((view.progress.total, view.progress.succeeded, view.progress.queued), (1, 1, 0));
    }

    /// Reboot confirmations are single-use, bound to device and action, and expire.
    async fn diagnostics_confirmations_are_single_use(store: Store) {
        create_active(&store, "dg-1", at(0)).await;
        create_active(&store, "dg-2", at(0)).await;
        let token = store.create_diag_confirmation(&id("dg-1"), DiagAction::Reboot, at(2), at(0)).await.unwrap();
        assert_eq!(store.consume_diag_confirmation(&id("dg-2"), DiagAction::Reboot, &token, at(1)).await.unwrap(), Confirmation::Unknown);
        assert_eq!(store.consume_diag_confirmation(&id("dg-1"), DiagAction::Reboot, "drc_nonsense", at(1)).await.unwrap(), Confirmation::Unknown);
        assert_eq!(store.consume_diag_confirmation(&id("dg-1"), DiagAction::Reboot, &token, at(1)).await.unwrap(), Confirmation::Accepted);
        assert_eq!(store.consume_diag_confirmation(&id("dg-1"), DiagAction::Reboot, &token, at(1)).await.unwrap(), Confirmation::Used);
        let late = store.create_diag_confirmation(&id("dg-1"), DiagAction::Reboot, at(2), at(0)).await.unwrap();
        assert_eq!(store.consume_diag_confirmation(&id("dg-1"), DiagAction::Reboot, &late, at(3)).await.unwrap(), Confirmation::Expired);
    }

    /// A diagnostics request is delivered to its device only, answered once, and not after its
    /// deadline.
    async fn diagnostics_requests_are_answered_once(store: Store) {
        create_active(&store, "dr-1", at(0)).await;
        create_active(&store, "dr-2", at(0)).await;
        let request = store
            .create_diag_request(&operator(), &id("dr-1"), DiagAction::LogTail, Some(20), at(1), at(0))
            .await
            .unwrap();
        assert!(store.next_diag_request(&id("dr-2"), at(0)).await.unwrap().is_none());
        let command = store.next_diag_request(&id("dr-1"), at(0)).await.unwrap().unwrap();
        assert_eq!((command.request_id.as_str(), command.action, command.lines), (request.as_str(), DiagAction::LogTail, Some(20)));
        assert_eq!(store.diag_request_state(&request).await.unwrap(), DiagState::Waiting);
        let response = DiagResponse { request_id: None, result: Some(json!({"lines": ["a"]})), error: None };
        assert_err!(
            store.answer_diag_request(&id("dr-2"), &request, response.clone(), at(0)).await,
            StoreError::NotFound { .. }
        );
        assert_eq!(store.answer_diag_request(&id("dr-1"), &request, response.clone(), at(0)).await.unwrap(), AnswerOutcome::Accepted);
        assert_eq!(store.answer_diag_request(&id("dr-1"), &request, response.clone(), at(0)).await.unwrap(), AnswerOutcome::AlreadyAnswered);
        match store.diag_request_state(&request).await.unwrap() {
            DiagState::Answered(answer) => assert_eq!(answer.result, Some(json!({"lines": ["a"]}))),
            other => panic!("{other:?}"),
        }
        let late = store
            .create_diag_request(&operator(), &id("dr-1"), DiagAction::Ping, None, at(1), at(0))
            .await
            .unwrap();
        assert!(store.next_diag_request(&id("dr-1"), at(2)).await.unwrap().is_none(), "past its deadline");
        assert_eq!(store.answer_diag_request(&id("dr-1"), &late, response, at(2)).await.unwrap(), AnswerOutcome::Expired);
        assert_eq!(store.expire_diag_request(&late).await.unwrap(), DiagState::Expired);
    }
}
