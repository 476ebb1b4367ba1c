// The dashboard's detail pages: one device (identity, shadow, health charts, deployments,
// diagnostics), one rollout (phases, device states, gate evidence, decision log, operator
// commands) and one job (progress, executions and their results).

import * as api from "./api.js";
import { h, mount, num, pct, when, badge, link, table, facts, json, section, notice } from "./dom.js";
import { barChart, lineChart, progress, PALETTE } from "./charts.js";
import { jobProgress } from "./pages.js";

function fixed(value, digits = 3) {
  if (value === undefined || value === null) return "—";
  return Math.abs(value) >= 1000 ? num(Math.round(value)) : Number(value.toPrecision(digits)).toString();
}

function signedPct(x) {
  if (x === undefined || x === null) return "—";
  return `${x >= 0 ? "+" : ""}${(x * 100).toFixed(1)}%`;
}

// ---- device ------------------------------------------------------------------------------------

const DIAG_ACTIONS = [
  ["system_info", "System info"],
  ["ping", "Ping"],
  ["log_tail", "Log tail"],
  ["config_dump", "Config dump"],
];

export function device(params, ctx) {
  const id = params.id;
  const identity = h("div");
  const shadow = h("div");
  const health = h("div");
  const deployments = h("div");
  const connectivity = h("div");
  const diagOut = h("div", { class: "diag-out", "aria-live": "polite" });
  const range = h(
    "select",
    { id: "health-range", name: "since" },
    ["1h", "6h", "24h", "7d"].map((r) => h("option", { value: r, selected: r === "24h" }, r)),
  );
  range.addEventListener("change", () => refresh());

  async function diagnose(action, confirm) {
    mount(diagOut, h("p", { class: "muted" }, `Asking ${id} (${action.replace("_", " ")})…`));
    try {
      const answer = await api.post(`/devices/${encodeURIComponent(id)}/diagnostics`, { action, confirm, lines: action === "log_tail" ? 100 : undefined });
      mount(
        diagOut,
        h("h3", {}, `${action.replace("_", " ")} — answered ${answer.answered_at ? when(answer.answered_at).textContent : "now"}`),
        answer.error ? notice("error", `The device could not answer: ${answer.error}`) : null,
        answer.result !== undefined ? (Array.isArray(answer.result?.lines) ? h("pre", { class: "log" }, answer.result.lines.join("\n")) : json(answer.result)) : null,
      );
    } catch (e) {
      if (e.code === "confirmation_required" && e.details?.details?.token) {
        const token = e.details.details.token;
        const yes = h("button", { type: "button", class: "danger" }, "Reboot now");
        const no = h("button", { type: "button" }, "Cancel");
        yes.addEventListener("click", () => diagnose("reboot", token));
        no.addEventListener("click", () => mount(diagOut));
        mount(diagOut, notice("warning", h("p", {}, `Reboot ${id}? It goes offline while it restarts. `), yes, " ", no));
        yes.focus();
        return;
      }
      mount(diagOut, notice("error", e.message));
    }
  }

  const buttons = ctx.canOperate
    ? h(
        "div",
        { class: "buttons" },
        DIAG_ACTIONS.map(([action, label]) => h("button", { type: "button", onclick: () => diagnose(action) }, label)),
        h("button", { type: "button", class: "danger", onclick: () => diagnose("reboot") }, "Reboot…"),
      )
    : h("p", { class: "muted" }, "Diagnostics need the operator role.");

  const node = h(
    "div",
    {},
    h("p", { class: "crumbs" }, link("#/devices", "Devices"), " / ", id),
    h("h1", {}, id),
    identity,
    section("Health", h("p", {}, h("label", { for: "health-range" }, "Show the last "), range), health),
    section("Shadow", shadow),
    section("Deployments", deployments),
    section("Connectivity changes", connectivity),
    section("Diagnostics", h("p", { class: "muted" }, "Ask the device now; it answers over MQTT or its next long-poll."), buttons, diagOut),
  );

  async function refresh() {
    const path = `/devices/${encodeURIComponent(id)}`;
    const [d, groups] = await Promise.all([api.get(path), api.get(`${path}/groups`).catch(() => ({ groups: [] }))]);
    mount(
      identity,
      h(
        "div",
        { class: "grid2" },
        section(
          "Identity",
          facts([
            ["Status", badge(d.status)],
            ["Connectivity", [badge(d.connectivity), d.link_score !== undefined && d.link_score !== null ? ` link score ${d.link_score}/100` : ""]],
            ["Firmware", d.firmware || "unknown"],
            ["Device type", d.device_type],
            ["Hardware id", d.hw_id || "—"],
            ["Hardware revision", d.hw_rev || "—"],
            ["Region / site", `${d.region || "—"} / ${d.site || "—"}`],
            ["Last seen", when(d.last_seen)],
            ["Registered", when(d.created_at)],
          ]),
        ),
        section(
          "Tags and groups",
          Object.keys(d.tags || {}).length === 0 ? h("p", { class: "muted" }, "No tags.") : facts(Object.entries(d.tags).map(([k, v]) => [k, v])),
          h("p", {}, "Groups: ", groups.groups.length === 0 ? h("span", { class: "muted" }, "none") : groups.groups.join(", ")),
        ),
      ),
    );
    const [samples, latest, sh, deps, conn] = await Promise.all([
      api.get(`${path}/health/samples`, { since: range.value }),
      api.get(`${path}/health`).catch((e) => (e.status === 404 ? null : Promise.reject(e))),
      api.get(`${path}/shadow`).catch((e) => (e.status === 404 ? null : Promise.reject(e))),
      api.get(`${path}/deployments`),
      api.get(`${path}/connectivity`, { limit: 20 }),
    ]);
    const metrics = [...new Set(samples.flatMap((sample) => Object.keys(sample.metrics)))].sort();
    mount(
      health,
      latest ? h("p", {}, "Latest heartbeat ", when(latest.observed_at), latest.boot_slot ? ` (boot slot ${latest.boot_slot})` : "", ": ", Object.entries(latest.metrics).map(([k, v]) => `${k} ${fixed(v)}`).join(", ")) : h("p", { class: "muted" }, "No heartbeat yet."),
      metrics.length === 0
        ? h("p", { class: "muted" }, "No samples in this window.")
        : h(
            "div",
            { class: "charts" },
            metrics.slice(0, 8).map((metric, i) =>
              h(
                "div",
                { class: "small-chart" },
                h("h3", {}, metric),
                lineChart([{ name: metric, color: PALETTE[i % PALETTE.length], points: samples.filter((x) => metric in x.metrics).map((x) => ({ at: x.observed_at, value: x.metrics[metric] })) }], {
                  unit: metric,
                  title: `${metric} of ${id}`,
                  width: 460,
                  height: 200,
                }),
              ),
            ),
          ),
    );
    mount(
      shadow,
      sh
        ? h(
            "div",
            { class: "grid3" },
            h("div", {}, h("h3", {}, "Desired"), json(sh.state.desired)),
            h("div", {}, h("h3", {}, "Reported"), json(sh.state.reported)),
            h("div", {}, h("h3", {}, "Delta (desired, not yet reported)"), sh.state.delta ? json(sh.state.delta) : h("p", { class: "muted" }, "In sync.")),
            h("p", { class: "muted" }, `Version ${sh.version}, updated `, when(sh.timestamp)),
          )
        : h("p", { class: "muted" }, "No shadow."),
    );
    mount(
      deployments,
      table(
        null,
        ["#", "Release", "From", "State", "Attempt", "Delta", "Created", "Finished", "Reason"],
        deps.map((dep) => [
          String(dep.id),
          `${dep.artifact} ${dep.version}`,
          dep.from_version || "—",
          badge(dep.state),
          String(dep.attempt),
          dep.used_delta === true ? "yes" : dep.used_delta === false ? "no" : "—",
          when(dep.created_at),
          dep.finished_at ? when(dep.finished_at) : "—",
          dep.reason || "",
        ]),
      ),
    );
    mount(connectivity, table(null, ["When", "From", "To"], conn.history.map((c) => [when(c.at), badge(c.from), badge(c.to)])));
  }
  return { node, refresh };
}

