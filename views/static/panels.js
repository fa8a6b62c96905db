// One renderer per view. Each takes the view's envelope ({view, from, to, windows,
// nodes, k_min, data}) and a context ({titles, order}) and fills its panel.

import { barList, heatmap, histogram, lineChart, sankeyChart, toolClass, worldMap, classes } from "./charts.js";
import { dataTable, fill, h } from "./dom.js";
import {
  BELOW, countryName, fmtCompact, fmtFixed, fmtInt, fmtRange, fmtUnixDay, humanize, isNum, numEl, parts, plural, text,
  windowWords,
} from "./fmt.js";

const capitalize = (t) => t.charAt(0).toUpperCase() + t.slice(1);
const body = (id) => document.querySelector(`#${id} .panel-body`) || document.getElementById(id);

/** Usable width of an element for a chart drawn at 1 unit = 1 CSS pixel (fallback while hidden). */
export function widthOf(el, fallback = 560) {
  const w = el ? el.clientWidth : 0;
  return w > 0 ? w : fallback;
}

function title(ctx, app, fallback) {
  return ctx.titles[app] || fallback || humanize(app);
}

function toolIndex(ctx, app) {
  const i = ctx.order.indexOf(app);
  return i < 0 ? ctx.order.length : i;
}

function swatch(ctx, app) {
  return h("span", { class: `swatch ${toolClass(toolIndex(ctx, app))}`, "aria-hidden": "true" });
}

const numCells = (n, kind = "count", digits) => {
  const p = parts(n, kind, digits);
  return p ? [p.value, p.pm.replace("± ", "")] : [BELOW, ""];
};

/** Sum of present numbers: values add, variances add, nodes = the most any part had. */
export function sumNums(nums) {
  const present = nums.filter(isNum);
  if (!present.length) return null;
  return {
    value: present.reduce((a, n) => a + n.value, 0),
    sd: Math.sqrt(present.reduce((a, n) => a + n.sd * n.sd, 0)),
    nodes: Math.max(...present.map((n) => n.nodes)),
  };
}

// ---- 1. headline --------------------------------------------------------------------------

export function renderHeadline(env, ctx) {
  const d = env.data;
  const card = (metric, label, valueEl, sub, hero = false) =>
    h("div", { class: `card${hero ? " hero" : ""}`, "data-metric": metric },
      h("span", { class: "card-label", text: label }),
      h("span", { class: "card-value" }, valueEl),
      sub ? h("span", { class: "card-sub", text: sub }) : null);
  const plain = (v) => h("span", { class: "num" }, h("span", { class: "value", text: fmtInt(v) }));
  fill(
    document.getElementById("headline"),
    card("sessions", "Sessions", numEl(d.sessions), "people using liberation tools", true),
    card("events", "Events", numEl(d.events), "steps taken inside the tools"),
    card("tools", "Tools in use", h("span", { class: "num" }, h("span", { class: "value", text: fmtInt(d.tools) }), h("span", { class: "of", text: ` of ${fmtInt(d.tools_in_catalog)}` })), "with published activity"),
    card("countries", "Countries", plain(d.countries), "with published sessions"),
    card("nodes", "Community nodes", plain(d.nodes), `reporting on the busiest ${windowWords(env.window).unit}`),
    card("windows", `${windowWords(env.window).title} of data`, plain(d.windows), fmtRange(env.from, env.to)),
  );
  const lede = document.getElementById("overview-lede");
  const sessions = isNum(d.sessions) ? `${text(d.sessions)} sessions` : "sessions (too few to publish)";
  fill(lede, `From ${fmtRange(env.from, env.to)}, people in ${plural(d.countries, "country", "countries")} ran ${sessions} on ${plural(d.tools, "liberation tool")}, as reported by ${plural(d.nodes, "community node")}. No individual was tracked to get here.`);
}

// ---- 2. usage -------------------------------------------------------------------------------

