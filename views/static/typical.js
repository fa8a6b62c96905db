// "Am I typical?": the visitor's answer is compared with the public histogram that
// the page already holds. Nothing is sent: no fetch, no form submission (the form's
// submit is cancelled and the CSP forbids form actions), nothing stored.

import { bucketPosition, edgesFromLabels, histogram } from "./charts.js";
import { fill, h } from "./dom.js";
import { fmtFixed, fmtRange, isNum, numEl } from "./fmt.js";
import { widthOf } from "./panels.js";

/**
 * Share of the histogram's mass below `v` (linear inside its bucket), with the
 * delta-method sd from the buckets' noise. Null buckets count as empty; negative
 * noisy counts are clipped to 0. Returns {value, sd, nodes} or null if empty.
 */
export function percentileOf(edges, cells, v) {
  const counts = cells.map((c) => (isNum(c) ? Math.max(0, c.value) : 0));
  const T = counts.reduce((a, b) => a + b, 0);
  if (!(T > 0) || !edges) return null;
  const pos = bucketPosition(edges, v);
  const k = Math.min(edges.length - 1, Math.floor(pos));
  const frac = pos - k;
  const weight = (i) => (i < k ? 1 : i === k ? frac : 0);
  const below = counts.reduce((a, c, i) => a + weight(i) * c, 0);
  const p = below / T;
  let variance = 0;
  cells.forEach((c, i) => {
    if (isNum(c) && c.value > 0) variance += ((weight(i) - p) / T) ** 2 * c.sd ** 2;
  });
  const nodes = Math.max(0, ...cells.filter(isNum).map((c) => c.nodes));
  return { value: Math.min(1, Math.max(0, p)), sd: Math.sqrt(variance), nodes };
}

/** Shares of the mass below, in and above band `b`, each with its delta-method sd. */
export function bandPosition(cells, b) {
  const counts = cells.map((c) => (isNum(c) ? Math.max(0, c.value) : 0));
  const T = counts.reduce((a, x) => a + x, 0);
  if (!(T > 0)) return null;
  const part = (pred) => {
    const p = counts.reduce((a, c, i) => a + (pred(i) ? c : 0), 0) / T;
    let variance = 0;
    cells.forEach((c, i) => {
      if (isNum(c) && c.value > 0) variance += (((pred(i) ? 1 : 0) - p) / T) ** 2 * c.sd ** 2;
    });
    return { value: p, sd: Math.sqrt(variance), nodes: 0 };
  };
  return { below: part((i) => i < b), same: part((i) => i === b), above: part((i) => i > b) };
}

function describeRunway(p) {
  const v = p.value;
  if (v < 0.25) return "That is a shorter runway than most — you are far from alone, and the tools are built for exactly this.";
  if (v < 0.5) return "That is a little below the middle: many people are planning from where you are.";
  if (v <= 0.75) return "That puts you in the middle half of everyone who used the runway calculator.";
  return "That is a longer runway than most people who used the runway calculator.";
}

let financial = null;

/** Called whenever the financial view (re)loads; re-runs any comparison already shown. */
export function setFinancial(env) {
  financial = env;
  const runway = financial && financial.data.runway_months;
  const savings = financial && financial.data.savings_band;
  document.getElementById("typical-runway").hidden = !runway;
  document.getElementById("typical-savings").hidden = !savings;
  const select = document.getElementById("typical-savings-input");
  if (savings && select.options.length <= 1) {
    for (const label of savings.labels) select.append(h("option", { value: label, text: label }));
  }
  for (const id of ["typical-runway-out", "typical-savings-out"]) {
    if (document.getElementById(id).childNodes.length) document.getElementById(id.replace("-out", "")).requestSubmit();
  }
}

function compareRunway() {
  const out = document.getElementById("typical-runway-out");
  const input = document.getElementById("typical-runway-input");
  const raw = input.value.trim();
  const v = Number(raw);
  if (!raw || !Number.isFinite(v) || v < 0) {
    fill(out, h("p", { class: "verdict", text: "Enter your runway as a number of months, like 8.5." }));
    return;
  }
  const m = financial && financial.data.runway_months;
  const edges = m && edgesFromLabels(m.labels);
  const p = m && percentileOf(edges, m.cells, v);
  if (!p) {
    fill(out, h("p", { class: "verdict", text: "Not enough published data in this range to compare." }));
    return;
  }
  const median = m.quantiles && m.quantiles.p50;
  fill(
    out,
    h("p", { class: "verdict", "data-percentile": fmtFixed(p.value * 100, 0) },
      h("span", { class: "big" }, numEl(p, "pct", { digits: 0 })),
      `of the people who used the runway calculator from ${fmtRange(financial.from, financial.to)} reported a shorter runway than your ${fmtFixed(v, 1)} months.`),
    h("p", {}, describeRunway(p), isNum(median) ? ` The median is ${fmtFixed(median.value, 1)} months.` : ""),
    histogram({ width: widthOf(out.closest("form"), 460) - 40, labels: m.labels, cells: m.cells, quantiles: m.quantiles, unit: "months", you: v, label: `Runway histogram with your ${fmtFixed(v, 1)} months marked` }),
    h("p", { class: "privacy-badge", text: "✓ Computed in your browser. Nothing was sent." }),
  );
}

function compareSavings() {
  const out = document.getElementById("typical-savings-out");
  const band = document.getElementById("typical-savings-input").value;
  const m = financial && financial.data.savings_band;
  if (!band || !m) {
    fill(out, h("p", { class: "verdict", text: "Choose the band closest to your savings." }));
    return;
  }
  const b = m.labels.indexOf(band);
  const pos = b >= 0 ? bandPosition(m.cells, b) : null;
  if (!pos) {
    fill(out, h("p", { class: "verdict", text: "Not enough published data in this range to compare." }));
    return;
  }
  const rows = [
    ["have less saved", pos.below],
    [`are in your band (${band})`, pos.same],
    ["have more saved", pos.above],
  ];
  fill(
    out,
    h("p", { class: "verdict", "data-percentile": fmtFixed(pos.below.value * 100, 0) },
      h("span", { class: "big" }, numEl(pos.below, "pct", { digits: 0 })),
      `of the people who told the runway calculator their savings band have less saved than you.`),
    h("ul", { class: "sentences" }, rows.map(([label, n]) => h("li", {}, h("strong", {}, numEl(n, "pct", { digits: 0 })), ` ${label}`))),
    isNum(m.cells[b]) ? null : h("p", { class: "panel-note", text: "Your band is below the publication threshold in this range, so it counts as empty here." }),
    h("p", { class: "privacy-badge", text: "✓ Computed in your browser. Nothing was sent." }),
  );
}

export function initTypical() {
  const runway = document.getElementById("typical-runway");
  const savings = document.getElementById("typical-savings");
  runway.addEventListener("submit", (event) => {
    event.preventDefault();
    compareRunway();
  });
  savings.addEventListener("submit", (event) => {
    event.preventDefault();
    compareSavings();
  });
  document.getElementById("typical-savings-input").addEventListener("change", () => savings.requestSubmit());
}