// ---- rollout -----------------------------------------------------------------------------------

const COMMANDS = [
  // [command, label, enabled when, needs confirmation]
  ["pause", "Pause", (r) => r.status === "running", false],
  ["resume", "Resume", (r) => r.status === "paused", false],
  ["approve", "Approve next phase", (r) => r.status === "running" && /approv/i.test(r.waiting_for || ""), false],
  ["abort", "Abort", (r) => r.status === "running" || r.status === "paused", true],
  ["rollback", "Roll back", (r) => r.status !== "rolled_back", true],
];

/** Good green, under way blue, waiting amber, bad vermillion, the rest grey. */
const COUNT_COLORS = {
  succeeded: "#009E73",
  in_flight: "#0072B2",
  retry_waiting: "#E69F00",
  failed: "#D55E00",
  rolled_back: "#D55E00",
  timed_out: "#D55E00",
  revert_failed: "#D55E00",
  reverted: "#CC79A7",
};

const COUNT_ORDER = ["succeeded", "in_flight", "retry_waiting", "failed", "rolled_back", "timed_out", "rejected", "skipped", "canceled", "reverted", "revert_failed"];

export function rollout(params, ctx) {
  const id = params.id;
  const header = h("div");
  const phases = h("div");
  const counts = h("div");
  const gates = h("div");
  const decisions = h("div");
  const devicesBox = h("div");
  const message = h("div", { "aria-live": "polite" });
  const reason = h("input", { id: "reason", name: "reason", placeholder: "why, for the decision log" });
  const buttons = COMMANDS.map(([command, label, , confirmIt]) => {
    const button = h("button", { type: "button", id: `cmd-${command}`, class: confirmIt ? "danger" : null }, label);
    button.addEventListener("click", async () => {
      if (confirmIt && !window.confirm(`${label} rollout ${id}? This cannot be undone.`)) return;
      button.disabled = true;
      try {
        const body = reason.value.trim() ? { reason: reason.value.trim() } : undefined;
        const after = await api.post(`/rollouts/${id}/${command}`, ["pause", "abort", "rollback"].includes(command) ? body || {} : undefined);
        mount(message, notice("ok", `${label}: the rollout is now ${after.status.replace("_", " ")}.`));
        ctx.announce(`Rollout ${id} ${after.status}`);
        reason.value = "";
      } catch (e) {
        mount(message, notice("error", `${label} failed: ${e.message}`));
      }
      await refresh();
    });
    return button;
  });
  const controls = ctx.canOperate
    ? h("div", { class: "controls" }, h("label", { for: "reason" }, "Reason "), reason, h("div", { class: "buttons" }, buttons), message)
    : h("p", { class: "muted" }, "Your role can look but not command rollouts.");

  const node = h(
    "div",
    {},
    h("p", { class: "crumbs" }, link("#/rollouts", "Rollouts"), " / ", id),
    header,
    controls,
    h("div", { class: "grid2" }, section("Phases", phases), section("Devices by state", counts)),
    section("Gate verdicts", gates),
    section("Decision log", decisions),
    section("Devices", devicesBox),
  );

  async function refresh() {
    const [r, log, devs] = await Promise.all([
      api.get(`/rollouts/${id}`),
      api.get(`/rollouts/${id}/decisions`),
      api.get(`/rollouts/${id}/devices`, { limit: 50 }),
    ]);
    mount(
      header,
      h("h1", {}, r.name, " ", badge(r.status)),
      h("p", {}, `${r.artifact} ${r.version}, created `, when(r.created_at), ` by ${r.created_by}. `, r.waiting_for ? `Now: ${r.waiting_for}.` : ""),
      r.reason ? notice(r.status === "completed" ? "ok" : "warning", h("strong", {}, r.status === "paused" ? "Paused: " : "Why: "), r.reason) : null,
    );
    COMMANDS.forEach(([, , enabled], i) => {
      buttons[i].disabled = !enabled(r);
    });
    const list = r.spec?.strategy?.phases;
    const c = r.counts || {};
    mount(
      phases,
      list
        ? h(
            "ol",
            { class: "phases" },
            list.map((phase, i) => {
              const n = i + 1;
              const state = n < r.phase || r.status === "completed" ? "done" : n === r.phase ? "current" : "later";
              return h(
                "li",
                { class: `phase ${state}` },
                h("strong", {}, `${phase.percent}%`),
                ` soak ${phase.soak}${phase.approval ? ", needs approval" : ""} `,
                state === "current" ? badge(r.status === "running" ? "current" : r.status) : state === "done" ? badge("done") : "",
              );
            }),
          )
        : h("p", {}, `Rate strategy: phase ${r.phase} of ${r.n_phases}.`),
      h("p", {}, "Updated devices of the whole target:"),
      progress(c.succeeded || 0, c.target || 0, "Updated devices"),
    );
    mount(
      counts,
      barChart(
        COUNT_ORDER.filter((key) => (c[key] || 0) > 0 || ["succeeded", "failed", "in_flight"].includes(key)).map((key) => ({ label: key.replaceAll("_", " "), value: c[key] || 0, color: COUNT_COLORS[key] || "#7A7A7A" })),
        { unit: "devices", title: "Rollout devices by state" },
      ),
      h("p", { class: "muted" }, `${num(c.target)} devices in the target, ${num(c.assigned)} offered the release so far.`),
    );
    mount(
      gates,
      r.gates.length === 0
        ? h("p", { class: "muted" }, "No gate has judged a phase yet.")
        : [...r.gates].reverse().map((g) =>
            h(
              "div",
              { class: `gate v-${g.verdict}` },
              h("h3", {}, `Phase ${g.phase + 1} gate: `, badge(g.verdict), " ", h("span", { class: "muted" }, `${num(g.n_canary)} canary vs ${num(g.n_baseline)} baseline devices, `, when(g.at))),
              table(
                null,
                ["Metric", "Test", "Verdict", "Canary", "Baseline", "Effect", "Confidence", "p", "Note"],
                g.metrics.map((m) => [
                  h("strong", {}, m.metric),
                  m.test.replaceAll("_", " "),
                  badge(m.verdict),
                  fixed(m.canary),
                  fixed(m.baseline),
                  signedPct(m.effect),
                  m.confidence === undefined || m.confidence === null ? "—" : pct(m.confidence, 2),
                  m.p_value === undefined || m.p_value === null ? "—" : m.p_value.toExponential(1),
                  m.note || "",
                ]),
                { class: "evidence" },
              ),
            ),
          ),
    );
    mount(
      decisions,
      table(
        null,
        ["When", "Phase", "Kind", "By", "Decision"],
        [...log].reverse().map((d) => [
          when(d.at),
          String(d.phase),
          d.alert ? [badge("alert"), " ", d.kind] : d.kind,
          d.actor,
          [d.message, d.evidence ? h("details", {}, h("summary", {}, "evidence"), json(d.evidence)) : null],
        ]),
        { id: "decisions" },
      ),
    );
    mount(
      devicesBox,
      table(
        null,
        ["Device", "State", "Attempt", "Baseline", "From", "Finished", "Reason"],
        devs.items.map((d) => [
          link(`#/devices/${encodeURIComponent(d.device)}`, d.device),
          badge(d.state),
          String(d.attempt),
          d.baseline ? "yes" : "",
          d.from_version || "—",
          d.finished_at ? when(d.finished_at) : "—",
          d.reason || "",
        ]),
      ),
      devs.next_cursor ? h("p", { class: "muted" }, "The first 50 devices in dispatch order; `drover rollouts devices` lists them all.") : null,
    );
  }
  return { node, refresh };
}