export function renderUsage(env, ctx, measure = "sessions") {
  const d = env.data;
  const apps = Object.entries(d.apps);
  const key = measure === "events" ? "events" : "sessions";
  const max = Math.max(1e-9, ...apps.flatMap(([, a]) => Object.values(a.actions).map((x) => (isNum(x[key]) ? x[key].value + x[key].sd : 0))));
  const groups = apps.map(([app, a]) => {
    const total = measure === "events" ? a.events : a.action_sessions;
    return h("div", { class: `bar-group ${toolClass(toolIndex(ctx, app))}`, "data-app": app },
      h("div", { class: "bar-group-head" },
        h("h4", {}, swatch(ctx, app), a.title || title(ctx, app)),
        h("span", { class: "panel-note" }, numEl(total), measure === "events" ? " events" : " action sessions")),
      barList(Object.entries(a.actions).map(([action, x]) => ({ key: action, label: humanize(action), num: x[key] })), { max }));
  });
  const other = d.other && d.other[key];
  fill(
    body("usage"),
    h("div", {}, groups),
    h("p", { class: "panel-note" },
      measure === "events"
        ? "Events count each step, capped per session. "
        : "A session that used two steps of a tool counts once per step. ",
      "Not attributable to a step (cells not distinguishable from noise): ", numEl(other), "."),
    dataTable("Sessions and events per tool and step", [
      { label: "Tool / step" }, { label: "Sessions", numeric: true }, { label: "± (sd)", numeric: true }, { label: "Events", numeric: true }, { label: "± (sd)", numeric: true },
    ], apps.flatMap(([app, a]) => Object.entries(a.actions).map(([action, x]) => [
      `${a.title || title(ctx, app)} — ${action}`, ...numCells(x.sessions), ...numCells(x.events),
    ]))),
  );
}

// ---- 3. completion -----------------------------------------------------------------------------

export function renderCompletion(env, ctx) {
  const entries = Object.entries(env.data);
  const list = h("div", { class: "rate-list" });
  for (const [app, c] of entries) {
    const r = c.rate;
    const track = h("div", { class: `rate-track${isNum(r) ? "" : " bar-track null"}`, "aria-hidden": "true" });
    if (isNum(r)) {
      const lo = Math.max(0, r.value - r.sd);
      const hi = Math.min(1, r.value + r.sd);
      track.append(
        h("span", { class: "rate-fill", vars: { "--w": `${(r.value * 100).toFixed(2)}%` } }),
        h("span", { class: "rate-band", vars: { "--lo": `${(lo * 100).toFixed(2)}%`, "--ew": `${((hi - lo) * 100).toFixed(2)}%` } }),
      );
    }
    list.append(
      h("div", { class: `rate ${toolClass(toolIndex(ctx, app))}`, "data-app": app },
        h("div", { class: "rate-head" },
          h("h4", {}, c.title || title(ctx, app)),
          h("span", { class: "rate-value" }, numEl(r, "pct"))),
        track,
        h("p", { class: "rate-sub" }, numEl(c.completed), " of ", numEl(c.started), " sessions that started it went on to complete it.")),
    );
  }
  const rated = entries.filter(([, c]) => isNum(c.rate)).sort((a, b) => b[1].rate.value - a[1].rate.value);
  const insight = rated.length
    ? h("p", { class: "panel-note" }, `${rated[0][1].title || title(ctx, rated[0][0])} has the highest completion rate: `, numEl(rated[0][1].rate, "pct"), ". The shaded band is ± one standard deviation of the noise.")
    : h("p", { class: "panel-note", text: "No completion rate is distinguishable from noise in this range." });
  fill(
    body("completion"),
    list,
    insight,
    dataTable("Completion per tool", [
      { label: "Tool" }, { label: "Started", numeric: true }, { label: "±", numeric: true }, { label: "Completed", numeric: true }, { label: "±", numeric: true }, { label: "Rate", numeric: true }, { label: "±", numeric: true },
    ], entries.map(([app, c]) => [c.title || title(ctx, app), ...numCells(c.started), ...numCells(c.completed), ...numCells(c.rate, "pct")])),
  );
}

