// DOM building and formatting helpers. Every value from the API is inserted as text (never as
// HTML), so a device id or tag holding markup shows as typed.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.setAttribute("class", value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: `h("a", {href: "#/"}, "Overview")`. */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replaces the contents of `el`. */
export function mount(el, ...children) {
  el.replaceChildren();
  build(el, {}, children);
  return el;
}

const numberFormat = new Intl.NumberFormat("en-US");

/** 1234567 → "1,234,567". */
export function num(n) {
  return n === undefined || n === null ? "—" : numberFormat.format(n);
}

/** 0.1234 → "12.3%". */
export function pct(x, digits = 1) {
  if (x === undefined || x === null || Number.isNaN(x)) return "—";
  return `${(x * 100).toFixed(digits)}%`;
}

/** Bytes in KiB / MiB / GiB. */
export function bytes(n) {
  if (n === undefined || n === null) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

/** An RFC 3339 time as local date and time. */
export function time(ts) {
  if (!ts) return "—";
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? ts : d.toLocaleString();
}

/** How long ago, in words: "5 s ago", "3 min ago", "2 h ago", "4 d ago". */
export function ago(ts) {
  if (!ts) return "never";
  const secs = Math.round((Date.now() - new Date(ts).getTime()) / 1000);
  if (Number.isNaN(secs)) return ts;
  if (secs < 0) return "just now";
  if (secs < 60) return `${secs} s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ago`;
  return `${Math.floor(secs / 86400)} d ago`;
}

/** A `<time>` element showing `ago` with the full time as its title. */
export function when(ts) {
  return ts ? h("time", { datetime: ts, title: time(ts) }, ago(ts)) : h("span", { class: "muted" }, "never");
}

/** A small coloured label for a state word (`running`, `paused`, `online`, …). */
export function badge(word) {
  const text = word === undefined || word === null || word === "" ? "unknown" : String(word);
  return h("span", { class: `badge b-${text.replace(/[^a-z_]/gi, "")}` }, text.replaceAll("_", " "));
}

/** A link inside the dashboard. */
export function link(hash, ...children) {
  return h("a", { href: hash }, ...children);
}

/** A table from column headings and rows of cells. */
export function table(caption, headings, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, headings.map((heading) => h("th", { scope: "col" }, heading)))),
    h(
      "tbody",
      {},
      rows.length === 0
        ? h("tr", {}, h("td", { colspan: headings.length, class: "muted" }, "Nothing here yet."))
        : rows.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell)))),
    ),
  );
}

/** Definition list from [term, value] pairs. */
export function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

/** JSON shown as an indented block. */
export function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

/** A section with a heading. */
export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

/** A message box for errors and warnings. */
export function notice(kind, ...children) {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : null }, ...children);
}
