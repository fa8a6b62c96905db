// Hand-drawn SVG and HTML charts. Each draws numbers as {value, sd, nodes} or null:
// null is hatched ("not distinguishable from noise"), never drawn as zero; every bar has its noise
// whisker. Colours come from CSS classes, so the light/dark switch needs no redraw.

import { chartSvg, h, s } from "./dom.js";
import { BELOW, fmtCompact, fmtFixed, fmtInt, isNum, numEl, text } from "./fmt.js";

const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
const pct = (v) => `${clamp(v, 0, 100).toFixed(3)}%`;

export function toolClass(index) {
  return `tool-${(index % 4) + 1}`;
}

// ---- horizontal bars (HTML) -------------------------------------------------------

/**
 * items: [{label, num, kind?, className?, title?}] -> <ul class="bars">.
 * The bar shows the value, the whisker value ± sd; null rows are hatched.
 */
export function barList(items, { kind = "count", max, className = "", labelWidth } = {}) {
  const top = max ?? Math.max(1e-9, ...items.map((i) => (isNum(i.num) ? i.num.value + i.num.sd : 0)));
  const list = h("ul", { class: `bars ${className}` });
  for (const item of items) {
    const n = item.num;
    const track = h("span", { class: `bar-track${isNum(n) ? "" : " null"}`, "aria-hidden": "true" });
    if (isNum(n)) {
      const v = Math.max(0, n.value);
      track.append(
        h("span", { class: "bar-fill", vars: { "--w": pct((v / top) * 100) } }),
        h("span", {
          class: "bar-err",
          vars: {
            "--lo": pct((Math.max(0, n.value - n.sd) / top) * 100),
            "--ew": pct(((Math.min(top, n.value + n.sd) - Math.max(0, n.value - n.sd)) / top) * 100),
          },
        }),
      );
    }
    const row = h(
      "li",
      { class: `bar-row ${item.className || ""}`, "data-label": item.key ?? item.label, title: item.title || null },
      item.rank !== undefined ? h("span", { class: "rank", text: item.rank }) : null,
      h("span", { class: "bar-label" }, item.labelEl || item.label),
      track,
      h("span", { class: "bar-value" }, numEl(n, kind, { digits: item.digits })),
    );
    list.append(row);
  }
  if (labelWidth) list.classList.add(labelWidth);
  return list;
}

// ---- histogram edges ------------------------------------------------------------

function parseAmount(t) {
  const m = /^(-?[\d.]+)([kM]?)$/.exec(t.trim());
  if (!m) return NaN;
  return parseFloat(m[1]) * (m[2] === "k" ? 1e3 : m[2] === "M" ? 1e6 : 1);
}

/** Lower edges of bucket labels like "0..1", "60+", "<25k", "25k-50k", "-20..-10". */
export function edgesFromLabels(labels) {
  const edges = labels.map((label) => {
    if (label.startsWith("<")) return 0;
    if (label.endsWith("+")) return parseAmount(label.slice(0, -1));
    if (label.includes("..")) return parseAmount(label.split("..")[0]);
    const dash = label.indexOf("-", 1);
    return dash > 0 ? parseAmount(label.slice(0, dash)) : NaN;
  });
  return edges.every(Number.isFinite) ? edges : null;
}

/** Position of value v on an equal-width bucket axis: bucket index + fraction (the last bucket ends at one more width). */
export function bucketPosition(edges, v) {
  const n = edges.length;
  const top = n > 1 ? edges[n - 1] + (edges[n - 1] - edges[n - 2]) : edges[0] + 1;
  if (v <= edges[0]) return 0;
  for (let k = 0; k < n; k += 1) {
    const lo = edges[k];
    const hi = k + 1 < n ? edges[k + 1] : top;
    if (v < hi || k === n - 1) return k + clamp((v - lo) / (hi - lo), 0, 1);
  }
  return n;
}

// ---- vertical histogram (SVG) --------------------------------------------------------

/**
 * A histogram with equal-width buckets, noise whiskers, hatched null buckets and,
 * when given, quartile markers (p25..p75 band, median line) and a "you" marker.
 * opts: {labels, cells, label, unit, quantiles, edges, you, className, valueKind}
 */