// ---- 4. tool combinations -------------------------------------------------------------------------

export function renderCombinations(env, ctx) {
  const d = env.data;
  const sankey = d.sankey;
  const parts_ = [];
  if (sankey && sankey.values.length) {
    parts_.push(h("div", { class: "scroll-x sankey-wrap" }, sankeyChart(sankey, ctx.titles, "Flow from the first tool used to the next tool, in sessions", widthOf(body("combinations"), 680))));
  } else {
    parts_.push(h("p", { class: "panel-note", text: "No pair of tools is distinguishable from noise in this range." }));
  }
  // One sentence per unordered pair: who tends to come first.
  const seen = new Set();
  const sentences = [];
  for (const [label, p] of Object.entries(d.pairs)) {
    const back = `${p.to}>${p.from}`;
    if (seen.has(back)) continue;
    seen.add(label);
    const other = d.pairs[back];
    if (!isNum(p.share_before)) continue;
    const flip = p.share_before.value < 0.5;
    const first = flip ? p.to : p.from;
    const then = flip ? p.from : p.to;
    const share = flip ? other.share_before : p.share_before;
    const both = sumNums([p.sessions, other && other.sessions]);
    sentences.push({ both: both ? both.value : 0, first, then, share, both_num: both });
  }
  sentences.sort((a, b) => b.both - a.both);
  if (sentences.length) {
    parts_.push(h("ul", { class: "sentences" }, sentences.map((x) =>
      h("li", { "data-pair": `${x.first}>${x.then}` },
        h("span", { class: "big" }, numEl(x.share, "pct", { digits: 0 })),
        ` of the sessions that used both the ${title(ctx, x.first).toLowerCase()} and the ${title(ctx, x.then).toLowerCase()} opened the ${title(ctx, x.first).toLowerCase()} first (`,
        numEl(x.both_num), " sessions).")),
    ));
  }
  parts_.push(h("p", { class: "panel-note" }, "Pairs not distinguishable from noise, together: ", numEl(d.other), "."));
  parts_.push(dataTable("Sessions per ordered pair of tools", [
    { label: "First → then" }, { label: "Sessions", numeric: true }, { label: "±", numeric: true }, { label: "Share first", numeric: true }, { label: "±", numeric: true },
  ], Object.values(d.pairs).map((p) => [`${title(ctx, p.from)} → ${title(ctx, p.to)}`, ...numCells(p.sessions), ...numCells(p.share_before, "pct")])));
  fill(body("combinations"), parts_);
}

// ---- 8. session shape -------------------------------------------------------------------------------

/** Mean of a count histogram (bucket k holds sessions with k tools), sd by the delta method. */
export function meanOfCounts(labels, cells) {
  const ks = labels.map(Number);
  const present = cells.map((c, i) => [ks[i], c]).filter(([k, c]) => isNum(c) && Number.isFinite(k));
  const T = present.reduce((a, [, c]) => a + Math.max(0, c.value), 0);
  if (!(T > 0)) return null;
  const mean = present.reduce((a, [k, c]) => a + k * Math.max(0, c.value), 0) / T;
  const variance = present.reduce((a, [k, c]) => a + ((k - mean) / T) ** 2 * c.sd ** 2, 0);
  return { value: mean, sd: Math.sqrt(variance), nodes: Math.max(...present.map(([, c]) => c.nodes)) };
}

export function shareOf(cells, predicate) {
  const present = cells.map((c, i) => [i, c]).filter(([, c]) => isNum(c));
  const T = present.reduce((a, [, c]) => a + Math.max(0, c.value), 0);
  if (!(T > 0)) return null;
  const part = present.filter(([i]) => predicate(i)).reduce((a, [, c]) => a + Math.max(0, c.value), 0);
  const p = part / T;
  const variance = present.reduce((a, [i, c]) => a + (((predicate(i) ? 1 : 0) - p) / T) ** 2 * c.sd ** 2, 0);
  return { value: p, sd: Math.sqrt(variance), nodes: Math.max(...present.map(([, c]) => c.nodes)) };
}

