// Charts drawn as inline SVG by the dashboard itself (no chart library, no web fonts): bar charts,
// time-series line charts, stacked share bars, heat-map tables and progress bars. Each chart has
// axes with units, a legend where there is more than one series, and a text alternative.

import { h, s, num, pct, time } from "./dom.js";

/** Okabe-Ito colours: distinguishable with the common colour-vision deficiencies. */
export const PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#E69F00", "#7F3C8D", "#505050"];

/** Round tick values covering [0, max]. */
function ticks(max, count = 4) {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((m) => m >= raw) || raw;
  const out = [];
  for (let v = 0; v <= max + step * 0.999; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function shortNumber(v) {
  if (Math.abs(v) >= 1e6) return `${(v / 1e6).toFixed(v % 1e6 === 0 ? 0 : 1)}M`;
  if (Math.abs(v) >= 1e4) return `${(v / 1e3).toFixed(v % 1e3 === 0 ? 0 : 1)}k`;
  return Number.isInteger(v) ? num(v) : v.toFixed(Math.abs(v) < 10 ? 2 : 1);
}

/**
 * Horizontal bar chart. `items`: [{label, value, title?}]; `unit` names what the values count.
 * The labels column is sized to the longest label.
 */
export function barChart(items, { unit = "devices", title, color = PALETTE[0], share } = {}) {
  const rowHeight = 26;
  const longest = Math.max(4, ...items.map((item) => String(item.label).length));
  const labelWidth = Math.min(220, 12 + longest * 7.5);
  const width = 640;
  const plot = width - labelWidth - 90;
  const max = Math.max(0, ...items.map((item) => item.value));
  const marks = ticks(max);
  const top = marks[marks.length - 1] || 1;
  const height = items.length * rowHeight + 42;
  const x = (v) => labelWidth + (v / top) * plot;
  const svg = s(
    "svg",
    { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title || `Bar chart of ${unit}` },
    s("title", {}, title || unit),
    marks.map((m) => [
      s("line", { x1: x(m), x2: x(m), y1: 4, y2: height - 34, class: "grid" }),
      s("text", { x: x(m), y: height - 20, class: "tick", "text-anchor": "middle" }, shortNumber(m)),
    ]),
    s("text", { x: labelWidth + plot / 2, y: height - 4, class: "axis-label", "text-anchor": "middle" }, unit),
    items.map((item, i) => {
      const y = 6 + i * rowHeight;
      const valueText = share ? `${num(item.value)} (${pct(item.value / share)})` : num(item.value);
      return s(
        "g",
        {},
        s("title", {}, item.title || `${item.label}: ${valueText} ${unit}`),
        s("text", { x: labelWidth - 8, y: y + 15, class: "label", "text-anchor": "end" }, item.label),
        s("rect", { x: labelWidth, y: y + 2, width: Math.max(1, x(item.value) - labelWidth), height: rowHeight - 8, fill: item.color || color, rx: 2 }),
        s("text", { x: x(item.value) + 6, y: y + 15, class: "value" }, valueText),
      );
    }),
  );
  return h("figure", { class: "figure" }, svg);
}

/**
 * Line chart over time. `series`: [{name, points: [{at, value}]}]. `unit` labels the y axis.
 * Points are joined in time order; each point has a tooltip with its time and value.
 */
export function lineChart(series, { unit = "", title, height = 260, width = 680, step = false } = {}) {
  const all = series.flatMap((line) => line.points.map((p) => ({ t: new Date(p.at).getTime(), v: p.value })));
  const figure = h("figure", { class: "figure" });
  if (all.length === 0) {
    figure.append(h("p", { class: "muted" }, "No data in this window yet."));
    return figure;
  }
  const left = 58;
  const right = 16;
  const topPad = 10;
  const bottom = 44;
  let t0 = Math.min(...all.map((p) => p.t));
  let t1 = Math.max(...all.map((p) => p.t));
  if (t1 === t0) {
    t0 -= 60_000;
    t1 += 60_000;
  }
  const min = Math.min(0, ...all.map((p) => p.v));
  const maxRaw = Math.max(...all.map((p) => p.v));
  const marks = ticks(maxRaw - min);
  const top = min + (marks[marks.length - 1] || 1);
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const y = (v) => topPad + (1 - (v - min) / (top - min || 1)) * (height - topPad - bottom);
  const span = t1 - t0;
  const timeLabel = (t) => {
    const d = new Date(t);
    return span > 2 * 86400_000
      ? d.toLocaleDateString(undefined, { month: "short", day: "numeric" })
      : d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: span < 600_000 ? "2-digit" : undefined });
  };
  const xMarks = [0, 0.25, 0.5, 0.75, 1].map((f) => t0 + f * span);
  const svg = s(
    "svg",
    { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title || `Line chart of ${unit} over time` },
    s("title", {}, title || unit),
    marks.map((m) => [
      s("line", { x1: left, x2: width - right, y1: y(min + m), y2: y(min + m), class: "grid" }),
      s("text", { x: left - 6, y: y(min + m) + 4, class: "tick", "text-anchor": "end" }, shortNumber(min + m)),
    ]),
    xMarks.map((t) => s("text", { x: x(t), y: height - bottom + 16, class: "tick", "text-anchor": "middle" }, timeLabel(t))),
    s("line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, class: "axis" }),
    s("line", { x1: left, x2: left, y1: topPad, y2: height - bottom, class: "axis" }),
    s("text", { x: 12, y: topPad + (height - topPad - bottom) / 2, class: "axis-label", "text-anchor": "middle", transform: `rotate(-90 12 ${topPad + (height - topPad - bottom) / 2})` }, unit),
    s("text", { x: left + (width - left - right) / 2, y: height - 6, class: "axis-label", "text-anchor": "middle" }, "time"),
    series.map((line, i) => {
      const color = line.color || PALETTE[i % PALETTE.length];
      const points = [...line.points].sort((a, b) => new Date(a.at) - new Date(b.at));
      let d = "";
      points.forEach((p, j) => {
        const px = x(new Date(p.at).getTime());
        const py = y(p.value);
        if (j === 0) d += `M${px.toFixed(1)},${py.toFixed(1)}`;
        else if (step) d += `H${px.toFixed(1)}V${py.toFixed(1)}`;
        else d += `L${px.toFixed(1)},${py.toFixed(1)}`;
      });
      return s(
        "g",
        { class: "series" },
        s("path", { d, fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": i >= PALETTE.length ? "5 3" : null }),
        points.length <= 120
          ? points.map((p) =>
              s("circle", { cx: x(new Date(p.at).getTime()), cy: y(p.value), r: 2.5, fill: color },
                s("title", {}, `${line.name}: ${shortNumber(p.value)} ${unit} at ${time(p.at)}`)))
          : null,
      );
    }),
  );
  figure.append(svg);
  if (series.length > 1) figure.append(legend(series.map((line, i) => ({ label: line.name, color: line.color || PALETTE[i % PALETTE.length] }))));
  return figure;
}

/** A legend: coloured swatches with labels. */
export function legend(entries) {
  return h(
    "ul",
    { class: "legend", "aria-label": "Legend" },
    entries.map((entry) => {
      const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.backgroundColor = entry.color;
      return h("li", {}, swatch, entry.label);
    }),
  );
}

/**
 * One bar split into shares, with a legend giving each part's count and share.
 * `parts`: [{label, value, color}].
 */
export function shareBar(parts, { title = "Share" } = {}) {
  const total = parts.reduce((sum, part) => sum + part.value, 0);
  const bar = h("div", { class: "sharebar", role: "img", "aria-label": `${title}: ${parts.map((p) => `${p.label} ${num(p.value)}`).join(", ")}` });
  for (const part of parts) {
    if (part.value <= 0) continue;
    const piece = h("span", { title: `${part.label}: ${num(part.value)} (${pct(part.value / total)})` });
    piece.style.width = `${(part.value / total) * 100}%`;
    piece.style.backgroundColor = part.color;
    bar.append(piece);
  }
  return h(
    "div",
    { class: "share" },
    bar,
    legend(parts.map((part) => ({ label: `${part.label}: ${num(part.value)} (${total ? pct(part.value / total) : "—"})`, color: part.color }))),
  );
}

/** A progress bar with its text: `done` of `total`. */
export function progress(done, total, label) {
  const fraction = total > 0 ? Math.min(1, done / total) : 0;
  const fill = h("span", { class: "fill" });
  fill.style.width = `${fraction * 100}%`;
  return h(
    "div",
    { class: "progress" },
    h("div", { class: "track", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": total, "aria-valuenow": done, "aria-label": label }, fill),
    h("span", { class: "progress-text" }, `${num(done)} / ${num(total)} (${pct(fraction, 0)})`),
  );
}

/**
 * A table whose cells are shaded by value: rows × columns of counts, shaded by each cell's share
 * of its row. `rows`: [{label, total, cells: {column: count}}].
 */
export function heatTable(caption, columns, rows) {
  const head = h("tr", {}, h("th", { scope: "col" }, "Region"), h("th", { scope: "col" }, "Devices"), columns.map((c) => h("th", { scope: "col" }, c || "unknown")));
  const body = rows.map((row) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, row.label || "(none)"),
      h("td", { class: "num" }, num(row.total)),
      columns.map((column) => {
        const count = row.cells[column] || 0;
        const share = row.total ? count / row.total : 0;
        const cell = h("td", { class: "num heat", title: `${row.label || "(none)"} on ${column || "unknown"}: ${num(count)} (${pct(share)})` }, count ? pct(share, 0) : "—");
        // Blue at the row's share; the darkest shade still keeps dark text above 4.5:1 contrast.
        cell.style.backgroundColor = `rgba(0, 114, 178, ${(0.08 + share * 0.85).toFixed(3)})`;
        return cell;
      }),
    ),
  );
  return h("table", { class: "heatmap" }, h("caption", {}, caption), h("thead", {}, head), h("tbody", {}, body));
}
