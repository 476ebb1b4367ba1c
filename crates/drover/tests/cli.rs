//! Black-box tests of the admin CLI: each test starts the real server in-process on port 0 with a
//! fresh SQLite store, then runs the `drover` binary against it and checks what it prints and its
//! exit code.

mod common;

use common::{spawn_server, TestServer, ADMIN_TOKEN};
use drover_store::testing::TempDir;
use serde_json::{json, Value};

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    fn ok(self) -> String {
        assert_eq!(self.code, 0, "drover failed: {self:?}");
        self.stdout
    }

    /// Asserts success and parses stdout as JSON.
    fn json(self) -> Value {
        let stdout = self.ok();
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"))
    }
}

impl TestServer {
    /// Runs `drover ARGS` against this server with the admin token.
    async fn drover(&self, args: &[&str]) -> Run {
        run_drover(&self.base, Some(ADMIN_TOKEN), args).await
    }

    /// Runs `drover ARGS` against this server with `token` (or none).
    async fn drover_as(&self, token: Option<&str>, args: &[&str]) -> Run {
        run_drover(&self.base, token, args).await
    }

    /// Writes `text` to a file in the server's temporary directory and returns its path.
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    async fn stop(self) {
        self.server.shutdown().await.expect("clean shutdown");
    }
}