export function renderShape(env, ctx) {
  const { tool_count: tools, duration } = env.data;
  const median = duration.quantiles && duration.quantiles.p50;
  const mean = meanOfCounts(tools.labels, tools.cells);
  const multi = shareOf(tools.cells, (i) => Number(tools.labels[i]) >= 2);
  const stat = (metric, label, el, sub) => h("div", { class: "stat", "data-metric": metric }, h("span", { class: "stat-label", text: label }), h("span", { class: "stat-value" }, el), h("span", { class: "stat-sub", text: sub }));
  fill(
    body("shape"),
    h("div", { class: "stat-row" },
      stat("median-duration", "Median session", numEl(median, "dec", { unit: "min" }), "first to last step"),
      stat("mean-tools", "Tools per session", numEl(mean, "dec", { digits: 2 }), "on average"),
      stat("multi-tool", "Used 2+ tools", numEl(multi, "pct", { digits: 0 }), "of sessions")),
    h("h4", { text: "Tools used per session" }),
    barList(tools.labels.map((l, i) => ({ key: l, label: `${l} tool${l === "1" ? "" : "s"}`, num: tools.cells[i] }))),
    h("h4", { text: "Session duration" }),
    histogram({
      width: widthOf(body("shape"), 420),
      labels: duration.labels, cells: duration.cells, edges: duration.edges, quantiles: duration.quantiles, unit: "minutes",
      label: `Histogram of session duration in minutes; median ${isNum(median) ? fmtFixed(median.value, 1) : "unknown"} minutes`,
    }),
    h("p", { class: "panel-note" }, "The shaded band holds the middle half of sessions; dashed lines mark the quartiles. Sessions in buckets not distinguishable from noise: ", numEl(duration.other), "."),
    dataTable("Session shape", [{ label: "Bucket" }, { label: "Sessions", numeric: true }, { label: "±", numeric: true }], [
      ...tools.labels.map((l, i) => [`${l} tool(s)`, ...numCells(tools.cells[i])]),
      ...duration.labels.map((l, i) => [`${l} min`, ...numCells(duration.cells[i])]),
    ]),
  );
}

// ---- 5. peak times --------------------------------------------------------------------------------------

export function renderPeaks(env, ctx, tool = "") {
  const d = env.data;
  const matrix = tool && d.by_app[tool] ? d.by_app[tool] : d.events;
  const label = `Events by weekday and hour (UTC)${tool ? ` for the ${title(ctx, tool)}` : ""}`;
  const { svg, legend } = heatmap(matrix, d.weekdays, d.hours, label);
  const cells = [];
  matrix.forEach((row, i) => row.forEach((n, j) => { if (isNum(n)) cells.push({ i, j, n }); }));
  cells.sort((a, b) => b.n.value - a.n.value);
  const days = d.weekdays.map((day, i) => ({ day, n: sumNums(matrix[i]) })).filter((x) => x.n);
  const week = sumNums(days.map((x) => x.n));
  days.sort((a, b) => b.n.value - a.n.value);
  const busiest = cells.slice(0, 3).map((c) => `${d.weekdays[c.i]} ${d.hours[c.j]}:00 (${text(c.n)})`);
  const insights = [];
  if (busiest.length) insights.push(h("li", {}, h("strong", { text: "Busiest hours (UTC): " }), busiest.join(", "), "."));
  if (days.length && week && week.value > 0) {
    insights.push(h("li", {}, h("strong", { text: `${days[0].day}` }), ` is the busiest day: ${fmtFixed((days[0].n.value / week.value) * 100, 0)}% of the week's events, ${fmtFixed((days[0].n.value / week.value) * 7, 1)}× an average day.`));
  }
  fill(
    body("peaks"),
    h("div", { class: "scroll-x heat-wrap" }, svg),
    legend,
    insights.length ? h("ul", { class: "sentences" }, insights) : null,
    h("p", { class: "panel-note", text: env.window === "week"
      ? `Built from ${plural(env.windows, "weekly window")}: a weekly count keeps the hour of each event, not its weekday, so the row sums every day of the week. Hours are UTC, so evenings in the Americas appear after midnight.`
      : `Built from ${plural(env.windows, "daily window")}; each weekday sums the days of that weekday in the range. Hours are UTC, so evenings in the Americas appear after midnight.` }),
    dataTable(label, [{ label: "Day" }, ...d.hours.map((hr) => ({ label: hr, numeric: true }))],
      d.weekdays.map((day, i) => [day, ...matrix[i].map((n) => (isNum(n) ? text(n) : BELOW))])),
  );
}

