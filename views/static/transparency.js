// "What we collect — and what we never collect", generated from /v1/catalog, and the
// public transparency log from /v1/log.

import { dataTable, fill, h } from "./dom.js";
import { fmtFixed, fmtInt, fmtUnixDay, humanize, plural, windowWords } from "./fmt.js";
import { toolClass } from "./charts.js";

const KIND_WORDS = {
  number: "a number, kept only as the bucket it falls in",
  money: "an amount of money, turned into a band on arrival — the amount itself is never stored",
  band: "a band the person picks themselves",
  category: "one of a fixed list; anything else becomes “other”",
};

const DIMENSION_WORDS = {
  app: "tool",
  app_action: "tool and step",
  app_pair: "ordered pair of tools",
  country: "country",
  hour: "UTC hour",
  stage: "started / completed",
  tool_count: "number of tools",
  duration: "duration bucket",
};

function dimensionWords(dim) {
  if (dim.startsWith("attr:")) return humanize(dim.slice(5)).toLowerCase();
  return DIMENSION_WORDS[dim] || dim;
}

const epsFmt = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 3 });
const eps = (v) => epsFmt.format(v);
const weightFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 3 });

export function renderTransparency(cat) {
  const root = document.getElementById("transparency");
  const metrics = cat.metrics || [];
  const minThreshold = metrics.length ? Math.min(...metrics.map((m) => m.threshold)) : cat.k_min;
  const maxThreshold = metrics.length ? Math.max(...metrics.map((m) => m.threshold)) : cat.k_min;
  const fact = (value, label, textContent) =>
    h("div", { class: "fact" }, h("span", { class: "fact-value", text: value }), h("strong", { text: label }), h("span", { class: "fact-text", text: textContent }));
  const apps = Object.entries(cat.apps || {});
  const attributes = Object.entries(cat.attributes || {});
  const w = windowWords(cat.window);
  const utc = w.unit === "week" ? "ISO week (from Monday, UTC)" : "UTC day";
  fill(
    root,
    h("div", { class: "facts" },
      fact(`ε = ${fmtFixed(cat.epsilon_per_window, 1)}`, `privacy budget ${w.per}`, `Differential privacy: the total privacy loss of one ${w.unit}'s published numbers, split across ${plural(metrics.length, "metric")} by their weights.`),
      fact(`≥ ${fmtInt(cat.k_min)}`, "smallest number ever shown", `A count is shown only once it stands clear of the noise summed over every community and ${w.unit} behind it (from ${fmtInt(minThreshold)} to ${fmtInt(maxThreshold)} for one community-${w.unit} here, never under ${fmtInt(cat.k_min)}); the rest is shown as "not distinguishable from noise", never as zero. The noise, not the threshold, is what protects each person.`),
      fact(`${fmtInt(cat.retention_days)} days`, "raw events kept, at most", "Each community node deletes its raw, already-minimised events after this; only noisy totals leave the node."),
      fact(`${fmtInt(cat.max_events_per_session)}`, "events per session counted", "Beyond this, one session's events are not counted, so no single person can move a number much."),
    ),
    h("div", { class: "grid two" },
      h("article", { class: "panel", "aria-labelledby": "never-title" },
        h("header", { class: "panel-head" }, h("h3", { id: "never-title", text: "Never collected" })),
        h("ul", { class: "never", id: "never-collected" }, (cat.never_collected || []).map((item) =>
          h("li", {}, h("span", { class: "cross", "aria-hidden": "true", text: "✕" }), h("span", { text: item })))),
        h("p", { class: "panel-note", text: `Sessions are linked only within one ${utc} by a keyed hash whose key is destroyed when that ${w.unit} is exported: nobody, including the node's operator, can follow a person from one ${w.unit} to the next.` })),
      h("article", { class: "panel", "aria-labelledby": "apps-title" },
        h("header", { class: "panel-head" }, h("h3", { id: "apps-title", text: "The tools and what each may send" })),
        h("div", { class: "app-list" }, apps.map(([name, app], i) =>
          h("div", { class: `app-item ${toolClass(i)}`, "data-app": name },
            h("h4", {}, h("span", { class: "swatch", "aria-hidden": "true" }), app.title || humanize(name), h("code", { class: "flag-code", text: name })),
            h("dl", { class: "kv" },
              h("dt", { text: "Steps" }), h("dd", {}, h("ul", { class: "chips" }, app.actions.map((a) => h("li", { text: a })))),
              h("dt", { text: "Details" }), h("dd", {}, app.attributes.length
                ? h("ul", { class: "chips attr" }, app.attributes.map((a) => h("li", {}, h("code", { text: a }))))
                : "none")))))),
    ),
    h("article", { class: "panel", id: "attributes", "aria-labelledby": "attributes-title" },
      h("header", { class: "panel-head" }, h("h3", { id: "attributes-title", text: "Every detail a tool may send, and the only values it can take" })),
      h("div", { class: "table-wrap" },
        h("table", { class: "data attr-table" },
          h("caption", { class: "visually-hidden", text: "Declared attributes with their public domains" }),
          h("thead", {}, h("tr", {}, ["Attribute", "What it is", "How it is kept", "Possible values (public domain)"].map((t) => h("th", { scope: "col", text: t })))),
          h("tbody", {}, attributes.map(([name, a]) =>
            h("tr", { "data-attribute": name },
              h("th", { scope: "row" }, h("code", { text: name })),
              h("td", { text: a.description || "" }),
              h("td", { text: KIND_WORDS[a.kind] || a.kind }),
              h("td", {}, h("ul", { class: "chips" }, a.domain.map((v) => h("li", { text: v }))))))))),
      h("p", { class: "panel-note", text: "Anything a tool sends that is not declared here is dropped before it is stored — and only counted as “dropped”." })),
    h("article", { class: "panel", id: "metrics", "aria-labelledby": "metrics-title" },
      h("header", { class: "panel-head" }, h("h3", { id: "metrics-title", text: "What is published, and how much noise protects it" })),
      h("p", { class: "panel-note", text: `Each ${w.unit}, every node counts these metrics, bounds what one session can add (the sensitivity), adds discrete Laplace noise of the given scale to every cell — zeros included — and publishes them all; a cell is shown once its sum over every community and ${w.unit} stands clear of that noise (“shown from”: for one community-${w.unit}). The epsilons add up to ${fmtFixed(cat.epsilon_community ?? cat.epsilon_per_window, 2)} ${w.per}, split to make the noise least where the weights say it matters most (ε of a metric grows with the cube root of its weight times its sensitivity squared); ${cat.federation ? `the federation round of each ${w.unit} spends ${fmtFixed(cat.epsilon_federation, 2)} more, noised once on the sum over every community by the share keepers (${plural(cat.federation.metrics.length, "metric")})` : "no federation rounds"}, ${fmtFixed(cat.epsilon_per_window, 1)} in all.` }),
      h("div", { class: "table-wrap" },
        h("table", { class: "data" },
          h("caption", { class: "visually-hidden", text: "Published metrics with their privacy parameters" }),
          h("thead", {}, h("tr", {}, [["Metric"], ["Counts"], ["By"], ["Weight", 1], [`ε ${w.per}`, 1], ["Noise scale", 1], ["Sensitivity", 1], ["Shown from", 1], ["Cells", 1]].map(([t, n]) => h("th", { scope: "col", class: n ? "n" : null, text: t })))),
          h("tbody", {}, metrics.map((m) =>
            h("tr", { "data-metric": m.name },
              h("th", { scope: "row" }, h("code", { text: m.name })),
              h("td", { text: `${m.description} (${m.unit})` }),
              h("td", { text: m.dimensions.map(dimensionWords).join(" × ") }),
              h("td", { class: "n", text: m.weight === undefined ? "—" : weightFmt.format(m.weight) }),
              h("td", { class: "n", text: eps(m.epsilon) }),
              h("td", { class: "n", text: fmtFixed(m.scale, 1) }),
              h("td", { class: "n", text: fmtInt(m.sensitivity) }),
              h("td", { class: "n", text: fmtInt(m.threshold) }),
              h("td", { class: "n", text: fmtInt(m.cells) }))))))),
  );
  const foot = document.getElementById("footer-catalog");
  fill(foot, `Catalog “${cat.name}” v${cat.version} · hash `, h("code", { text: cat.hash }));
}