export function histogram(opts) {
  const { labels, cells, label, unit = "", quantiles, you, className = "" } = opts;
  const edges = opts.edges || edgesFromLabels(labels);
  const W = clamp(Math.round(opts.width || 560), 300, 900);
  const H = clamp(Math.round(W * 0.42), 190, 260);
  const m = { top: quantiles ? 34 : 14, right: 8, bottom: 40, left: 46 };
  const iw = W - m.left - m.right;
  const ih = H - m.top - m.bottom;
  const maxV = Math.max(1, ...cells.map((c) => (isNum(c) ? c.value + c.sd : 0)));
  const y = (v) => m.top + ih - (clamp(v, 0, maxV) / maxV) * ih;
  const bw = iw / labels.length;
  const svg = chartSvg(W, H, label, `chart histogram ${className}`);
  // grid
  const ticks = niceTicks(maxV, 4);
  for (const t of ticks) {
    svg.append(
      s("line", { class: "gridline", x1: m.left, x2: W - m.right, y1: y(t), y2: y(t) }),
      s("text", { class: "axis-label", x: m.left - 6, y: y(t) + 4, "text-anchor": "end", text: fmtCompact(t) }),
    );
  }
  // quartile band behind the bars
  const q = quantiles || {};
  const pos = (v) => m.left + bucketPosition(edges, v) * bw;
  if (edges && isNum(q.p25) && isNum(q.p75)) {
    svg.append(s("rect", { class: "iqr", x: pos(q.p25.value), y: m.top - 6, width: Math.max(1, pos(q.p75.value) - pos(q.p25.value)), height: ih + 6 }));
  }
  labels.forEach((lab, i) => {
    const c = cells[i];
    const x = m.left + i * bw + bw * 0.12;
    const w = bw * 0.76;
    if (isNum(c)) {
      const top = y(Math.max(0, c.value));
      svg.append(
        s("rect", { class: "bar", x, y: top, width: w, height: Math.max(0, m.top + ih - top), rx: 3 },
          s("title", { text: `${lab}${unit ? ` ${unit}` : ""}: ${text(c)} (from ${c.nodes} node${c.nodes === 1 ? "" : "s"})` })),
      );
      const lo = y(Math.max(0, c.value - c.sd));
      const hi = y(c.value + c.sd);
      const cx = x + w / 2;
      svg.append(
        s("line", { class: "whisker", x1: cx, x2: cx, y1: lo, y2: hi }),
        s("line", { class: "whisker", x1: cx - 4, x2: cx + 4, y1: hi, y2: hi }),
        s("line", { class: "whisker", x1: cx - 4, x2: cx + 4, y1: lo, y2: lo }),
      );
    } else {
      const hh = Math.min(ih * 0.22, 34);
      svg.append(
        s("rect", { class: "bar null", x, y: m.top + ih - hh, width: w, height: hh, rx: 3 },
          s("title", { text: `${lab}: ${BELOW} (not zero)` })),
      );
    }
    const every = bw < 36 || labels.length > 14 ? 2 : 1;
    if (i % every === 0) {
      svg.append(s("text", { class: "axis-label", x: m.left + i * bw + bw / 2, y: H - m.bottom + 16, "text-anchor": "middle", text: lab }));
    }
  });
  svg.append(s("line", { class: "baseline", x1: m.left, x2: W - m.right, y1: m.top + ih, y2: m.top + ih }));
  if (unit) svg.append(s("text", { class: "axis-label", x: m.left + iw / 2, y: H - 6, "text-anchor": "middle", text: unit }));
  if (edges) {
    const markers = [
      ["p25", "25%", false],
      ["p50", "median", true],
      ["p75", "75%", false],
    ];
    for (const [key, name, median] of markers) {
      const n = q[key];
      if (!isNum(n)) continue;
      const x = pos(n.value);
      svg.append(s("line", { class: `marker${median ? " median" : ""}`, x1: x, x2: x, y1: m.top - 8, y2: m.top + ih }));
      if (median) {
        svg.append(s("text", { class: "marker-label", x, y: m.top - 14, "text-anchor": "middle", text: `median ${fmtFixed(n.value, 1)}` }));
      } else {
        svg.append(s("text", { class: "axis-label", x, y: m.top - 14, "text-anchor": key === "p25" ? "end" : "start", dx: key === "p25" ? -4 : 4, text: name }));
      }
    }
    if (you !== undefined && you !== null && Number.isFinite(you)) {
      const x = pos(you);
      svg.append(
        s("line", { class: "you", x1: x, x2: x, y1: m.top - 4, y2: m.top + ih }),
        s("text", { class: "you-label", x: x + 5, y: m.top + 10, text: "you" }),
      );
    }
  }
  return svg;
}

export function niceTicks(max, count) {
  if (!(max > 0)) return [0];
  const raw = max / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((st) => st >= raw) || mag * 10;
  const ticks = [];
  for (let t = 0; t <= max + 1e-9; t += step) ticks.push(t);
  return ticks;
}