// ---- 6. geography ------------------------------------------------------------------------------------------

export function countryTotals(d, tool) {
  const totals = new Map();
  if (!Object.keys(d.by_app).length) {
    // Each session once (no per-tool split): every country counted is in the list.
    for (const c of d.countries) totals.set(c.country, c.sessions);
    return totals;
  }
  const apps = tool ? [tool] : Object.keys(d.by_app);
  for (const app of apps) {
    for (const [code, n] of Object.entries(d.by_app[app] || {})) {
      totals.set(code, sumNums([totals.get(code), n]));
    }
  }
  return totals;
}

const TOP_COUNTRIES = 12;

export function renderGeography(env, ctx, world, tool = "") {
  const d = env.data;
  const totals = countryTotals(d, tool);
  let ranked;
  if (!tool) ranked = d.countries.map((c) => ({ code: c.country, n: c.sessions }));
  else ranked = [...totals.entries()].filter(([, n]) => isNum(n)).map(([code, n]) => ({ code, n })).sort((a, b) => b.n.value - a.n.value);
  const top = ranked.slice(0, TOP_COUNTRIES);
  const mapLabel = `World map of sessions by country${tool ? ` for the ${title(ctx, tool)}` : ""}; ${totals.size} countries have published sessions`;
  const mapPart = world
    ? (() => {
        const { svg, legend } = worldMap(world, totals, countryName, mapLabel);
        return h("div", {}, h("div", { class: "map-frame" }, svg), legend);
      })()
    : h("p", { class: "panel-note", text: "The map could not be loaded; the list shows every country." });
  const unattributed = tool ? d.unattributed[tool] : sumNums(Object.values(d.unattributed));
  // Countries too small to tell apart from noise fold into their UN M49 region; a region that stands clear is shown.
  const regions = !tool && Array.isArray(d.regions) ? d.regions : [];
  const regionList = regions.length
    ? h("div", { class: "regions" },
        h("h4", { text: "Regions of the smaller countries" }),
        barList(regions.map((r) => ({
          key: r.region,
          label: r.name,
          labelEl: h("span", {}, r.name),
          num: r.sessions,
          title: `${r.name}: ${text(r.sessions)} sessions from countries too small to show one by one`,
        })), { className: "region-list", max: Math.max(1e-9, ...[...regions.map((r) => r.sessions), ...top.map((c) => c.n)]
          .filter(isNum).map((n) => n.value + n.sd)) }))
    : null;
  const list = barList(top.map((c, i) => ({
    key: c.code,
    rank: i + 1,
    label: countryName(c.code),
    labelEl: h("span", {}, countryName(c.code), h("span", { class: "flag-code", text: c.code })),
    num: c.n,
    title: `${countryName(c.code)}: ${text(c.n)} sessions`,
  })), { className: "country-list" });
  fill(
    body("geography"),
    h("div", { class: "map-layout" },
      mapPart,
      h("div", {},
        // The heading says how many the list shows: the list is the whole truth of it.
        h("h4", { text: `Top ${plural(top.length, "country", "countries")}${tool ? ` — ${title(ctx, tool)}` : ""}` }),
        list,
        regionList,
        h("div", { class: "map-foot" },
          h("span", {}, h("strong", { text: fmtInt(tool ? totals.size : d.countries_with_data) }), " countries whose sessions stand clear of the noise."),
          !tool && isNum(d.rest) ? h("span", {}, "Countries beyond the list, together: ", numEl(d.rest), ".") : null,
          regions.length ? h("span", {}, h("strong", { text: fmtInt(regions.length) }), ` ${regions.length === 1 ? "region" : "regions"} whose smaller countries together stand clear of the noise.`) : null,
          h("span", {}, `Sessions whose country${regions.length ? " and region" : ""} cannot be told apart from noise: `, numEl(unattributed), ".")))),
    h("p", { class: "panel-note", text: `${d.per === "session" ? "A session counts once, in the country of its first event." : "A session counts once for each tool it used."} A country too small to show on its own folds into its UN M49 region, and a region too small into the world. Countries come from the person's own hint or a one-time lookup of their connection; the address is discarded immediately.` }),
    dataTable(`Sessions by country${tool ? ` (${title(ctx, tool)})` : ""}`, [{ label: "Country" }, { label: "Code" }, { label: "Sessions", numeric: true }, { label: "±", numeric: true }, { label: "Nodes", numeric: true }],
      [...totals.entries()].filter(([, n]) => isNum(n)).sort((a, b) => b[1].value - a[1].value)
        .map(([code, n]) => [countryName(code), code, ...numCells(n), String(n.nodes)])
        .concat(regions.map((r) => [`${r.name} (other countries)`, `M49 ${r.region}`, ...numCells(r.sessions), String(r.sessions.nodes)]))),
  );
}

