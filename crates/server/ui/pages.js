// The dashboard's list and summary pages: fleet overview, versions, devices, rollouts, jobs,
// artifacts and the audit log. Each page is `{node, refresh}`: the app shows `node` once and calls
// `refresh` now and every few seconds, which replaces only the page's data (never what the
// operator is typing).

import * as api from "./api.js";
import { h, mount, num, pct, bytes, when, badge, link, table, section, notice } from "./dom.js";
import { barChart, lineChart, shareBar, progress, heatTable, PALETTE } from "./charts.js";

export const STATUS_COLORS = {
  active: "#009E73",
  provisioning: "#56B4E9",
  pending: "#E69F00",
  inactive: "#7F3C8D",
  error: "#D55E00",
  rejected: "#CC79A7",
  decommissioned: "#7A7A7A",
};
export const CONNECTIVITY_COLORS = { online: "#009E73", degraded: "#E69F00", offline: "#D55E00", unknown: "#9A9A9A" };

function entries(map, order) {
  const keys = order ? [...order, ...Object.keys(map || {}).filter((k) => !order.includes(k))] : Object.keys(map || {});
  return keys.map((key) => [key, (map || {})[key] || 0]);
}

/** One rollout's progress cell: finished devices against the target. */
export function rolloutProgress(rollout) {
  const c = rollout.counts || {};
  const finished = (c.succeeded || 0) + (c.failed || 0) + (c.rolled_back || 0) + (c.timed_out || 0) + (c.rejected || 0) + (c.skipped || 0) + (c.canceled || 0);
  return progress(c.succeeded || 0, c.target || 0, `${rollout.name}: ${num(c.succeeded || 0)} of ${num(c.target || 0)} devices updated (${num(finished)} finished)`);
}

function rolloutRows(rollouts) {
  return rollouts.map((r) => [
    link(`#/rollouts/${r.id}`, r.name),
    `${r.artifact} ${r.version}`,
    badge(r.status),
    `${r.phase} of ${r.n_phases} (${Math.round(r.phase_percent)}%)`,
    rolloutProgress(r),
    r.reason || r.waiting_for || "",
  ]);
}

const ROLLOUT_HEADINGS = ["Rollout", "Release", "Status", "Phase", "Updated devices", "Now"];

// ---- overview ----------------------------------------------------------------------------------

export function overview() {
  const stats = h("div", { class: "stats" });
  const shares = h("div", { class: "grid2" });
  const alerts = h("div");
  const rollouts = h("div");
  const node = h(
    "div",
    {},
    h("h1", {}, "Fleet overview"),
    stats,
    shares,
    section("Alerts", alerts),
    section("Rollouts in progress", rollouts),
  );
  async function refresh() {
    const data = await api.get("/fleet/overview");
    const d = data.devices;
    const conn = d.by_connectivity || {};
    mount(
      stats,
      stat("Devices", num(d.total), "all but decommissioned"),
      stat("Active", num(d.by_status?.active), "accepted, may receive updates"),
      stat("Pending", num(d.by_status?.pending), "waiting for acceptance"),
      stat("Online", num((conn.online || 0) + (conn.degraded || 0)), `${num(conn.degraded || 0)} degraded`),
      stat("Offline", num(conn.offline), "not heard from in time"),
    );
    mount(
      shares,
      section("Devices by status", shareBar(entries(d.by_status, Object.keys(STATUS_COLORS)).filter(([label, value]) => value > 0 || label === "active").map(([label, value]) => ({ label, value, color: STATUS_COLORS[label] || "#505050" })), { title: "Devices by status" })),
      section("Connectivity", shareBar(entries(conn, ["online", "degraded", "offline", "unknown"]).map(([label, value]) => ({ label, value, color: CONNECTIVITY_COLORS[label] || "#505050" })), { title: "Connectivity" })),
    );
    mount(
      alerts,
      data.alerts.length === 0
        ? h("p", { class: "muted" }, "No alerts.")
        : h(
            "ul",
            { class: "alerts" },
            data.alerts.map((alert) =>
              h(
                "li",
                { class: `alert ${alert.severity}` },
                badge(alert.severity),
                " ",
                alert.rollout !== undefined && alert.rollout !== null ? link(`#/rollouts/${alert.rollout}`, alert.message) : alert.message,
              ),
            ),
          ),
    );
    mount(rollouts, table(null, ROLLOUT_HEADINGS, rolloutRows(data.active_rollouts || [])));
  }
  return { node, refresh };
}

