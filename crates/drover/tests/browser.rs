//! End-to-end tests of the web dashboard in real headless Chromium, driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`): logging in, searching devices with a fleet query,
//! pausing a rollout, the viewer role, the session cookie's CSRF rule, accessibility basics, and
//! the `drover demo` story as a new user sees it. Screenshots land in
//! `target/tmp/dashboard-screenshots/`.
//!
//! Enabled by `DROVER_TEST_BROWSER` (any value; `DROVER_CHROMIUM` and `DROVER_CHROMEDRIVER` name
//! the binaries when they are not `/usr/bin/chromium` and `chromedriver` on the PATH). Under
//! `CI=true` the suite must run: a missing variable or browser fails instead of skipping.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{spawn_server, TestServer, ADMIN_TOKEN};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// One browser at a time: two Chromiums and a cargo build do not fit on two cores.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn enabled() -> bool {
    if std::env::var_os("DROVER_TEST_BROWSER").is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but DROVER_TEST_BROWSER is not set: the browser suite must run in CI");
    }
    eprintln!(
        "skipping: set DROVER_TEST_BROWSER=1 to run the dashboard tests in headless Chromium"
    );
    false
}

/// chromedriver and a WebDriver session with headless Chromium; both end when this is dropped.
struct Browser {
    client: Client,
    driver: Child,
    shots: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let chromium =
            std::env::var("DROVER_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let chromedriver =
            std::env::var("DROVER_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        assert!(
            std::path::Path::new(&chromium).exists(),
            "no Chromium at {chromium}: apt-get install chromium chromium-driver (or set DROVER_CHROMIUM)"
        );
        // chromedriver cannot report a port it chose itself: take a free one from the kernel.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {chromedriver} ({e}): apt-get install chromium-driver")
            });
        let url = format!("http://127.0.0.1:{port}");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1000", "--force-device-scale-factor=1", "--lang=en-US"],
            }
        });
        let caps = caps.as_object().unwrap().clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no WebDriver session with {chromium} via {chromedriver}: {e}"),
            }
        };
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            driver,
            shots,
        }
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The visible text of the first element matching `css`, or "" when there is none.
    async fn text(&self, css: &str) -> String {
        self.js(
            "const el = document.querySelector(arguments[0]); return el ? el.innerText : '';",
            vec![json!(css)],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Waits until the element matching `css` shows text containing `needle`.
    async fn wait_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text(css).await;
            if text.contains(needle) {
                return text;
            }
            if Instant::now() > deadline {
                let body = self.text("body").await;
                self.screenshot("timeout").await;
                panic!("{css} never showed {needle:?} within {timeout:?}; it shows {text:?}\npage:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until `script` returns something truthy (not false, null, 0 or ""), and returns it.
    async fn wait_until(&self, script: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.js(script, vec![]).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                self.screenshot("timeout").await;
                panic!(
                    "never true within {timeout:?}: {script}\npage:\n{}",
                    self.text("body").await
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.client.find(Locator::Css(css)).await.unwrap();
        el.clear().await.unwrap();
        el.send_keys(text).await.unwrap();
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    async fn login(&self, base: &str, token: &str) {
        self.goto(&format!("{base}/")).await;
        self.wait_text("main", "Operator API token", Duration::from_secs(20))
            .await;
        self.type_into("#token", token).await;
        self.click("#login button[type=submit]").await;
        self.wait_text("#who", "(", Duration::from_secs(20)).await;
    }

    /// `fetch` from inside the page (with its cookie): `[status, body]`.
    async fn fetch(&self, method: &str, path: &str, csrf: bool) -> (u64, Value) {
        let out = self
            .client
            .execute_async(
                "const [method, path, csrf, done] = arguments;
                 const headers = csrf ? {'X-Drover-CSRF': '1'} : {};
                 fetch(path, {method, headers, credentials: 'same-origin'})
                   .then(async r => done([r.status, await r.text()]))
                   .catch(e => done([0, String(e)]));",
                vec![json!(method), json!(path), json!(csrf)],
            )
            .await
            .unwrap();
        let status = out[0].as_u64().unwrap();
        let body = serde_json::from_str(out[1].as_str().unwrap_or("null")).unwrap_or(Value::Null);
        (status, body)
    }

    async fn close(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
    }
}

/// The fixture's requests, as the admin.
impl TestServer {
    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    /// 30 devices over three regions, a release for them and a rollout that stays running.
    async fn fixture(&self) -> String {
        for i in 0..30 {
            let region = ["eu-west", "us-east", "ap-south"][i % 3];
            self.api(
                reqwest::Method::POST,
                "/devices",
                Some(json!({"id": format!("meter-{i:03}"), "device_type": "meter", "firmware": "1.0.0",
                            "region": region, "status": "active", "tags": {"env": "prod"}})),
            )
            .await;
        }
        let image = self.dir.path.join("meter-fw.img");
        std::fs::write(
            &image,
            (0..8000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>(),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_drover"))
            .args([
                "artifacts",
                "upload",
                image.to_str().unwrap(),
                "--name",
                "meter-fw",
                "--version",
                "1.1.0",
                "--device-type",
                "meter",
            ])
            .env("DROVER_SERVER", &self.base)
            .env("DROVER_TOKEN", ADMIN_TOKEN)
            .env_remove("DROVER_CONFIG")
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rollout = self
            .api(
                reqwest::Method::POST,
                "/rollouts",
                Some(json!({"name": "meter 1.1.0", "artifact": "meter-fw", "version": "1.1.0",
                            "target": {"query": "device_type = meter"},
                            "strategy": {"phases": [{"percent": 10, "soak": "1h"}, {"percent": 100, "soak": "1h"}]}})),
            )
            .await;
        rollout["id"].to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_searches_devices_and_pauses_a_rollout_and_a_viewer_cannot() {
    if !enabled() {
        return;
    }
    let _one = ONE_BROWSER.lock().await;
    let app = spawn_server().await;
    let rollout = app.fixture().await;
    let viewer = app
        .api(
            reqwest::Method::POST,
            "/tokens",
            Some(json!({"name": "wall screen", "role": "viewer"})),
        )
        .await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = Browser::start().await;
    let base = &app.base;

    // The login page refuses a wrong token inline and keeps the form.
    b.goto(&format!("{base}/")).await;
    b.wait_text("main", "Operator API token", Duration::from_secs(20))
        .await;
    b.type_into("#token", "drv_op_not_a_real_token").await;
    b.click("#login button[type=submit]").await;
    let error = b
        .wait_text("#login-error", "Not accepted", Duration::from_secs(10))
        .await;
    assert!(error.contains("unknown API token"), "{error}");
    assert_eq!(
        b.js(
            "return document.querySelector('#token').getAttribute('aria-invalid')",
            vec![]
        )
        .await,
        json!("true")
    );

    // Accessibility basics on the login page: a labelled field, reachable by keyboard.
    let unlabeled = b
        .js("return [...document.querySelectorAll('input, select, textarea')].filter(e => e.labels.length === 0 && !e.getAttribute('aria-label')).map(e => e.outerHTML)", vec![])
        .await;
    assert_eq!(unlabeled, json!([]), "form fields without a label");

    b.login(base, ADMIN_TOKEN).await;

    // Devices: a fleet query narrows the list; a broken one is explained next to the box.
    b.goto(&format!("{base}/#/devices")).await;
    b.wait_text(
        "#device-count",
        "30 matching devices",
        Duration::from_secs(20),
    )
    .await;
    b.type_into("#q", "region = eu-west AND tags.env = prod")
        .await;
    b.click("form.search button[type=submit]").await;
    b.wait_text(
        "#device-count",
        "10 matching devices",
        Duration::from_secs(20),
    )
    .await;
    let rows = b.js("return [...document.querySelectorAll('#devices-table tbody tr')].map(r => r.cells[5].innerText)", vec![]).await;
    assert_eq!(rows.as_array().unwrap().len(), 10, "{rows}");
    assert!(
        rows.as_array().unwrap().iter().all(|r| r == "eu-west"),
        "{rows}"
    );
    assert!(
        b.client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains("q=region"),
        "the query is in the URL"
    );
    b.screenshot("devices-search").await;
    b.type_into("#q", "region == eu-west").await;
    b.click("form.search button[type=submit]").await;
    let error = b
        .wait_until(
            "return document.querySelector('#q-error').innerText",
            Duration::from_secs(10),
        )
        .await;
    let error = error.as_str().unwrap();
    assert!(
        error.to_lowercase().contains("column") || error.contains("expected"),
        "{error}"
    );
    assert_eq!(
        b.js(
            "return document.querySelector('#q').getAttribute('aria-invalid')",
            vec![]
        )
        .await,
        json!("true")
    );
    assert_eq!(
        b.js("return document.querySelector('#q').value", vec![])
            .await,
        json!("region == eu-west"),
        "what was typed stays"
    );

    // A device's page: identity, tags and the (empty) health and shadow sections.
    b.goto(&format!("{base}/#/devices/meter-004")).await;
    let page = b
        .wait_text("main", "Identity", Duration::from_secs(20))
        .await;
    assert!(
        page.contains("us-east") && page.contains("env") && page.contains("1.0.0"),
        "{page}"
    );

    // Rollouts: open the rollout from the list and pause it with a reason.
    b.goto(&format!("{base}/#/rollouts")).await;
    b.wait_text("#rollouts-table", "meter 1.1.0", Duration::from_secs(20))
        .await;
    b.click("#rollouts-table a").await;
    b.wait_text("main h1", "running", Duration::from_secs(20))
        .await;
    b.wait_text("main", "Decision log", Duration::from_secs(20))
        .await;
    b.type_into("#reason", "checking the meters first").await;
    b.click("#cmd-pause").await;
    b.wait_text("main h1", "paused", Duration::from_secs(20))
        .await;
    b.wait_text(
        "#decisions",
        "checking the meters first",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        b.js(
            "return document.querySelector('#cmd-pause').disabled",
            vec![]
        )
        .await,
        json!(true)
    );
    assert_eq!(
        b.js(
            "return document.querySelector('#cmd-resume').disabled",
            vec![]
        )
        .await,
        json!(false)
    );
    b.screenshot("rollout-paused").await;
    let shown = app
        .api(reqwest::Method::GET, &format!("/rollouts/{rollout}"), None)
        .await;
    assert_eq!(shown["status"], "paused", "{shown}");

    // The session cookie alone cannot change anything: the CSRF header is required.
    let (status, body) = b
        .fetch("POST", &format!("/api/v1/rollouts/{rollout}/resume"), false)
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-drover-csrf"),
        "{body}"
    );

    // The overview: counts, the active rollout (now paused, so also an alert).
    b.goto(&format!("{base}/#/")).await;
    let overview = b
        .wait_text("main", "Rollouts in progress", Duration::from_secs(20))
        .await;
    b.wait_text("main", "meter 1.1.0", Duration::from_secs(20))
        .await;
    assert!(overview.contains("Fleet overview"), "{overview}");
    b.wait_text(".stats", "30", Duration::from_secs(10)).await;
    let alert = b.text(".alerts").await;
    assert!(
        alert.contains("critical") && alert.contains("checking the meters first"),
        "the paused rollout is an alert with its reason: {alert}"
    );
    b.screenshot("overview").await;

    // Keyboard: Tab from the top of the page reaches the skip link, then the navigation.
    b.client.refresh().await.unwrap();
    b.wait_text("main", "Rollouts in progress", Duration::from_secs(20))
        .await;
    let body = b.client.active_element().await.unwrap();
    body.send_keys("\u{e004}").await.unwrap(); // Tab
    let focused = b
        .js("return document.activeElement.textContent", vec![])
        .await;
    assert_eq!(focused, json!("Skip to content"));
    let mut reached = Vec::new();
    for _ in 0..3 {
        b.client
            .active_element()
            .await
            .unwrap()
            .send_keys("\u{e004}")
            .await
            .unwrap();
        reached.push(
            b.js("return document.activeElement.textContent.trim()", vec![])
                .await,
        );
    }
    assert_eq!(
        reached,
        vec![json!("Drover"), json!("Overview"), json!("Versions")],
        "tab order"
    );

    // Contrast: body text, muted text and the active navigation link against their backgrounds.
    let contrast = b
        .js(
            "function lum(c) { const [r, g, b] = c.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number).map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; }
             function ratio(el, bgEl) { const a = lum(getComputedStyle(el).color), b = lum(getComputedStyle(bgEl).backgroundColor); return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05); }
             const card = document.querySelector('.card');
             return { body: ratio(document.querySelector('h1'), document.documentElement),
                      muted: ratio(document.querySelector('.stat-note'), document.querySelector('.stat')),
                      nav: ratio(document.querySelector('#nav a[aria-current=page]'), document.querySelector('#nav a[aria-current=page]')),
                      navOther: ratio(document.querySelector('#nav a:not([aria-current])'), document.querySelector('#top')),
                      card: ratio(card.querySelector('h2'), card) };",
            vec![],
        )
        .await;
    for (name, value) in contrast.as_object().unwrap() {
        assert!(
            value.as_f64().unwrap() >= 4.5,
            "contrast of {name} is {value} (< 4.5:1): {contrast}"
        );
    }

    // Every page renders without an error box.
    for page in [
        "#/",
        "#/versions",
        "#/devices",
        &format!("#/rollouts/{rollout}"),
        "#/devices/meter-001",
        "#/jobs",
        "#/artifacts",
        "#/audit",
    ] {
        b.goto(&format!("{base}/{page}")).await;
        b.wait_until(
            "return document.querySelector('main > div')?.dataset.loaded === 'true'",
            Duration::from_secs(20),
        )
        .await;
        let errors = b
            .js(
                "return [...document.querySelectorAll('.notice.error')].map(e => e.innerText)",
                vec![],
            )
            .await;
        assert_eq!(errors, json!([]), "{page}");
        let unlabeled = b
            .js("return [...document.querySelectorAll('input, select, textarea, button')].filter(e => e.labels?.length === 0 && !e.getAttribute('aria-label') && !(e.tagName === 'BUTTON' && e.textContent.trim())).map(e => e.outerHTML)", vec![])
            .await;
        assert_eq!(unlabeled, json!([]), "{page}: controls without a label");
    }
    b.goto(&format!("{base}/#/artifacts")).await;
    let artifacts = b
        .wait_text("main", "meter-fw 1.1.0", Duration::from_secs(20))
        .await;
    assert!(
        artifacts.contains("meter-fw 1.1.0")
            && artifacts.contains("7.8 KiB")
            && artifacts.contains("SHA-256"),
        "{artifacts}"
    );
    b.goto(&format!("{base}/#/audit")).await;
    b.wait_text("main", "rollout.pause", Duration::from_secs(20))
        .await;

    // Logout revokes the session: its cookie no longer works.
    b.click("#logout").await;
    b.wait_text("#login-error", "logged out", Duration::from_secs(10))
        .await;
    let (status, _) = b.fetch("GET", "/api/v1/whoami", false).await;
    assert_eq!(status, 401);

    // A viewer sees the rollout but no commands, and the API refuses its session's commands.
    b.login(base, &viewer).await;
    b.goto(&format!("{base}/#/rollouts/{rollout}")).await;
    b.wait_text(
        "main",
        "Your role can look but not command rollouts",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        b.js(
            "return document.querySelectorAll('#cmd-resume').length",
            vec![]
        )
        .await,
        json!(0)
    );
    let (status, body) = b
        .fetch("POST", &format!("/api/v1/rollouts/{rollout}/resume"), true)
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("operator"),
        "{body}"
    );

    b.close().await;
    app.server.shutdown().await.unwrap();
}

/// Reads the demo's stdout in the background, keeping every line.
fn collect_lines(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stdout = child.stdout.take().unwrap();
    let sink = out.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut all = sink.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        }
    });
    out
}

fn field_after(text: &str, label: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_pauses_the_bad_release_with_battery_evidence_and_the_fix_reaches_the_fleet() {
    if !enabled() {
        return;
    }
    let _one = ONE_BROWSER.lock().await;
    let devices = std::env::var("DROVER_BROWSER_DEMO_DEVICES").unwrap_or_else(|_| "100".into());
    let mut demo = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["demo", "--devices", &devices, "--soak", "10s"])
        .env_remove("DROVER_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = collect_lines(&mut demo);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (base, token) = loop {
        let text = out.lock().unwrap().clone();
        if let (Some(url), Some(token)) =
            (field_after(&text, "Dashboard"), field_after(&text, "Token"))
        {
            break (url.trim_end_matches('/').to_owned(), token);
        }
        assert!(
            Instant::now() < deadline,
            "the demo printed no dashboard URL and token:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let b = Browser::start().await;
    // Tall enough for a rollout's gate evidence and the adoption curves' legend in one screenshot.
    b.client.set_window_size(1400, 1500).await.unwrap();
    b.login(&base, &token).await;

    // The bad release: its rollout pauses itself at the canary and rolls back, with the battery
    // evidence on the rollout page.
    b.goto(&format!("{base}/#/rollouts")).await;
    b.wait_text("#rollouts-table", "rolled back", Duration::from_secs(240))
        .await;
    let link = b
        .js("return [...document.querySelectorAll('#rollouts-table tbody tr')].find(r => r.innerText.includes('2.3.0')).querySelector('a').getAttribute('href')", vec![])
        .await;
    b.goto(&format!("{base}/{}", link.as_str().unwrap())).await;
    b.wait_text("main h1", "rolled back", Duration::from_secs(20))
        .await;
    let gates = b
        .wait_text("main", "Gate verdicts", Duration::from_secs(20))
        .await;
    let evidence = b.text(".gate.v-fail").await;
    assert!(
        evidence.contains("battery_ma") && evidence.contains("fail"),
        "{evidence}\n{gates}"
    );
    b.screenshot("demo-rollout-rolled-back").await;

    // The fix reaches the fleet: the versions page shows 2.3.1 on top.
    b.goto(&format!("{base}/#/rollouts")).await;
    b.wait_text("#rollouts-table", "completed", Duration::from_secs(300))
        .await;
    b.goto(&format!("{base}/#/versions")).await;
    let top = b
        .wait_text("main table tbody tr", "2.3.1", Duration::from_secs(30))
        .await;
    assert!(top.contains('%'), "{top}");
    b.wait_text("main", "Adoption over time", Duration::from_secs(10))
        .await;
    b.screenshot("demo-versions").await;
    b.goto(&format!("{base}/#/")).await;
    // The page writes counts with thousands separators.
    let shown = devices
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(",");
    b.wait_text(".stats", &shown, Duration::from_secs(20)).await;
    b.screenshot("demo-overview").await;

    // A device's page charts its heartbeats: the battery current the bad release drew shows.
    b.goto(&format!("{base}/#/devices?q=firmware%20%3D%202.3.1"))
        .await;
    b.wait_text("#device-count", "matching devices", Duration::from_secs(20))
        .await;
    b.click("#devices-table tbody a").await;
    b.wait_until(
        "return document.querySelectorAll('.small-chart svg path').length > 0",
        Duration::from_secs(20),
    )
    .await;
    let charts = b.text(".charts").await;
    assert!(charts.contains("battery_ma"), "{charts}");
    b.screenshot("demo-device").await;

    b.close().await;
    let _ = demo.kill().await;
    let text = out.lock().unwrap().clone();
    assert!(text.contains("devices updated to v2.3.1."), "{text}");
}