// ---- classes for heat maps and maps ----------------------------------------------------

/** 6 classes between 0 and max, linear or log; returns {cls(v), breaks: [upper bounds]}. */
export function classes(values, { log = false, quantile = false, steps = 6 } = {}) {
  const present = values.filter((v) => Number.isFinite(v) && v > 0);
  const max = present.length ? Math.max(...present) : 1;
  const min = present.length ? Math.min(...present) : 0;
  let breaks;
  if (quantile && present.length >= steps * 2) {
    const sorted = [...present].sort((a, b) => a - b);
    breaks = Array.from({ length: steps }, (_, i) => sorted[Math.min(sorted.length - 1, Math.ceil(((i + 1) / steps) * sorted.length) - 1)]);
  } else if (log && max / Math.max(1, min) > 20) {
    const lo = Math.log10(Math.max(1, min));
    const hi = Math.log10(max);
    breaks = Array.from({ length: steps }, (_, i) => 10 ** (lo + ((hi - lo) * (i + 1)) / steps));
  } else {
    breaks = Array.from({ length: steps }, (_, i) => (max * (i + 1)) / steps);
  }
  const cls = (v) => {
    if (v === null || v === undefined) return "qnull";
    if (!(v > 0)) return "q0";
    const i = breaks.findIndex((b) => v <= b * (1 + 1e-9));
    return `q${(i < 0 ? steps - 1 : i) + 1}`;
  };
  return { cls, breaks, min: log ? min : 0, max };
}

export function legend(breaks, { lower = 0, nullNote = true, unit = "" } = {}) {
  return h(
    "div",
    { class: "legend", "aria-hidden": "true" },
    h(
      "span",
      { class: "legend-scale" },
      h("span", { text: fmtCompact(lower) }),
      h("span", { class: "legend-ramp" }, breaks.map((_, i) => h("span", { class: `l${i + 1}` }))),
      h("span", { text: `${fmtCompact(breaks[breaks.length - 1])}${unit ? ` ${unit}` : ""}` }),
    ),
    nullNote ? h("span", { class: "legend-scale" }, h("span", { class: "legend-null" }), h("span", { text: "not distinguishable from noise (not zero)" })) : null,
  );
}

// ---- hour-of-week heat map -----------------------------------------------------------------

export function heatmap(matrix, weekdays, hours, label) {
  const W = 780;
  const cellW = 29;
  const cellH = 26;
  const left = 44;
  const top = 22;
  const H = top + weekdays.length * cellH + 8;
  const values = matrix.flat().map((n) => (isNum(n) ? n.value : null));
  const scale = classes(values, { quantile: true });
  const svg = chartSvg(W, H, label, "chart heatmap");
  hours.forEach((hr, j) => {
    if (j % 3 === 0) svg.append(s("text", { class: "axis-label", x: left + j * cellW + cellW / 2, y: top - 8, "text-anchor": "middle", text: `${hr}:00` }));
  });
  weekdays.forEach((day, i) => {
    svg.append(s("text", { class: "axis-label strong", x: left - 8, y: top + i * cellH + cellH / 2 + 4, "text-anchor": "end", text: day }));
    hours.forEach((hr, j) => {
      const n = matrix[i][j];
      svg.append(
        s("rect", { class: `cell ${scale.cls(isNum(n) ? n.value : null)}`, x: left + j * cellW, y: top + i * cellH, width: cellW, height: cellH, rx: 4 },
          s("title", { text: `${day} ${hr}:00–${hr}:59 UTC: ${isNum(n) ? `${text(n)} events` : `${BELOW} (not zero)`}` })),
      );
    });
  });
  return { svg, legend: legend(scale.breaks, { lower: Math.min(...values.filter((v) => v > 0)), unit: "events per hour" }) };
}

// ---- Sankey --------------------------------------------------------------------------------

/**
 * sankey: {labels, sources, targets, values, sd}; labels hold every tool twice (first, then next).
 * titles: app name -> title.
 */