function stat(label, value, note) {
  return h("div", { class: "stat" }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, value), h("div", { class: "stat-note" }, note));
}

// ---- versions ----------------------------------------------------------------------------------

export function versions(params) {
  const windowSelect = h(
    "select",
    { id: "window", name: "window" },
    ["1h", "24h", "7d", "30d", "90d"].map((w) => h("option", { value: w, selected: w === (params.window || "7d") }, w)),
  );
  const warnings = h("div");
  const distribution = h("div");
  const adoption = h("div");
  const top = h("div");
  const regions = h("div");
  const summary = h("p", { class: "muted" });
  windowSelect.addEventListener("change", () => {
    location.hash = `#/versions?window=${encodeURIComponent(windowSelect.value)}`;
  });
  const node = h(
    "div",
    {},
    h("h1", {}, "Firmware versions"),
    summary,
    warnings,
    h("div", { class: "grid2" }, section("Distribution", distribution), section("Top versions", top)),
    section("Adoption over time", h("p", {}, h("label", { for: "window" }, "Window "), windowSelect), adoption),
    section("By region", regions),
  );
  async function refresh() {
    const data = await api.get("/fleet/versions", { window: windowSelect.value });
    const n = data.versions.length;
    summary.textContent = `${num(data.total)} accepted devices on ${num(n)} firmware version${n === 1 ? "" : "s"}.`;
    mount(warnings, data.warnings.map((w) => notice("warning", h("strong", {}, w.kind === "fragmentation" ? "Fragmentation: " : "Slow adoption: "), w.message)));
    const shown = data.versions.slice(0, 10);
    const rest = data.versions.slice(10).reduce((sum, v) => sum + v.devices, 0);
    const items = shown.map((v, i) => ({ label: v.version || "unknown", value: v.devices, color: PALETTE[i % PALETTE.length] }));
    if (rest > 0) items.push({ label: `${data.versions.length - 10} others`, value: rest, color: "#9A9A9A" });
    mount(distribution, barChart(items, { unit: "devices", title: "Devices per firmware version", share: data.total }));
    mount(
      top,
      table(
        null,
        ["Version", "Devices", "Share"],
        data.versions.slice(0, 15).map((v) => [
          link(`#/devices?q=${encodeURIComponent(v.version ? `firmware = "${v.version}"` : "NOT firmware EXISTS")}`, v.version || "unknown"),
          h("span", { class: "num" }, num(v.devices)),
          h("span", { class: "num" }, pct(v.share)),
        ]),
      ),
    );
    // One colour per version across the bar chart and the curves: current versions first, then
    // versions the fleet has left, each taking the next unused colour.
    const colorOf = Object.fromEntries(shown.map((v, i) => [v.version, PALETTE[i % PALETTE.length]]));
    let next = shown.length;
    for (const series of data.history) {
      if (!(series.version in colorOf)) colorOf[series.version] = PALETTE[next++ % PALETTE.length];
    }
    mount(
      adoption,
      lineChart(
        data.history.map((series) => ({
          name: series.version || "unknown",
          color: colorOf[series.version],
          points: series.points.map((p) => ({ at: p.at, value: p.devices })),
        })),
        { unit: "devices", title: "Devices per version over time", step: true },
      ),
    );
    const columns = data.versions.slice(0, 6).map((v) => v.version);
    mount(
      regions,
      data.regions.length === 0
        ? h("p", { class: "muted" }, "No devices.")
        : heatTable(
            "Share of each region's devices on each of the top versions",
            columns,
            data.regions.map((r) => ({ label: r.region, total: r.total, cells: r.versions })),
          ),
    );
  }
  return { node, refresh };
}

// ---- devices -----------------------------------------------------------------------------------