/// Runs the binary as a child process; the server keeps serving on the test runtime meanwhile.
async fn run_drover(server: &str, token: Option<&str>, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_drover"));
    command
        .args(args)
        .env("DROVER_SERVER", server)
        .env_remove("DROVER_TOKEN")
        .env_remove("DROVER_CONFIG");
    if let Some(token) = token {
        command.env("DROVER_TOKEN", token);
    }
    let output = command.output().await.expect("drover runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The indented secret line printed under "(shown only this once)".
fn secret_line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}… line in:\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_tour_provisions_finds_groups_and_audits_a_device_from_the_cli() {
    let app = spawn_server().await;

    let created = app
        .drover(&[
            "claims",
            "create",
            "--name",
            "factory-line-1",
            "--type",
            "thermostat",
            "--tag",
            "env=prod",
            "--max-uses",
            "100",
        ])
        .await
        .ok();
    assert!(created.contains("shown only this once"), "{created}");
    assert!(created.contains("curl -X POST"), "{created}");
    assert!(
        created.contains(&format!("{}/api/device/v1/provision", app.base)),
        "{created}"
    );
    let claim_token = secret_line(&created, "drv_claim_");

    let provisioned: Value = reqwest::Client::new()
        .post(format!("{}/api/device/v1/provision", app.base))
        .json(&json!({
            "claim_token": claim_token, "hardware_id": "SN-0001", "device_id": "thermo-0001",
            "hw_rev": "rev2", "firmware": "2.2.0"
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(provisioned["status"], "active", "{provisioned}");

    let listed = app
        .drover(&["devices", "list", "-q", r#"tags.env = prod AND firmware < 2.3.0 AND hw_rev IN (rev2, "rev2.1") AND NOT site ~ "berlin-*""#])
        .await
        .ok();
    let lines: Vec<&str> = listed.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("LAST SEEN"),
        "{listed}"
    );
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines[1].starts_with("thermo-0001")
            && lines[1].contains("thermostat")
            && lines[1].contains("env=prod"),
        "{listed}"
    );

    let group = app
        .drover(&[
            "groups",
            "create",
            "prod-old-firmware",
            "--query",
            "tags.env = prod AND firmware < 2.3.0",
        ])
        .await
        .ok();
    assert_eq!(
        group,
        "Created dynamic group prod-old-firmware with 1 member(s).\n"
    );
    let members = app
        .drover(&["groups", "devices", "prod-old-firmware"])
        .await
        .ok();
    assert!(
        members
            .lines()
            .nth(1)
            .is_some_and(|line| line.starts_with("thermo-0001")),
        "{members}"
    );

    let shown = app.drover(&["devices", "show", "thermo-0001"]).await.ok();
    for expected in [
        "Status:",
        "active",
        "Groups:",
        "prod-old-firmware",
        "Tags:",
        "env=prod",
        "Firmware:",
        "2.2.0",
    ] {
        assert!(
            shown.contains(expected),
            "missing {expected:?} in:\n{shown}"
        );
    }

    // Newer firmware takes the device out of the dynamic group at once.
    app.drover(&["devices", "update", "thermo-0001", "--firmware", "2.3.0"])
        .await
        .ok();
    let members = app
        .drover(&["groups", "devices", "prod-old-firmware"])
        .await;
    assert_eq!(
        (members.code, members.stdout.as_str()),
        (0, ""),
        "{members:?}"
    );
    assert!(members.stderr.contains("no devices"), "{members:?}");

    let audit = app.drover(&["audit"]).await.ok();
    assert!(audit.starts_with("SEQ"), "{audit}");
    for (action, target) in [
        ("claim.create", "claim:clm_"),
        ("device.provision", "device:thermo-0001"),
        ("group.create", "group:prod-old-firmware"),
        ("device.update", "device:thermo-0001"),
    ] {
        assert!(
            audit
                .lines()
                .any(|line| line.contains(action) && line.contains(target)),
            "missing {action} on {target} in:\n{audit}"
        );
    }
    let provisions = app
        .drover(&["audit", "--action", "device.provision"])
        .await
        .ok();
    assert_eq!(provisions.lines().count(), 2, "{provisions}");
    assert!(
        provisions.contains("device:thermo-0001  device.provision"),
        "{provisions}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_is_the_servers_json_and_all_follows_every_page() {
    let app = spawn_server().await;
    for id in ["a-1", "a-2", "a-3"] {
        let created = app
            .drover(&[
                "--json", "devices", "create", "--type", "meter", "--id", id, "--tag", "env=lab",
            ])
            .await
            .json();
        assert_eq!(created["device"]["id"], id);
    }

    let page = app
        .drover(&["--json", "devices", "list", "--limit", "2"])
        .await
        .json();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next cursor")
        .to_owned();
    let next = app
        .drover(&[
            "--json", "devices", "list", "--limit", "2", "--cursor", &cursor,
        ])
        .await
        .json();
    assert_eq!(next["items"][0]["id"], "a-3");

    let human = app.drover(&["devices", "list", "--limit", "2"]).await;
    assert_eq!(human.code, 0);
    assert!(
        human.stderr.contains(&format!("--cursor {cursor}")),
        "{human:?}"
    );

    let all = app
        .drover(&["--json", "devices", "list", "--all", "--limit", "2"])
        .await
        .json();
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a-1", "a-2", "a-3"]);
    let table = app
        .drover(&["devices", "list", "--all", "--limit", "2"])
        .await
        .ok();
    assert_eq!(table.lines().count(), 4, "{table}");

    let none = app
        .drover(&["--json", "devices", "list", "--all", "-q", "site = nowhere"])
        .await
        .json();
    assert_eq!(none, json!([]));
    assert_eq!(
        app.drover(&["--json", "devices", "count", "-q", "tags.env = lab"])
            .await
            .json(),
        json!({ "count": 3 })
    );
    assert_eq!(app.drover(&["devices", "count"]).await.ok(), "3\n");

    let updated = app
        .drover(&[
            "--json", "devices", "update", "a-1", "--site", "berlin-1", "--untag", "env",
        ])
        .await
        .json();
    assert_eq!(updated["site"], "berlin-1");
    assert_eq!(updated["tags"], json!({}));
    let bulk = app
        .drover(&[
            "--json",
            "devices",
            "bulk-update",
            "-q",
            "tags.env = lab",
            "--tag",
            "tier=2",
        ])
        .await
        .json();
    assert_eq!(bulk, json!({ "matched": 2, "updated": 2 }));

    let group = app
        .drover(&[
            "--json",
            "groups",
            "create",
            "pilot",
            "--description",
            "first units",
        ])
        .await
        .json();
    assert_eq!(group["kind"], "static");
    assert_eq!(
        app.drover(&["groups", "add", "pilot", "a-1", "a-2"])
            .await
            .ok(),
        "Added 2 device(s) to group pilot.\n"
    );
    assert_eq!(
        app.drover(&["--json", "devices", "groups", "a-1"])
            .await
            .json(),
        json!({ "groups": ["pilot"] })
    );
    let groups = app.drover(&["--json", "groups", "list"]).await.json();
    assert_eq!(groups[0]["name"], "pilot");
    let pilot = app
        .drover(&["--json", "groups", "show", "pilot"])
        .await
        .json();
    assert_eq!(pilot["member_count"], 2);

    let whoami = app.drover(&["--json", "whoami"]).await.json();
    assert_eq!(whoami["role"], "admin");
    let audit = app
        .drover(&[
            "--json",
            "audit",
            "--all",
            "--limit",
            "2",
            "--target-kind",
            "device",
        ])
        .await
        .json();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "device.update",
            "device.create",
            "device.create",
            "device.create"
        ],
        "newest first, over two pages"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_with_a_bad_line_exits_2_names_the_line_and_writes_nothing() {
    let app = spawn_server().await;
    let bad = app.file(
        "fleet.csv",
        "id,device_type,site,tags.env\nm-1,meter,berlin-1,prod\nm-2,meter,berlin-1,prod\nm-3,not a type,berlin-2,prod\n",
    );
    let run = app.drover(&["devices", "import", &bad]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let first = run.stderr.lines().next().unwrap();
    assert!(
        first.starts_with("error: ") && first.contains("nothing was written"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .lines()
            .any(|line| line.trim_start().starts_with("line 4:")),
        "{run:?}"
    );
    assert_eq!(app.drover(&["devices", "count"]).await.ok(), "0\n");

    let good = app.file(
        "fleet-good.csv",
        "id,device_type,site,tags.env\nm-1,meter,berlin-1,prod\nm-2,meter,berlin-1,prod\n",
    );
    assert_eq!(
        app.drover(&["devices", "import", &good]).await.ok(),
        "Imported: 2 created, 0 updated, 0 skipped.\n"
    );
    let again = app.drover(&["devices", "import", &good]).await;
    assert_eq!(again.code, 2, "{again:?}");
    assert!(
        again
            .stderr
            .contains("line 2: device \"m-1\" already exists"),
        "{again:?}"
    );
    let skipped = app
        .drover(&[
            "--json",
            "devices",
            "import",
            &good,
            "--on-conflict",
            "skip",
        ])
        .await
        .json();
    assert_eq!(skipped, json!({ "created": 0, "updated": 0, "skipped": 2 }));

    let lines = app.file(
        "more.data",
        "{\"id\": \"m-9\", \"device_type\": \"meter\", \"tags\": {\"env\": \"dev\"}}\n",
    );
    let unknown = app.drover(&["devices", "import", &lines]).await;
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("--format"), "{unknown:?}");
    app.drover(&["devices", "import", &lines, "--format", "jsonl"])
        .await
        .ok();
    assert_eq!(
        app.drover(&["devices", "count", "-q", "tags.env = dev"])
            .await
            .ok(),
        "1\n"
    );

    let missing = app
        .drover(&["devices", "import", "/nonexistent/fleet.csv"])
        .await;
    assert_eq!(missing.code, 2, "{missing:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_errors_print_a_caret_under_the_column_and_exit_2() {
    let app = spawn_server().await;
    assert_eq!(
        app.drover(&["query", "check", "tags.env=prod and firmware<2.3"])
            .await
            .ok(),
        "tags.env = prod AND firmware < 2.3.0\n"
    );

    let run = app.drover(&["query", "check", "site = berlin AND"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(lines[0].starts_with("error: "), "{run:?}");
    assert_eq!(lines[1].trim(), "site = berlin AND", "{run:?}");
    assert_eq!(lines[2].trim_start(), "^", "{run:?}");
    assert_eq!(
        lines[2].find('^'),
        Some(lines[1].len()),
        "the caret points just past the dangling AND: {run:?}"
    );

    let list = app.drover(&["devices", "list", "-q", "firmware <"]).await;
    assert_eq!(list.code, 2, "{list:?}");
    assert!(list.stderr.contains('^'), "{list:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_map_to_their_documented_exit_codes() {
    let app = spawn_server().await;

    let unknown = app.drover(&["devices", "show", "no-such-device"]).await;
    assert_eq!(unknown.code, 4, "{unknown:?}");
    assert!(
        unknown.stderr.starts_with("error: ") && unknown.stderr.contains("no-such-device"),
        "{unknown:?}"
    );

    let no_token = app.drover_as(None, &["devices", "list"]).await;
    assert_eq!(no_token.code, 3, "{no_token:?}");
    assert_eq!(
        no_token.stderr,
        "error: no API token: set DROVER_TOKEN or pass --token\n"
    );
    let wrong_token = app
        .drover_as(Some("drv_op_not_a_real_token_at_all"), &["whoami"])
        .await;
    assert_eq!(wrong_token.code, 3, "{wrong_token:?}");

    let viewer = app
        .drover(&[
            "--json",
            "tokens",
            "create",
            "--name",
            "dashboard",
            "--role",
            "viewer",
        ])
        .await
        .json();
    let viewer_secret = viewer["secret"].as_str().unwrap();
    let listed = app
        .drover_as(Some(viewer_secret), &["devices", "list"])
        .await;
    assert_eq!(listed.code, 0, "{listed:?}");
    let denied = app
        .drover_as(
            Some(viewer_secret),
            &["devices", "create", "--type", "meter"],
        )
        .await;
    assert_eq!(denied.code, 3, "{denied:?}");
    assert!(denied.stderr.contains("operator"), "{denied:?}");

    app.drover(&["devices", "create", "--type", "meter", "--id", "dup-1"])
        .await
        .ok();
    let duplicate = app
        .drover(&["devices", "create", "--type", "meter", "--id", "dup-1"])
        .await;
    assert_eq!(duplicate.code, 5, "{duplicate:?}");

    let bad_tag = app
        .drover(&["devices", "create", "--type", "meter", "--tag", "novalue"])
        .await;
    assert_eq!(bad_tag.code, 2, "{bad_tag:?}");
    assert!(bad_tag.stderr.contains("KEY=VALUE"), "{bad_tag:?}");
    let bad_status = app
        .drover(&["devices", "update", "dup-1", "--status", "decommissioned"])
        .await;
    assert_eq!(bad_status.code, 2, "{bad_status:?}");
    let nothing = app.drover(&["devices", "update", "dup-1"]).await;
    assert_eq!(nothing.code, 2, "{nothing:?}");
    assert!(nothing.stderr.contains("nothing to change"), "{nothing:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_exits_6_and_names_the_url() {
    // Bind a port and release it so that nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);

    let run = run_drover(&url, Some(ADMIN_TOKEN), &["devices", "list"]).await;
    assert_eq!(run.code, 6, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(
        run.stderr.contains(&url) && run.stderr.contains("`drover serve` may not be running"),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_secrets_are_printed_once_and_work() {
    let app = spawn_server().await;
    let created = app
        .drover(&[
            "devices",
            "create",
            "--type",
            "meter",
            "--id",
            "hand-1",
            "--issue-credential",
        ])
        .await
        .ok();
    let credential = secret_line(&created, "drv_dev_");
    let me: Value = reqwest::Client::new()
        .get(format!("{}/api/device/v1/whoami", app.base))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["device_id"], "hand-1");

    let token = app
        .drover(&[
            "tokens",
            "create",
            "--name",
            "ci",
            "--role",
            "operator",
            "--expires-in",
            "30d",
        ])
        .await
        .ok();
    let secret = secret_line(&token, "drv_op_");
    assert!(
        token.contains(&format!("export DROVER_TOKEN={secret}")),
        "{token}"
    );
    let whoami = app.drover_as(Some(secret), &["whoami"]).await.ok();
    assert!(
        whoami.contains("operator") && whoami.contains("ci"),
        "{whoami}"
    );

    let tokens = app.drover(&["tokens", "list"]).await.ok();
    assert!(
        tokens
            .lines()
            .any(|line| line.contains(" ci ") && line.contains("operator")),
        "{tokens}"
    );
    assert!(
        !tokens.contains(secret),
        "secrets are never listed: {tokens}"
    );
    app.stop().await;
}

/// An operator who lost every admin token creates a new one from the database itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_admin_creates_a_working_admin_token_in_the_store() {
    let test = spawn_server().await;
    let data_dir = test.dir.path.display().to_string();
    let recovered = run_drover(
        &test.base,
        None,
        &["recover-admin", "--data-dir", &data_dir],
    )
    .await;
    assert_eq!(recovered.code, 0, "{recovered:?}");
    let secret = recovered
        .stderr
        .split_whitespace()
        .find_map(|word| word.strip_prefix("DROVER_TOKEN="))
        .expect("the token is printed")
        .to_owned();
    let whoami = test
        .drover_as(Some(&secret), &["whoami", "--json"])
        .await
        .json();
    assert_eq!(whoami["role"], "admin");
    assert_eq!(whoami["name"], "recovered-admin");
    let audit = test
        .drover(&["audit", "--actor", "system", "--json"])
        .await
        .json();
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "token.create" && e["after"]["name"] == "recovered-admin"),
        "{audit}"
    );
    test.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_set_builds_nested_desired_state_that_get_shows() {
    let app = spawn_server().await;
    app.drover(&["devices", "create", "--type", "lamp", "--id", "lamp-1"])
        .await
        .ok();

    let set = app
        .drover(&[
            "shadow",
            "set",
            "lamp-1",
            "led=on",
            "cfg.rate=5",
            "cfg.label=\"5\"",
            "--desired",
            r#"{"cfg": {"mode": "eco"}, "tags": ["a"]}"#,
        ])
        .await
        .ok();
    assert!(set.contains("Version:   1"), "{set}");
    assert!(set.contains("cfg.rate = 5"), "{set}");

    let shadow = app
        .drover(&["--json", "shadow", "get", "lamp-1"])
        .await
        .json();
    assert_eq!(
        shadow["state"]["desired"],
        json!({"led": "on", "cfg": {"rate": 5, "label": "5", "mode": "eco"}, "tags": ["a"]})
    );
    assert_eq!(shadow["state"]["delta"], shadow["state"]["desired"]);
    assert_eq!(shadow["version"], 1);

    // A file, a deletion with null, a named shadow, and the version guard (409 → exit 5).
    let file = app.file("desired.json", r#"{"cfg": {"rate": 9}}"#);
    app.drover(&[
        "shadow",
        "set",
        "lamp-1",
        "--json-file",
        &file,
        "led=null",
        "--expect-version",
        "1",
    ])
    .await
    .ok();
    let stale = app
        .drover(&[
            "shadow",
            "set",
            "lamp-1",
            "led=off",
            "--expect-version",
            "1",
        ])
        .await;
    assert_eq!(stale.code, 5, "{stale:?}");
    assert!(stale.stderr.contains("version conflict"), "{stale:?}");
    let shadow = app
        .drover(&["--json", "shadow", "get", "lamp-1"])
        .await
        .json();
    assert_eq!(
        shadow["state"]["desired"],
        json!({"cfg": {"rate": 9, "label": "5", "mode": "eco"}, "tags": ["a"]})
    );
    app.drover(&["shadow", "set", "lamp-1", "--name", "ota", "slot=b"])
        .await
        .ok();
    let ota = app
        .drover(&["--json", "shadow", "get", "lamp-1", "--name", "ota"])
        .await
        .json();
    assert_eq!(ota["state"]["desired"], json!({"slot": "b"}));

    let deleted = app
        .drover(&["shadow", "delete", "lamp-1", "--name", "ota"])
        .await
        .ok();
    assert_eq!(deleted, "Deleted shadow \"ota\" of device lamp-1.\n");
    let gone = app
        .drover(&["shadow", "get", "lamp-1", "--name", "ota"])
        .await;
    assert_eq!(gone.code, 4, "{gone:?}");
    let nothing = app.drover(&["shadow", "set", "lamp-1"]).await;
    assert_eq!(nothing.code, 2, "{nothing:?}");
    app.stop().await;
}

#[tokio::test]
async fn drover_sim_refuses_bad_scenarios_and_flags_before_starting_any_device() {
    let dir = TempDir::new();
    let state = dir.path.join("state");
    let state = state.to_str().unwrap();
    let bad = dir.path.join("bad.toml");
    std::fs::write(
        &bad,
        "[[fleet]]\ndevice_type = \"x\"\ncount = 0\nfirmware = \"1.0.0\"\n",
    )
    .unwrap();
    let good = dir.path.join("good.toml");
    std::fs::write(
        &good,
        "[[fleet]]\ndevice_type = \"x\"\ncount = 1\nfirmware = \"1.0.0\"\n",
    )
    .unwrap();
    let (bad, good) = (bad.to_str().unwrap(), good.to_str().unwrap());
    let server = "http://127.0.0.1:9";

    let run = run_drover(
        server,
        None,
        &[
            "sim",
            "--scenario",
            "/nonexistent.toml",
            "--state-dir",
            state,
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("cannot read the scenario /nonexistent.toml"),
        "{}",
        run.stderr
    );

    let run = run_drover(
        server,
        None,
        &["sim", "--scenario", bad, "--state-dir", state],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("fleet[0].count"), "{}", run.stderr);

    for (flag, value, message) in [
        ("--mqtt", "nohost", "--mqtt must be HOST:PORT"),
        ("--mqtt", "host:port", "is not a port number"),
        ("--duration", "soon", "--duration"),
        (
            "--progress-every",
            "0",
            "--progress-every must be at least 0.1 seconds",
        ),
    ] {
        let run = run_drover(
            server,
            None,
            &["sim", "--scenario", good, "--state-dir", state, flag, value],
        )
        .await;
        assert_eq!(run.code, 1, "{flag} {value}: {}", run.stderr);
        assert!(
            run.stderr.contains(message),
            "{flag} {value}: {}",
            run.stderr
        );
    }

    // No credentials and no token: nothing is started, and nothing is written.
    let run = run_drover(
        server,
        None,
        &["sim", "--scenario", good, "--state-dir", state],
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("--claim-token"), "{}", run.stderr);
    assert!(!dir.path.join("state").join("devices.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_rollout_is_created_shown_paused_resumed_and_aborted_from_the_cli() {
    let app = spawn_server().await;
    for id in ["s-1", "s-2", "s-3", "s-4"] {
        app.drover(&[
            "devices",
            "create",
            "--type",
            "sensor",
            "--id",
            id,
            "--firmware",
            "1.0.0",
            "--status",
            "active",
        ])
        .await
        .ok();
    }
    let image = app.dir.path.join("sensor-fw-1.1.0.img");
    std::fs::write(
        &image,
        (0..4000u32).map(|i| (i * 31) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    app.drover(&[
        "artifacts",
        "upload",
        &image.display().to_string(),
        "--name",
        "sensor-fw",
        "--version",
        "1.1.0",
        "--device-type",
        "sensor",
    ])
    .await
    .ok();

    // The orchestrator ticks every 5 s, so whether phase 1 has been dispatched yet is left open.
    let created = app
        .drover(&[
            "rollouts",
            "create",
            "--artifact",
            "sensor-fw",
            "--version",
            "1.1.0",
            "--query",
            "device_type = sensor",
            "--phases",
            "50,100",
            "--soak",
            "1s",
        ])
        .await
        .ok();
    assert!(created.starts_with("Created rollout 1.\n"), "{created}");
    for (key, expected) in [
        ("Release", "sensor-fw 1.1.0 (forced update)"),
        ("Target", "query \"device_type = sensor\""),
        ("Status", "running"),
        ("Strategy", "50% (soak 1s) → 100%"),
        ("Phase", "1/2 (50%)"),
    ] {
        assert_eq!(field(&created, key), expected, "{created}");
    }
    assert!(
        field(&created, "Devices").starts_with("4 in the target"),
        "{created}"
    );

    let shown = app.drover(&["rollouts", "show", "1"]).await.ok();
    assert_eq!(field(&shown, "Phase"), "1/2 (50%)", "{shown}");
    assert!(
        field(&shown, "Progress").ends_with("phase 1 reaches 50%"),
        "{shown}"
    );
    assert!(
        field(&shown, "Devices").starts_with("4 in the target"),
        "{shown}"
    );
    let decisions_at = shown.find("\nDecisions:\n").expect("a decision list");
    assert!(shown[decisions_at..].contains("created"), "{shown}");

    let listed = app.drover(&["rollouts", "list"]).await.ok();
    let lines: Vec<&str> = listed.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("SUCCEEDED/TARGET"),
        "{listed}"
    );
    assert_eq!(lines.len(), 2, "{listed}");
    for expected in ["sensor-fw 1.1.0", "running", "1/2 (50%)", "0/4"] {
        assert!(lines[1].contains(expected), "{expected:?} in:\n{listed}");
    }

    let paused = app
        .drover(&["rollouts", "pause", "1", "--reason", "checking batteries"])
        .await
        .ok();
    let lines: Vec<&str> = paused.lines().collect();
    assert!(
        lines[0].starts_with("Rollout 1 (sensor-fw 1.1.0) is paused at phase 1/2 (50%): ")
            && lines[0].ends_with("checking batteries"),
        "{paused}"
    );
    assert_eq!(
        lines[1], "Waiting for an operator to resume or roll back.",
        "{paused}"
    );
    assert_eq!(
        app.drover(&["rollouts", "list", "--status", "paused"])
            .await
            .ok()
            .lines()
            .count(),
        2
    );
    let resumed = app.drover(&["rollouts", "resume", "1"]).await.ok();
    assert!(
        resumed.starts_with("Rollout 1 (sensor-fw 1.1.0) is running at phase 1/2 (50%)"),
        "{resumed}"
    );

    let view = app
        .drover(&["--json", "rollouts", "show", "1"])
        .await
        .json();
    assert_eq!(view["status"], "running");
    assert_eq!(view["counts"]["target"], 4);
    assert_eq!(view["spec"]["strategy"]["phases"][0]["soak"], "1s");
    let all = app.drover(&["--json", "rollouts", "list"]).await.json();
    assert_eq!(all[0]["id"], 1);
    let decisions = app
        .drover(&["--json", "rollouts", "decisions", "1"])
        .await
        .json();
    let kinds: Vec<&str> = decisions
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"created"), "{kinds:?}");
    let page = app
        .drover(&["--json", "rollouts", "devices", "1", "--limit", "10"])
        .await
        .json();
    assert!(page["items"].is_array(), "{page}");
    let log = app.drover(&["rollouts", "decisions", "1"]).await.ok();
    assert!(
        log.starts_with("AT") && log.contains("checking batteries"),
        "{log}"
    );

    let aborted = app
        .drover(&["rollouts", "abort", "1", "--reason", "wrong build"])
        .await
        .ok();
    assert!(
        aborted.starts_with("Rollout 1 (sensor-fw 1.1.0) is aborted: ")
            && aborted.ends_with("wrong build\n"),
        "{aborted}"
    );
    let again = app.drover(&["rollouts", "abort", "1"]).await;
    assert_eq!(again.code, 5, "{again:?}");

    // A definition file, with flags over it.
    let spec = app.file(
        "rollout.json",
        r#"{"strategy": {"phases": [{"percent": 100}]}, "gates": {"canary": {"enabled": false}}, "max_parallel": 1}"#,
    );
    let from_file = app
        .drover(&[
            "--json",
            "rollouts",
            "create",
            "--artifact",
            "sensor-fw",
            "--version",
            "1.1.0",
            "--devices",
            "s-1,s-2",
            "--name",
            "two units",
            "--spec",
            &spec,
            "--max-parallel",
            "2",
        ])
        .await
        .json();
    assert_eq!(from_file["name"], "two units");
    assert_eq!(from_file["n_phases"], 1);
    assert_eq!(from_file["spec"]["max_parallel"], 2);
    assert_eq!(from_file["spec"]["gates"]["canary"]["enabled"], false);
    app.drover(&["rollouts", "abort", "2"]).await.ok();

    fn create<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "rollouts",
            "create",
            "--artifact",
            "sensor-fw",
            "--version",
            "1.1.0",
        ];
        args.extend_from_slice(extra);
        args
    }
    let two_targets = app
        .drover(&create(&[
            "--group",
            "pilot",
            "--query",
            "device_type = sensor",
        ]))
        .await;
    assert_eq!(two_targets.code, 2, "{two_targets:?}");
    assert!(
        two_targets.stderr.contains("cannot be used with"),
        "{two_targets:?}"
    );
    let zero_rate = app
        .drover(&create(&[
            "--query",
            "device_type = sensor",
            "--rate",
            "0:2:10",
        ]))
        .await;
    assert_eq!(zero_rate.code, 2, "{zero_rate:?}");
    assert_eq!(
        zero_rate.stderr,
        "error: strategy.rate.base_per_minute must be at least 1\n"
    );
    let decreasing = app
        .drover(&create(&[
            "--query",
            "device_type = sensor",
            "--phases",
            "50,10,100",
        ]))
        .await;
    assert_eq!(decreasing.code, 2, "{decreasing:?}");
    assert!(
        decreasing.stderr.starts_with("error: ") && decreasing.stderr.contains("must increase"),
        "{decreasing:?}"
    );
    let bad_soak = app
        .drover(&create(&[
            "--query",
            "device_type = sensor",
            "--soak",
            "soon",
        ]))
        .await;
    assert_eq!(bad_soak.code, 2, "{bad_soak:?}");
    assert!(bad_soak.stderr.contains("--soak"), "{bad_soak:?}");
    let unknown = app.drover(&["rollouts", "show", "999"]).await;
    assert_eq!(unknown.code, 4, "{unknown:?}");
    assert_eq!(unknown.stderr, "error: rollout \"999\" not found\n");
    let not_an_id = app.drover(&["rollouts", "pause", "abc"]).await;
    assert_eq!(not_an_id.code, 2, "{not_an_id:?}");
    assert!(
        not_an_id.stderr.contains("positive number"),
        "{not_an_id:?}"
    );
    app.stop().await;
}

/// The value of `key` in a `Key:  value` block.
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key}: line in:\n{text}"))
}

/// Registers an active device over the API and returns its credential.
async fn device_credential(app: &TestServer, id: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/devices", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"id": id, "device_type": "sensor", "issue_credential": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["credential"].as_str().unwrap().to_owned()
}

/// Plays the device: answers its next diagnostics request with `result`.
fn answer_diagnostics(
    app: &TestServer,
    credential: &str,
    result: Value,
) -> tokio::task::JoinHandle<Value> {
    let (base, credential) = (app.base.clone(), credential.to_owned());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let command: Value = http
            .get(format!("{base}/api/device/v1/diagnostics/next?wait=20"))
            .bearer_auth(&credential)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let request_id = command["request_id"].as_str().unwrap();
        let response = http
            .post(format!("{base}/api/device/v1/diagnostics/{request_id}"))
            .bearer_auth(&credential)
            .json(&json!({"result": result}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        command
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_created_shown_and_canceled_and_diag_prints_answers_or_timeouts() {
    let app = spawn_server().await;
    let credential = device_credential(&app, "cli-job-1").await;
    device_credential(&app, "cli-job-2").await;

    let bad = app
        .drover(&[
            "jobs",
            "create",
            "--kind",
            "reboot",
            "--devices",
            "cli-job-1",
            "--max-parallel",
            "0",
        ])
        .await;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr.contains("max_parallel must be between 1"),
        "{bad:?}"
    );
    let bad = app
        .drover(&[
            "jobs",
            "create",
            "--kind",
            "config",
            "--devices",
            "cli-job-1",
            "--payload",
            "{nope",
        ])
        .await;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr.contains("--payload is not valid JSON"),
        "{bad:?}"
    );
    let bad = app
        .drover(&[
            "jobs",
            "create",
            "--kind",
            "explode",
            "--devices",
            "cli-job-1",
        ])
        .await;
    assert_eq!(bad.code, 2, "{bad:?}");

    let created = app
        .drover(&[
            "jobs",
            "create",
            "--kind",
            "command",
            "-q",
            "id ~ \"cli-job-*\"",
            "--payload",
            r#"{"name": "blink"}"#,
            "--max-parallel",
            "1",
            "--timeout",
            "30s",
            "--retries",
            "2",
        ])
        .await
        .ok();
    assert!(created.contains("command"), "{created}");
    assert!(created.contains("2 total"), "{created}");
    assert!(created.contains("timeout 30s, retries 2"), "{created}");
    let listed = app.drover(&["jobs", "list"]).await.ok();
    assert!(listed.contains("running"), "{listed}");
    let shown = app.drover(&["--json", "jobs", "show", "1"]).await.json();
    assert_eq!(shown["progress"]["total"], 2);
    let executions = app.drover(&["jobs", "executions", "1"]).await.ok();
    assert!(
        executions.contains("cli-job-1") && executions.contains("cli-job-2"),
        "{executions}"
    );
    let canceled = app
        .drover(&["jobs", "cancel", "1", "--reason", "demo over"])
        .await
        .ok();
    assert!(canceled.contains("canceled"), "{canceled}");
    let again = app.drover(&["jobs", "cancel", "1"]).await;
    assert_eq!(again.code, 5, "{again:?}");
    let missing = app.drover(&["jobs", "show", "99"]).await;
    assert_eq!(missing.code, 4, "{missing:?}");

    // Diagnostics: the device's answer is printed; silence is a clear timeout.
    let device = answer_diagnostics(
        &app,
        &credential,
        json!({"hostname": "cli-box", "uptime_secs": 7}),
    );
    let info = app.drover(&["diag", "cli-job-1", "system-info"]).await.ok();
    assert!(info.contains("cli-box"), "{info}");
    assert_eq!(device.await.unwrap()["action"], "system_info");
    let silent = app
        .drover(&["diag", "cli-job-2", "ping", "--timeout", "1s"])
        .await;
    assert_eq!(silent.code, 6, "{silent:?}");
    assert!(
        silent
            .stderr
            .contains("device cli-job-2 did not answer within 1s (request diag-"),
        "{silent:?}"
    );
    // A reboot needs confirmation: refused without --yes (no terminal to ask on), done with it.
    let refused = app.drover(&["diag", "cli-job-1", "reboot"]).await;
    assert_eq!(refused.code, 5, "{refused:?}");
    assert!(refused.stderr.contains("--yes"), "{refused:?}");
    let device = answer_diagnostics(&app, &credential, json!({"rebooting": true}));
    let rebooted = app
        .drover(&["diag", "cli-job-1", "reboot", "--yes"])
        .await
        .ok();
    assert!(rebooted.contains("rebooting"), "{rebooted}");
    assert_eq!(device.await.unwrap()["action"], "reboot");
    app.stop().await;
}

/// The number of devices on `version` in the demo's final distribution (`   v2.3.1  [###…] 98/100`).
fn demo_count(stdout: &str, version: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|line| line.trim_start().starts_with(&format!("v{version}  [")))
        .unwrap_or_else(|| panic!("no distribution line for v{version} in:\n{stdout}"));
    let counts = line.rsplit(' ').next().unwrap().replace(',', "");
    let (count, total) = counts.split_once('/').unwrap();
    (count.parse().unwrap(), total.parse().unwrap())
}

#[tokio::test]
async fn drover_demo_rolls_back_the_bad_release_and_completes_the_fix() {
    let run = run_drover(
        "http://127.0.0.1:9",
        None,
        &[
            "demo",
            "--devices",
            "100",
            "--soak",
            "10s",
            "--exit-when-done",
        ],
    )
    .await;
    let stdout = &run.stdout;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(stdout.contains("export DROVER_TOKEN=drv_op_"), "{stdout}");
    assert!(
        stdout.contains("export DROVER_SERVER=http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("v2.2.0 runs on all 100 devices."),
        "{stdout}"
    );
    assert!(
        stdout.contains("phase 1 failed its canary gate: battery_ma fail"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Gate evidence: battery_ma fail (+"),
        "{stdout}"
    );
    assert!(stdout.contains("devices reverted to v2.2.0."), "{stdout}");
    assert!(stdout.contains("phase 1 passed its gate: all"), "{stdout}");
    assert!(stdout.contains("devices updated to v2.3.1."), "{stdout}");
    assert!(stdout.contains("total   100 devices"), "{stdout}");
    let (fixed, total) = demo_count(stdout, "2.3.1");
    let (bad, _) = demo_count(stdout, "2.3.0");
    let (old, _) = demo_count(stdout, "2.2.0");
    assert_eq!(total, 100, "{stdout}");
    assert_eq!(fixed + bad + old, total, "{stdout}");
    assert!(fixed >= 90, "{stdout}");
}

#[tokio::test]
async fn drover_demo_refuses_an_empty_fleet_and_a_data_dir_that_is_a_file() {
    let dir = TempDir::new();
    let file = dir.path.join("file");
    std::fs::write(&file, "x").unwrap();
    let file = file.to_str().unwrap();

    let run = run_drover("http://127.0.0.1:9", None, &["demo", "--devices", "0"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("--devices must be between 50 and"),
        "{}",
        run.stderr
    );

    let run = run_drover("http://127.0.0.1:9", None, &["demo", "--data-dir", file]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("--data-dir {file} is not a directory")),
        "{}",
        run.stderr
    );

    let full = dir.path.to_str().unwrap();
    let run = run_drover("http://127.0.0.1:9", None, &["demo", "--data-dir", full]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("is not empty"), "{}", run.stderr);

    let run = run_drover("http://127.0.0.1:9", None, &["demo", "--soak", "1s"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("--soak must be at least 5s"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}