export function sankeyChart(sankey, titles, label, width) {
  const W = clamp(Math.round(width || 680), 520, 1000);
  const H = 300;
  const nodeW = 14;
  const gap = 18;
  const top = 26;
  const bottom = 8;
  const labelSpace = 185;
  const half = sankey.labels.length / 2;
  const flows = sankey.sources.map((src, i) => ({ src, dst: sankey.targets[i] - half, value: sankey.values[i], sd: sankey.sd[i] }));
  const outTotals = Array(half).fill(0);
  const inTotals = Array(half).fill(0);
  for (const f of flows) {
    outTotals[f.src] += f.value;
    inTotals[f.dst] += f.value;
  }
  const leftNodes = outTotals.map((v, i) => ({ i, v })).filter((n) => n.v > 0);
  const rightNodes = inTotals.map((v, i) => ({ i, v })).filter((n) => n.v > 0);
  const total = flows.reduce((a, f) => a + f.value, 0);
  const avail = H - top - bottom - gap * (Math.max(leftNodes.length, rightNodes.length) - 1);
  const k = total > 0 ? avail / total : 0;
  const x0 = labelSpace;
  const x1 = W - labelSpace;
  const place = (nodes) => {
    let yy = top;
    const pos = {};
    for (const n of nodes) {
      pos[n.i] = { y: yy, h: n.v * k, cursor: yy };
      yy += n.v * k + gap;
    }
    return pos;
  };
  const L = place(leftNodes);
  const R = place(rightNodes);
  const svg = chartSvg(W, H, label, "chart sankey");
  svg.append(
    s("text", { class: "col-label", x: x0 - nodeW, y: 12, "text-anchor": "end", text: "Used first" }),
    s("text", { class: "col-label", x: x1 + nodeW, y: 12, text: "Then used" }),
  );
  const names = sankey.labels.slice(0, half);
  const ordered = [...flows].sort((a, b) => a.src - b.src || a.dst - b.dst);
  // Stack flows at each node in the order of the node at their other end, to avoid crossings.
  const byTarget = [...flows].sort((a, b) => a.dst - b.dst || a.src - b.src);
  const rightY = new Map();
  for (const f of byTarget) {
    const r = R[f.dst];
    rightY.set(f, r.cursor);
    r.cursor += f.value * k;
  }
  for (const f of ordered) {
    const l = L[f.src];
    const ya = l.cursor;
    l.cursor += f.value * k;
    const yb = rightY.get(f);
    const th = f.value * k;
    const xa = x0;
    const xb = x1;
    const xm = (xa + xb) / 2;
    const d = `M${xa},${ya}C${xm},${ya} ${xm},${yb} ${xb},${yb}L${xb},${yb + th}C${xm},${yb + th} ${xm},${ya + th} ${xa},${ya + th}Z`;
    svg.append(
      s("path", { class: `flow ${toolClass(f.src)}`, d },
        s("title", { text: `${titles[names[f.src]] || names[f.src]} → ${titles[names[f.dst]] || names[f.dst]}: ${fmtInt(f.value)} ± ${fmtInt(Math.max(1, f.sd))} sessions` })),
    );
  }
  for (const n of leftNodes) {
    const p = L[n.i];
    svg.append(
      s("rect", { class: `node ${toolClass(n.i)}`, x: x0 - nodeW, y: p.y, width: nodeW, height: Math.max(2, p.h), rx: 3 }),
      s("text", { class: "node-label", x: x0 - nodeW - 8, y: p.y + p.h / 2 - 2, "text-anchor": "end", text: titles[names[n.i]] || names[n.i] }),
      s("text", { class: "node-sub", x: x0 - nodeW - 8, y: p.y + p.h / 2 + 13, "text-anchor": "end", text: `${fmtInt(n.v)} sessions` }),
    );
  }
  for (const n of rightNodes) {
    const p = R[n.i];
    svg.append(
      s("rect", { class: `node ${toolClass(n.i)}`, x: x1, y: p.y, width: nodeW, height: Math.max(2, p.h), rx: 3 }),
      s("text", { class: "node-label", x: x1 + nodeW + 8, y: p.y + p.h / 2 - 2, text: titles[names[n.i]] || names[n.i] }),
      s("text", { class: "node-sub", x: x1 + nodeW + 8, y: p.y + p.h / 2 + 13, text: `${fmtInt(n.v)} sessions` }),
    );
  }
  return svg;
}

// ---- small line chart with a noise band --------------------------------------------------------