const PAGE_SIZE = 50;

export function devices(params) {
  const input = h("input", {
    id: "q",
    name: "q",
    type: "search",
    value: params.q || "",
    placeholder: 'e.g. region = eu-west AND connectivity = offline',
    autocomplete: "off",
    spellcheck: "false",
    "aria-describedby": "q-help q-error",
  });
  const sort = h(
    "select",
    { id: "sort", name: "sort" },
    [["id", "Id"], ["last_seen", "Last seen"], ["firmware", "Firmware"], ["created_at", "Created"], ["updated_at", "Updated"]].map(([value, label]) =>
      h("option", { value, selected: value === (params.sort || "id") }, label),
    ),
  );
  const error = h("p", { id: "q-error", class: "field-error", role: "alert" });
  const count = h("p", { class: "muted", id: "device-count" });
  const results = h("div");
  const prev = h("button", { type: "button", disabled: true }, "← Previous");
  const next = h("button", { type: "button", disabled: true }, "Next →");
  const cursors = [null];
  let page = 0;
  const form = h(
    "form",
    { class: "search", role: "search" },
    h("label", { for: "q" }, "Fleet query"),
    h("div", { class: "row" }, input, h("label", { for: "sort", class: "inline" }, "Sort by"), sort, h("button", { type: "submit" }, "Search")),
    h(
      "p",
      { id: "q-help", class: "help" },
      "Filter on id, device_type, status, connectivity, firmware, region, site, hw_rev, tags.KEY, group and health metrics (battery_v, temp_c, …), with = != < > IN, AND, OR, NOT. Empty shows every device.",
    ),
    error,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    if (input.value.trim()) query.set("q", input.value.trim());
    if (sort.value !== "id") query.set("sort", sort.value);
    const target = `#/devices${query.toString() ? `?${query}` : ""}`;
    if (location.hash === target) {
      cursors.length = 1;
      page = 0;
      counted = null;
      refresh();
    } else {
      location.hash = target;
    }
  });
  prev.addEventListener("click", () => {
    if (page > 0) {
      page -= 1;
      refresh();
    }
  });
  next.addEventListener("click", () => {
    if (cursors[page + 1]) {
      page += 1;
      refresh();
    }
  });
  const node = h("div", {}, h("h1", {}, "Devices"), form, count, results, h("nav", { class: "pager", "aria-label": "Pages" }, prev, h("span", { id: "page-no" }), next));
  // A count walks every matching device (about 0.1 s for a million), so the live refresh
  // recounts at most every 30 s; the page itself is a keyset read and refreshes every time.
  let counted = null;
  let countedAt = 0;
  async function refresh() {
    const q = params.q || "";
    let listing;
    let total;
    try {
      const recount = counted === null || Date.now() - countedAt > 30_000;
      [listing, total] = await Promise.all([
        api.get("/devices", { q, sort: params.sort, limit: PAGE_SIZE, cursor: cursors[page] }),
        recount ? api.get("/devices/count", { q }) : Promise.resolve(counted),
      ]);
      if (recount) {
        counted = total;
        countedAt = Date.now();
      }
    } catch (e) {
      if (e.status === 400) {
        // A query the parser refused: say why next to the box, keep what was typed.
        error.textContent = e.message;
        input.setAttribute("aria-invalid", "true");
        mount(results);
        count.textContent = "";
        return;
      }
      throw e;
    }
    error.textContent = "";
    input.removeAttribute("aria-invalid");
    cursors[page + 1] = listing.next_cursor || null;
    count.textContent = `${num(total.count)} matching devices${q ? ` for ${q}` : ""}.`;
    node.querySelector("#page-no").textContent = `Page ${page + 1} of ${Math.max(1, Math.ceil(total.count / PAGE_SIZE))}`;
    prev.disabled = page === 0;
    next.disabled = !listing.next_cursor;
    mount(
      results,
      table(
        null,
        ["Device", "Type", "Status", "Connectivity", "Firmware", "Region", "Last seen"],
        listing.items.map((d) => [
          link(`#/devices/${encodeURIComponent(d.id)}`, d.id),
          d.device_type,
          badge(d.status),
          badge(d.connectivity),
          d.firmware || h("span", { class: "muted" }, "unknown"),
          d.region || "",
          when(d.last_seen),
        ]),
        { id: "devices-table" },
      ),
    );
  }
  return { node, refresh };
}