export function renderLog(log, recent) {
  const body = document.querySelector("#translog .panel-body");
  const head = log.head || {};
  const entries = (recent && recent.entries) || [];
  const short = (x) => (x ? `${String(x).slice(0, 12)}…` : "—");
  fill(
    body,
    // The chain alone proves only that the log agrees with itself (a rewrite recomputes it): say what catches one.
    h("p", { class: "panel-note", text: "Every snapshot the hub accepts is appended to a hash-chained log whose head the hub signs. The chain alone shows only that the log agrees with itself. A later rewrite is caught by anyone who pinned the hub's key (from its operator, not from this page) and kept a head they checked before, and each community can check that every one of its snapshots is in the log once, with the ε it recorded: liberation hub log verify." }),
    h("dl", { class: "kv", id: "log-head" },
      h("dt", { text: "Entries" }), h("dd", { text: fmtInt(head.seq || 0) }),
      h("dt", { text: "Head hash" }), h("dd", {}, h("code", { text: short(head.entry_hash) })),
      h("dt", { text: "Signed by hub key" }), h("dd", {}, h("code", { text: log.hub || "—" }))),
    entries.length
      ? dataTable("Latest log entries", [{ label: "#" }, { label: "Node" }, { label: "Day" }, { label: "ε spent", numeric: true }, { label: "Snapshot digest" }],
          [...entries].reverse().map((e) => [String(e.seq), short(e.node), fmtUnixDay(e.window_start, true),
            fmtFixed(Object.values(e.epsilon || {}).reduce((a, b) => a + b, 0), 2), short(e.digest)]),
          { summary: "Show the latest entries" })
      : null,
  );
}