// ---- job ---------------------------------------------------------------------------------------

export function job(params, ctx) {
  const id = params.id;
  const header = h("div");
  const executions = h("div");
  const message = h("div", { "aria-live": "polite" });
  const cancel = h("button", { type: "button", class: "danger" }, "Cancel job");
  cancel.addEventListener("click", async () => {
    if (!window.confirm(`Cancel job ${id}? Executions not yet started will not run.`)) return;
    try {
      await api.post(`/jobs/${id}/cancel`, {});
      mount(message, notice("ok", "Canceled."));
    } catch (e) {
      mount(message, notice("error", e.message));
    }
    refresh();
  });
  const node = h("div", {}, h("p", { class: "crumbs" }, link("#/jobs", "Jobs"), " / ", id), header, ctx.canOperate ? h("div", { class: "buttons" }, cancel) : null, message, section("Executions", executions));
  async function refresh() {
    const [j, ex] = await Promise.all([api.get(`/jobs/${id}`), api.get(`/jobs/${id}/executions`, { limit: 200 })]);
    cancel.disabled = j.state !== "running";
    mount(
      header,
      h("h1", {}, j.name, " ", badge(j.state)),
      facts([
        ["Kind", j.kind],
        ["Progress", jobProgress(j)],
        ["Succeeded / failed / timed out", `${num(j.progress.succeeded)} / ${num(j.progress.failed)} / ${num(j.progress.timed_out)}`],
        ["At most in parallel", j.max_parallel ? num(j.max_parallel) : "no limit"],
        ["Timeout, retries", `${j.timeout}, ${j.retries}`],
        ["Created", [when(j.created_at), ` by ${j.created_by}`]],
      ]),
      j.payload ? h("details", {}, h("summary", {}, "Payload"), json(j.payload)) : null,
    );
    mount(
      executions,
      table(
        null,
        ["Device", "State", "Attempt", "Updated", "Result"],
        ex.items.map((e) => [
          link(`#/devices/${encodeURIComponent(e.device)}`, e.device),
          badge(e.state),
          String(e.attempt),
          when(e.updated_at),
          e.error ? h("span", { class: "error-text" }, e.error) : e.result !== undefined && e.result !== null ? h("details", {}, h("summary", {}, "result"), json(e.result)) : "",
        ]),
      ),
      ex.next_cursor ? h("p", { class: "muted" }, "The first 200 executions; `drover jobs executions` lists them all.") : null,
    );
  }
  return { node, refresh };
}