// ---- rollouts ----------------------------------------------------------------------------------

export function rollouts(params) {
  const status = h(
    "select",
    { id: "status", name: "status" },
    h("option", { value: "" }, "any"),
    ["running", "paused", "completed", "aborted", "rolled_back"].map((s) => h("option", { value: s, selected: s === params.status }, s.replace("_", " "))),
  );
  status.addEventListener("change", () => {
    location.hash = status.value ? `#/rollouts?status=${status.value}` : "#/rollouts";
  });
  const list = h("div");
  const node = h("div", {}, h("h1", {}, "Rollouts"), h("p", {}, h("label", { for: "status" }, "Status "), status), list);
  async function refresh() {
    const data = await api.get("/rollouts", { status: params.status, limit: 200 });
    mount(list, table(null, ["#", ...ROLLOUT_HEADINGS, "Created"], data.map((r) => [String(r.id), ...rolloutRows([r])[0], when(r.created_at)]), { id: "rollouts-table" }));
  }
  return { node, refresh };
}

// ---- jobs --------------------------------------------------------------------------------------

export function jobProgress(job) {
  const p = job.progress || {};
  const done = (p.succeeded || 0) + (p.failed || 0) + (p.timed_out || 0) + (p.canceled || 0) + (p.rejected || 0);
  return progress(done, p.total || 0, `${job.name}: ${num(done)} of ${num(p.total || 0)} executions finished`);
}

export function jobs(params) {
  const state = h(
    "select",
    { id: "state", name: "state" },
    h("option", { value: "" }, "any"),
    ["running", "completed", "canceled"].map((s) => h("option", { value: s, selected: s === params.state }, s)),
  );
  state.addEventListener("change", () => {
    location.hash = state.value ? `#/jobs?state=${state.value}` : "#/jobs";
  });
  const list = h("div");
  const node = h(
    "div",
    {},
    h("h1", {}, "Jobs"),
    h("p", { class: "muted" }, "Fleet jobs run a command, a reboot or a configuration change on many devices; create them with `drover jobs create`. Diagnostics for one device are on its page."),
    h("p", {}, h("label", { for: "state" }, "State "), state),
    list,
  );
  async function refresh() {
    const data = await api.get("/jobs", { state: params.state, limit: 200 });
    mount(
      list,
      table(
        null,
        ["#", "Job", "Kind", "State", "Finished executions", "Succeeded", "Failed", "Created"],
        data.map((job) => [
          String(job.id),
          link(`#/jobs/${job.id}`, job.name),
          job.kind,
          badge(job.state),
          jobProgress(job),
          num(job.progress?.succeeded),
          num((job.progress?.failed || 0) + (job.progress?.timed_out || 0) + (job.progress?.rejected || 0)),
          when(job.created_at),
        ]),
      ),
    );
  }
  return { node, refresh };
}

// ---- artifacts ---------------------------------------------------------------------------------

