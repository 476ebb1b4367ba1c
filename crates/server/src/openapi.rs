//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]` annotations and the wire
//! types' schemas, served at `/api/v1/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    artifacts, audit, auth, device_api, devices, diagnostics, fleet, groups, health, jobs,
    rollouts, shadow, tuf, updates,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Drover API", description = "Fleet management and OTA updates. Admin API under /api/v1 (operator tokens), device API under /api/device/v1 (device credentials)."),
    paths(
        devices::list, devices::count, devices::create, devices::get, devices::update, devices::delete,
        devices::decommission, devices::accept, devices::reject, devices::rotate_credential,
        devices::revoke_credentials, devices::groups, devices::health, devices::health_samples, devices::connectivity, devices::bulk_update, devices::import,
        health::rollups,
        groups::list, groups::create, groups::get, groups::update, groups::delete, groups::devices,
        groups::add_members, groups::remove_members,
        auth::whoami, auth::list_tokens, auth::create_token, auth::revoke_token,
        auth::list_claims, auth::create_claim, auth::get_claim, auth::revoke_claim,
        audit::list, crate::routes::check_query,
        shadow::get, shadow::update, shadow::delete, shadow::list,
        device_api::provision, device_api::whoami, device_api::heartbeat, device_api::heartbeats,
        shadow::device_get, shadow::device_update, shadow::device_delta,
        artifacts::upload, artifacts::list, artifacts::get, artifacts::delete, artifacts::image, artifacts::symbols,
        artifacts::create_deployment, artifacts::list_deployments, artifacts::cancel_deployment,
        rollouts::create, rollouts::list, rollouts::get, rollouts::decisions, rollouts::devices,
        rollouts::pause, rollouts::resume, rollouts::approve, rollouts::abort, rollouts::rollback,
        fleet::overview, fleet::versions,
        jobs::create, jobs::list, jobs::get, jobs::executions, jobs::cancel,
        jobs::device_next, jobs::device_report,
        diagnostics::request, diagnostics::device_next, diagnostics::device_answer,
        tuf::root, tuf::publish_root, tuf::add_key,
        updates::next, updates::report, updates::metadata, updates::target,
    ),
    components(schemas(drover_proto::devices::OnConflict)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "devices", description = "Device registry"),
        (name = "groups", description = "Static and dynamic groups"),
        (name = "auth", description = "Operator tokens and claim tokens"),
        (name = "audit", description = "Audit log"),
        (name = "health", description = "Fleet health: heartbeat statistics per firmware version"),
        (name = "shadows", description = "Device shadows: desired and reported state"),
        (name = "artifacts", description = "Firmware artifacts and their deltas"),
        (name = "deployments", description = "Installing an artifact on one device"),
        (name = "rollouts", description = "Staged rollouts with canary gates"),
        (name = "fleet", description = "Fleet overview and firmware versions for dashboards, from maintained rollups"),
        (name = "jobs", description = "Fleet jobs: reboot, configuration, diagnostics or a custom command over a target"),
        (name = "tuf", description = "The TUF repository: root rotation and online keys"),
        (name = "device", description = "Device API"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            "bearer",
            bearer("Operator API token (admin, operator or viewer)"),
        );
        components.add_security_scheme("device", bearer("Device credential from provisioning"));
    }
}

/// The generated document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
