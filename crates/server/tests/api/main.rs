//! Black-box tests of Drover's HTTP API: each test starts the real server on port 0 with a fresh
//! store and talks to it over HTTP. Every scenario runs on SQLite and, when `DROVER_TEST_PG` is set
//! (always in CI), on PostgreSQL.

mod helpers;

mod artifacts;
mod bad_input;
mod dashboard;
mod devices;
mod fleet;
mod groups;
mod health;
mod jobs;
mod mqtt;
mod mqtt_external;
mod ops;
mod provisioning;
mod rollouts;
mod rollups;
mod s3;
mod shadow;
mod tour;
mod tuf;