// ---- 7. financial -----------------------------------------------------------------------------------------

const FIN = {
  runway_months: { title: "Runway", unit: "months", featured: true, lead: "Median runway" },
  real_wage_gap: { title: "Real-wage gap", unit: "% below the perceived wage", featured: true, lead: "Median gap" },
  savings_band: { title: "Savings", featured: true },
  industry: { title: "Industries", featured: true },
  salary_band: { title: "Yearly salary" },
  monthly_expenses: { title: "Monthly expenses" },
  debt_level: { title: "Cognitive-debt level" },
  questions_answered: { title: "Questions answered", unit: "questions" },
};

function financialPanel(parent, name, m) {
  const meta = FIN[name] || { title: humanize(name) };
  const id = `fin-${name}`;
  const bodyEl = h("div", { class: "panel-body" });
  parent.append(h("article", { class: "panel", id, "data-metric": name, "aria-labelledby": `${id}-title` },
    h("header", { class: "panel-head" }, h("h3", { id: `${id}-title`, text: meta.title })),
    bodyEl));
  // Filled once every panel is in place, so that charts measure their final width.
  return () => fillFinancial(bodyEl, name, m, Boolean(meta.featured));
}

function fillFinancial(bodyEl, name, m, featured) {
  const meta = FIN[name] || { title: humanize(name) };
  const numeric = m.kind === "number" || m.kind === "money";
  const q = m.quantiles;
  if (numeric && m.kind === "number" && q && isNum(q.p50)) {
    bodyEl.append(h("div", { class: "stat-row" },
      h("div", { class: "stat", "data-metric": `${name}-median` },
        h("span", { class: "stat-label", text: meta.lead || "Median" }),
        h("span", { class: "stat-value" }, numEl(q.p50, "dec", { unit: meta.unit && meta.unit.length < 8 ? meta.unit : "" })),
        h("span", { class: "stat-sub", text: meta.unit && meta.unit.length >= 8 ? meta.unit : "half are below, half above" })),
      h("div", { class: "stat" },
        h("span", { class: "stat-label", text: "Middle half" }),
        h("span", { class: "stat-value", text: isNum(q.p25) && isNum(q.p75) ? `${fmtFixed(q.p25.value, 1)} – ${fmtFixed(q.p75.value, 1)}` : BELOW }),
        h("span", { class: "stat-sub", text: "25th to 75th percentile" }))));
  }
  if (numeric) {
    bodyEl.append(histogram({
      width: widthOf(bodyEl, 340),
      labels: m.labels, cells: m.cells, quantiles: m.kind === "number" ? q : null, unit: meta.unit || "",
      label: `${meta.title}: sessions per bucket${isNum(q && q.p50) ? `; median ${fmtFixed(q.p50.value, 1)}` : ""}`,
    }));
  } else {
    const shares = m.share || [];
    const best = shares.map((n, i) => [n, i]).filter(([n]) => isNum(n)).sort((a, b) => b[0].value - a[0].value)[0];
    if (best && featured) {
      bodyEl.append(h("p", { class: "panel-note" }, "Most common: ", h("strong", { text: m.labels[best[1]] }), " — ", numEl(best[0], "pct", { digits: 0 }), " of sessions that answered."));
    }
    bodyEl.append(barList(m.labels.map((l, i) => ({ key: l, label: m.kind === "category" ? capitalize(l) : l, num: shares[i] })), { kind: "pct" }));
  }
  bodyEl.append(h("p", { class: "panel-note" }, `${m.description}. Buckets not distinguishable from noise, together: `, numEl(m.other), "."));
  bodyEl.append(dataTable(`${meta.title}: sessions per ${numeric ? "bucket" : "value"}`,
    [{ label: "Bucket" }, { label: "Sessions", numeric: true }, { label: "±", numeric: true }, { label: "Share", numeric: true }, { label: "±", numeric: true }],
    m.labels.map((l, i) => [l, ...numCells(m.cells[i]), ...numCells(m.share && m.share[i], "pct")])));
}