export function lineChart(series, windows, { label, className = "", fmtX, width }) {
  const W = clamp(Math.round(width || 340), 240, 900);
  const H = 150;
  const m = { top: 10, right: 10, bottom: 24, left: 40 };
  const iw = W - m.left - m.right;
  const ih = H - m.top - m.bottom;
  const present = series.filter(isNum);
  const maxV = Math.max(1, ...present.map((n) => n.value + n.sd));
  const n = series.length;
  // Positioned by time, not by index: a day with no data at all leaves its place empty.
  const t0 = n ? windows[0] : 0;
  const span = n > 1 ? windows[n - 1] - t0 : 0;
  let step = Infinity;
  for (let i = 1; i < n; i += 1) step = Math.min(step, windows[i] - windows[i - 1]);
  const x = (i) => m.left + (span <= 0 ? iw / 2 : ((windows[i] - t0) / span) * iw);
  const y = (v) => m.top + ih - (clamp(v, 0, maxV) / maxV) * ih;
  const svg = chartSvg(W, H, label, `chart line-chart ${className}`);
  for (const t of niceTicks(maxV, 3)) {
    svg.append(
      s("line", { class: "gridline", x1: m.left, x2: W - m.right, y1: y(t), y2: y(t) }),
      s("text", { class: "axis-label", x: m.left - 5, y: y(t) + 4, "text-anchor": "end", text: fmtCompact(t) }),
    );
  }
  // Runs of present points on consecutive windows: band and line break at a suppressed (null)
  // point and at an absent window, a gap and never a dip to zero.
  const runs = [];
  let run = [];
  series.forEach((p, i) => {
    const adjacent = run.length && windows[i] - windows[run[run.length - 1]] <= step;
    if (isNum(p) && (adjacent || !run.length)) run.push(i);
    else {
      if (run.length) runs.push(run);
      run = isNum(p) ? [i] : [];
    }
  });
  if (run.length) runs.push(run);
  for (const r of runs) {
    if (r.length === 1) continue;
    const upper = r.map((i) => `${x(i)},${y(series[i].value + series[i].sd)}`);
    const lower = r.map((i) => `${x(i)},${y(series[i].value - series[i].sd)}`).reverse();
    svg.append(s("polygon", { class: "band", points: [...upper, ...lower].join(" ") }));
    svg.append(s("polyline", { class: "line", points: r.map((i) => `${x(i)},${y(series[i].value)}`).join(" ") }));
  }
  // A suppressed point is a hatched column over the whole height: unknown, not zero.
  const slot = n > 1 ? Math.max(2, Math.min(10, (iw * (Number.isFinite(step) ? step : span)) / Math.max(span, 1) - 1)) : 10;
  series.forEach((p, i) => {
    if (isNum(p)) {
      svg.append(s("circle", { class: "dot", cx: x(i), cy: y(p.value), r: n > 40 ? 1.5 : 2.6 }, s("title", { text: `${fmtX(windows[i])}: ${text(p)}` })));
    } else {
      svg.append(s("rect", { class: "null-band", x: x(i) - slot / 2, y: m.top, width: slot, height: ih }, s("title", { text: `${fmtX(windows[i])}: ${BELOW}` })));
    }
  });
  svg.append(s("line", { class: "baseline", x1: m.left, x2: W - m.right, y1: m.top + ih, y2: m.top + ih }));
  if (n > 0) {
    svg.append(
      s("text", { class: "axis-label", x: x(0), y: H - 6, "text-anchor": n > 1 ? "start" : "middle", text: fmtX(windows[0]) }),
    );
    if (n > 1) svg.append(s("text", { class: "axis-label", x: x(n - 1), y: H - 6, "text-anchor": "end", text: fmtX(windows[n - 1]) }));
  }
  return svg;
}

// ---- world map -------------------------------------------------------------------------------------

/**
 * world: {width, height, shapes: {A2: pathD}, points: {A2: [x, y]}}; values: Map A2 -> Num.
 * names: A2 -> display name.
 */
export function worldMap(world, values, names, label) {
  const nums = [...values.values()].filter(isNum).map((n) => n.value);
  const scale = classes(nums, { log: true });
  const svg = chartSvg(world.width, world.height, label, "chart map");
  const describe = (code) => {
    const n = values.get(code);
    return `${names(code)}: ${isNum(n) ? `${text(n)} sessions` : "no published sessions"}`;
  };
  const land = s("g", { class: "countries" });
  for (const [code, d] of Object.entries(world.shapes)) {
    const n = values.get(code);
    const cls = isNum(n) ? scale.cls(n.value) : "land";
    land.append(s("path", { class: `country ${cls}`, d, "data-country": code }, s("title", { text: describe(code) })));
  }
  svg.append(land);
  // Small countries (no shape at this scale): a dot, only when they have data.
  const pins = s("g", { class: "pins" });
  for (const [code, [px, py]] of Object.entries(world.points || {})) {
    const n = values.get(code);
    if (!isNum(n) || !(n.value > 0)) continue;
    pins.append(s("circle", { class: `pin ${scale.cls(n.value)}`, cx: px, cy: py, r: 4, "data-country": code }, s("title", { text: describe(code) })));
  }
  svg.append(pins);
  return { svg, legend: legend(scale.breaks, { lower: scale.min, nullNote: false, unit: "sessions" }) };
}
