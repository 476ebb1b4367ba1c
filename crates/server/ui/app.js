// The dashboard's shell: login, navigation by URL fragment (`#/rollouts/3`), and live updates by
// polling the current page's data every few seconds while the tab is visible.

import * as api from "./api.js";
import { h, mount, notice } from "./dom.js";
import * as pages from "./pages.js";
import * as detail from "./detail.js";

const REFRESH_MS = 3000;
const ROLES = { viewer: 1, operator: 2, admin: 3 };

const main = document.getElementById("main");
const top = document.getElementById("top");
const live = document.getElementById("live");

let session = null;
let current = null;
let timer = null;

const routes = [
  [/^\/$/, pages.overview, "Overview"],
  [/^\/versions$/, pages.versions, "Versions"],
  [/^\/devices$/, pages.devices, "Devices"],
  [/^\/devices\/(?<id>[^/]+)$/, detail.device, "Device"],
  [/^\/rollouts$/, pages.rollouts, "Rollouts"],
  [/^\/rollouts\/(?<id>\d+)$/, detail.rollout, "Rollout"],
  [/^\/jobs$/, pages.jobs, "Jobs"],
  [/^\/jobs\/(?<id>\d+)$/, detail.job, "Job"],
  [/^\/artifacts$/, pages.artifacts, "Artifacts"],
  [/^\/audit$/, pages.audit, "Audit log"],
];

function announce(text) {
  live.textContent = text;
}

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = raw.split("?");
  const params = Object.fromEntries(new URLSearchParams(query));
  return { path: path || "/", params };
}

function stop() {
  if (timer) clearTimeout(timer);
  timer = null;
  current = null;
}

async function tick(page) {
  if (current !== page) return;
  if (!document.hidden) {
    try {
      await page.refresh();
      page.error?.remove();
      page.error = null;
      page.node.dataset.loaded = "true";
    } catch (e) {
      if (current !== page) return;
      if (e.status === 401) return;
      const box = notice("error", `Could not load this page: ${e.message}`);
      page.error?.remove();
      page.error = box;
      page.node.prepend(box);
    }
  }
  if (current === page) timer = setTimeout(() => tick(page), REFRESH_MS);
}

function route() {
  stop();
  if (!session) return showLogin();
  const { path, params } = parseHash();
  for (const link of document.querySelectorAll("#nav a")) {
    const target = link.getAttribute("href").slice(1);
    const active = target === "/" ? path === "/" : path === target || path.startsWith(`${target}/`);
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  for (const [pattern, make, title] of routes) {
    const match = path.match(pattern);
    if (!match) continue;
    const args = { ...params, ...Object.fromEntries(Object.entries(match.groups || {}).map(([k, v]) => [k, decodeURIComponent(v)])) };
    const page = make(args, { role: session.role, canOperate: ROLES[session.role] >= ROLES.operator, announce });
    current = page;
    document.title = `${title} · Drover`;
    mount(main, page.node);
    tick(page);
    return;
  }
  document.title = "Not found · Drover";
  mount(main, h("h1", {}, "Not found"), h("p", {}, "No page at ", h("code", {}, path), ". ", h("a", { href: "#/" }, "Go to the overview.")));
}

function showLogin(message) {
  stop();
  session = null;
  top.hidden = true;
  document.title = "Log in · Drover";
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: true, "aria-describedby": "login-help login-error" });
  const error = h("p", { id: "login-error", class: "field-error", role: "alert" }, message || "");
  const button = h("button", { type: "submit" }, "Log in");
  const form = h(
    "form",
    { class: "login card", id: "login" },
    h("h1", {}, "Drover"),
    h("label", { for: "token" }, "Operator API token"),
    input,
    h("p", { id: "login-help", class: "help" }, "A token from `drover tokens create` or the admin token `drover serve` printed at first start. Viewer tokens see everything and change nothing."),
    error,
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    error.textContent = "";
    try {
      session = await api.login(input.value);
      start(true);
    } catch (e) {
      error.textContent = e.status === 401 ? `Not accepted: ${e.message}` : e.message;
      input.setAttribute("aria-invalid", "true");
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  mount(main, form);
  input.focus();
}

/** Shows the app for `session`; after a login, focus moves to the page (the form is gone). */
function start(focusMain) {
  top.hidden = false;
  document.getElementById("who").textContent = `${session.name} (${session.role})`;
  route();
  if (focusMain) main.focus();
}

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await api.logout();
  } finally {
    showLogin("You are logged out.");
  }
});

api.setUnauthorizedHandler(() => showLogin("Your session has ended: log in again."));
window.addEventListener("hashchange", () => {
  route();
  main.focus();
});
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && current) {
    clearTimeout(timer);
    tick(current);
  }
});

(async () => {
  try {
    session = await api.whoami();
  } catch (e) {
    mount(main, notice("error", `Cannot reach the server: ${e.message}`));
    return;
  }
  if (session) start(false);
  else showLogin();
})();