export function renderFinancial(env) {
  const d = env.data;
  const featured = Object.entries(d).filter(([name]) => (FIN[name] || {}).featured);
  const rest = Object.entries(d).filter(([name]) => !(FIN[name] || {}).featured);
  const main = fill(document.getElementById("financial"));
  const more = fill(document.getElementById("financial-more"));
  const fills = [
    ...featured.map(([name, m]) => financialPanel(main, name, m)),
    ...rest.map(([name, m]) => financialPanel(more, name, m)),
  ];
  for (const f of fills) f();
  document.getElementById("financial-more-wrap").hidden = rest.length === 0;
}

// ---- breakdown (industry x runway) ---------------------------------------------------------------------------

export function renderBreakdown(env) {
  const d = env.data;
  const table = h("table", { class: "matrix" });
  const rowsLabel = humanize(d.rows_dimension.replace(/^attr:/, ""));
  const colsLabel = humanize(d.columns_dimension.replace(/^attr:/, ""));
  table.append(h("caption", { class: "visually-hidden", text: `${rowsLabel} by ${colsLabel}: sessions per cell, shaded by the share of the row` }));
  table.append(h("thead", {}, h("tr", {},
    h("th", { scope: "col", text: rowsLabel }),
    d.columns.map((c) => h("th", { scope: "col", text: c })),
    d.median ? h("th", { scope: "col", text: "Median" }) : null)));
  const tbody = h("tbody");
  d.rows.forEach((row, r) => {
    const cells = d.cells[r];
    const rowTotal = cells.reduce((a, n) => a + (isNum(n) ? Math.max(0, n.value) : 0), 0);
    const scale = classes(cells.map((n) => (isNum(n) && rowTotal > 0 ? n.value / rowTotal : null)));
    tbody.append(h("tr", { "data-row": row },
      h("th", { scope: "row", text: humanize(row) }),
      cells.map((n, c) => {
        if (!isNum(n)) return h("td", { class: "mnull", title: `${row}, ${d.columns[c]}: ${BELOW}`, text: "–" });
        const cls = scale.cls(n.value / rowTotal).replace("q", "m");
        return h("td", { class: `m ${cls}`, title: `${humanize(row)}, ${d.columns[c]} ${colsLabel.toLowerCase()}: ${text(n)} sessions` }, fmtCompact(n.value));
      }),
      d.median ? h("td", { class: "median" }, numEl(d.median[r], "dec")) : null));
  });
  table.append(tbody);
  const medians = d.median ? d.rows.map((row, r) => ({ row, n: d.median[r] })).filter((x) => isNum(x.n)).sort((a, b) => b.n.value - a.n.value) : [];
  fill(
    body("breakdown"),
    medians.length ? h("p", { class: "lede" }, h("strong", { text: humanize(medians[0].row) }), " workers report the longest runways (median ", numEl(medians[0].n, "dec", { unit: "months" }), "); ",
      h("strong", { text: humanize(medians[medians.length - 1].row).toLowerCase() }), " the shortest (", numEl(medians[medians.length - 1].n, "dec", { unit: "months" }), ").") : null,
    h("div", { class: "matrix-wrap" }, table),
    h("p", { class: "panel-note", text: `Columns are ${colsLabel.toLowerCase()} buckets; darker means a larger share of that row. “–” is not distinguishable from noise, not zero.` }),
  );
}