export function artifacts() {
  const list = h("div");
  const node = h("div", {}, h("h1", {}, "Artifacts and releases"), list);
  async function refresh() {
    const data = await api.get("/artifacts", { limit: 200 });
    mount(
      list,
      data.items.length === 0
        ? h("p", { class: "muted" }, "No artifacts yet: publish one with `drover artifacts upload`.")
        : data.items.map((a) =>
            section(
              `${a.name} ${a.version}`,
              h(
                "dl",
                { class: "facts" },
                h("dt", {}, "Size"), h("dd", {}, bytes(a.size)),
                h("dt", {}, "Device types"), h("dd", {}, a.device_types.join(", ") || "any"),
                h("dt", {}, "Hardware revisions"), h("dd", {}, (a.hw_revs || []).join(", ") || "any"),
                h("dt", {}, "SHA-256"), h("dd", {}, h("code", { class: "hash" }, a.sha256)),
                h("dt", {}, "Signed target"), h("dd", {}, h("code", {}, a.target), " (listed with its hash in the TUF targets metadata the server signs; devices verify both before installing)"),
                h("dt", {}, "Provenance"), h("dd", {}, provenance(a.provenance)),
                h("dt", {}, "Security floor"), h("dd", {}, a.security_floor || "none"),
                h("dt", {}, "Symbols"), h("dd", {}, a.symbols ? bytes(a.symbols.size) : "none"),
                h("dt", {}, "Deltas"), h("dd", {}, a.deltas.length === 0 ? "none" : a.deltas.map((d) => `from ${d.from_version}: ${bytes(d.size)} (${pct(d.size / a.size, 0)} of full)`).join("; ")),
                h("dt", {}, "Active deployments"), h("dd", {}, num(a.active_deployments)),
                h("dt", {}, "Uploaded"), h("dd", {}, when(a.created_at), ` by ${a.created_by}`),
              ),
              a.release_notes ? h("details", {}, h("summary", {}, "Release notes"), h("pre", { class: "notes" }, a.release_notes)) : null,
            ),
          ),
    );
  }
  return { node, refresh };
}

function provenance(p) {
  if (!p || (!p.git_commit && !p.build_id && !p.ci_url)) return h("span", { class: "muted" }, "not recorded");
  return [
    p.git_commit ? ["commit ", h("code", {}, p.git_commit.slice(0, 12)), " "] : null,
    p.build_id ? `build ${p.build_id} ` : null,
    p.ci_url && /^https?:\/\//.test(p.ci_url) ? h("a", { href: p.ci_url, rel: "noreferrer noopener", target: "_blank" }, "CI run") : null,
  ];
}

// ---- audit -------------------------------------------------------------------------------------

export function audit(params) {
  const action = h("input", { id: "action", name: "action", value: params.action || "", placeholder: "e.g. rollout. or device.create" });
  const actor = h("input", { id: "actor", name: "actor", value: params.actor || "", placeholder: "token:tok_… or system" });
  const error = h("p", { class: "field-error", role: "alert" });
  const list = h("div");
  const more = h("button", { type: "button", hidden: true }, "Older entries");
  let cursor = null;
  let loaded = [];
  const form = h(
    "form",
    { class: "filters" },
    h("label", { for: "action" }, "Action"), action,
    h("label", { for: "actor" }, "Actor"), actor,
    h("button", { type: "submit" }, "Filter"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    if (action.value.trim()) query.set("action", action.value.trim());
    if (actor.value.trim()) query.set("actor", actor.value.trim());
    location.hash = `#/audit${query.toString() ? `?${query}` : ""}`;
  });
  function render() {
    mount(
      list,
      table(
        null,
        ["When", "Actor", "Action", "Target", "Change"],
        loaded.map((e) => [
          when(e.at),
          e.actor_name ? `${e.actor_name} (${e.actor})` : e.actor,
          h("code", {}, e.action),
          `${e.target_kind} ${e.target_id}`,
          e.before || e.after ? h("details", {}, h("summary", {}, "before / after"), h("pre", { class: "json" }, JSON.stringify({ before: e.before, after: e.after }, null, 2))) : "",
        ]),
      ),
    );
  }
  more.addEventListener("click", async () => {
    const data = await api.get("/audit", { action: params.action, actor: params.actor, limit: 100, cursor });
    loaded = loaded.concat(data.items);
    cursor = data.next_cursor || null;
    more.hidden = !cursor;
    render();
  });
  const node = h("div", {}, h("h1", {}, "Audit log"), form, error, list, more);
  async function refresh() {
    let data;
    try {
      data = await api.get("/audit", { action: params.action, actor: params.actor, limit: 100 });
    } catch (e) {
      if (e.status === 400) {
        error.textContent = e.message;
        return;
      }
      throw e;
    }
    error.textContent = "";
    // Live updates show the newest page; pages already loaded below it stay.
    if (loaded.length <= 100) {
      loaded = data.items;
      cursor = data.next_cursor || null;
      more.hidden = !cursor;
    }
    render();
  }
  return { node, refresh };
}