// ---- 9. trends ----------------------------------------------------------------------------------------------------

function growthEl(n) {
  if (!isNum(n)) return h("span", { class: "growth" }, numEl(null));
  const dir = n.value - n.sd > 0 ? "up" : n.value + n.sd < 0 ? "down" : "";
  return h("span", { class: `growth ${dir}` }, numEl(n, "growth"));
}

export function renderTrends(env, ctx) {
  const d = env.data;
  const fmtX = (x) => fmtUnixDay(x);
  const w = windowWords(env.window);
  const grid = fill(document.getElementById("trend-tools"));
  const pending = [];
  for (const [app, t] of Object.entries(d.tools)) {
    const chartBox = h("div", { class: "chart-box" });
    grid.append(h("article", { class: `panel trend-card ${toolClass(toolIndex(ctx, app))}`, "data-app": app, "aria-label": `Trend for the ${t.title || title(ctx, app)}` },
      h("header", { class: "panel-head" },
        h("h3", {}, swatch(ctx, app), " ", t.title || title(ctx, app)),
        h("span", {}, growthEl(t.growth), h("span", { class: "growth-label", text: " growth" }))),
      chartBox,
      dataTable(`Sessions starting the ${t.title || title(ctx, app)} ${w.per}`, [{ label: w.unit === "week" ? "Week from" : "Day" }, { label: "Sessions", numeric: true }, { label: "±", numeric: true }],
        t.series.map((n, i) => [fmtUnixDay(d.windows[i], true), ...numCells(n)]))));
    pending.push(() => chartBox.append(lineChart(t.series, d.windows, { label: `Sessions that started the ${t.title || title(ctx, app)} ${w.per}, with noise band`, fmtX, width: widthOf(chartBox, 340) })));
  }
  for (const draw of pending) draw();
  const countries = d.countries.slice(0, 6);
  const boxes = countries.map((c) => [c, h("div", { class: "chart-box" })]);
  fill(
    body("trend-countries"),
    countries.length
      ? h("div", { class: "grid three" }, boxes.map(([c, box]) =>
          h("div", { class: "trend-country", "data-country": c.country },
            h("div", { class: "bar-group-head" }, h("h4", { text: countryName(c.country) }), growthEl(c.growth)),
            box)))
      : h("p", { class: "panel-note", text: "No country has a published series in this range." }),
    h("p", { class: "panel-note", text: "Growth compares the sum of the second half of the range with the first half; green means it grew by more than its noise." }),
  );
  for (const [c, box] of boxes) {
    box.append(lineChart(c.series, d.windows, { label: `Sessions from ${countryName(c.country)} ${w.per}`, fmtX, width: widthOf(box, 340), className: "country-line" }));
  }
}
