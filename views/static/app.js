// Liberation Analytics dashboard: boot, date range, theme, and the views.
// Reads only the views API of its own origin (see api.js); stores nothing
// (no cookies, no localStorage): the theme toggle lasts one page view.

import { getJson, optional, view } from "./api.js";
import { h } from "./dom.js";
import { addDays, fmtRange, plural, windowWords } from "./fmt.js";
import {
  renderBreakdown, renderCombinations, renderCompletion, renderFinancial, renderGeography, renderHeadline,
  renderPeaks, renderShape, renderTrends, renderUsage,
} from "./panels.js";
import { renderLog, renderTransparency } from "./transparency.js";
import { initTypical, setFinancial } from "./typical.js";

const state = {
  range: { from: "", to: "" },
  first: "",
  last: "",
  offered: null, // Set of view names, or null when the server has no index
  ctx: { titles: {}, order: [] },
  envs: {},
  world: null,
  measure: "sessions",
  peaksTool: "",
  geoTool: "",
  loadSeq: 0,
};

const $ = (id) => document.getElementById(id);

function setStatus(message, error = false) {
  const el = $("status");
  el.textContent = message;
  el.classList.toggle("error", error);
}

// ---- theme --------------------------------------------------------------------------

function initTheme() {
  const root = document.documentElement;
  const button = $("theme-toggle");
  const media = window.matchMedia("(prefers-color-scheme: dark)");
  const current = () => root.dataset.theme || (media.matches ? "dark" : "light");
  const sync = () => {
    const dark = current() === "dark";
    button.setAttribute("aria-pressed", String(dark));
    button.querySelector(".theme-label").textContent = "Dark theme";
    button.setAttribute("aria-label", dark ? "Dark theme is on; switch to light" : "Dark theme is off; switch to dark");
  };
  button.addEventListener("click", () => {
    root.dataset.theme = current() === "dark" ? "light" : "dark";
    sync();
  });
  media.addEventListener("change", sync);
  sync();
}

// ---- panels ---------------------------------------------------------------------------

const VIEWS = {
  headline: (env) => renderHeadline(env, state.ctx),
  usage: (env) => renderUsage(env, state.ctx, state.measure),
  completion: (env) => renderCompletion(env, state.ctx),
  "tool-combinations": (env) => renderCombinations(env, state.ctx),
  "session-shape": (env) => renderShape(env, state.ctx),
  "peak-times": (env) => renderPeaks(env, state.ctx, state.peaksTool),
  geography: (env) => renderGeography(env, state.ctx, state.world, state.geoTool),
  financial: (env) => {
    renderFinancial(env, state.ctx);
    setFinancial(env);
  },
  breakdown: (env) => renderBreakdown(env, state.ctx),
  trends: (env) => renderTrends(env, state.ctx),
};

function setOffered(name, offered) {
  for (const el of document.querySelectorAll(`[data-view="${name}"]`)) el.hidden = !offered;
}

/** Hide sections (and their nav links) whose every view is missing. */
function tidySections() {
  for (const section of document.querySelectorAll("main > section")) {
    const views = [...section.querySelectorAll("[data-view]")];
    if (section.dataset.view) views.push(section);
    const hidden = views.length > 0 && views.every((el) => el.hidden || el.closest("[hidden]"));
    section.hidden = hidden;
    const link = document.querySelector(`.section-nav a[href="#${section.id}"]`);
    if (link) link.parentElement.hidden = hidden;
  }
}

function panelError(name, error) {
  for (const el of document.querySelectorAll(`[data-view="${name}"]`)) {
    const target = el.querySelector(".panel-body") || el;
    target.replaceChildren(h("p", { class: "error", role: "alert", text: `This panel could not load: ${error.message}` }));
  }
}

function learnTools(env) {
  const apps = env.view === "usage" ? env.data.apps : env.view === "completion" ? env.data : env.view === "trends" ? env.data.tools : null;
  if (!apps) return;
  for (const [app, a] of Object.entries(apps)) {
    if (a && a.title) state.ctx.titles[app] = a.title;
    if (!state.ctx.order.includes(app)) state.ctx.order.push(app);
  }
}

function fillToolSelect(select, current) {
  if (select.options.length > 1) return;
  select.replaceChildren(h("option", { value: "", text: "All tools" }), ...state.ctx.order.map((app) => h("option", { value: app, text: state.ctx.titles[app] || app })));
  select.value = current;
}

async function loadViews() {
  const seq = ++state.loadSeq;
  const names = Object.keys(VIEWS).filter((n) => !state.offered || state.offered.has(n));
  for (const n of Object.keys(VIEWS)) if (!names.includes(n)) setOffered(n, false);
  tidySections();
  document.querySelector("main").setAttribute("aria-busy", "true");
  // No range yet on a server with no published window: the views pick their default.
  setStatus(state.range.from ? `Loading ${fmtRange(state.range.from, state.range.to)}…` : "Loading…");
  const results = await Promise.allSettled(names.map((n) => view(n, state.range)));
  if (seq !== state.loadSeq) return; // a newer range superseded this one
  const envs = {};
  results.forEach((r, i) => { if (r.status === "fulfilled" && r.value) { envs[names[i]] = r.value; learnTools(r.value); } });
  let failures = 0;
  results.forEach((r, i) => {
    const name = names[i];
    if (r.status === "rejected") {
      failures += 1;
      setOffered(name, true);
      panelError(name, r.reason);
      return;
    }
    setOffered(name, r.value !== null);
    if (r.value === null) return;
    try {
      VIEWS[name](r.value);
    } catch (error) {
      failures += 1;
      console.warn(`rendering ${name} failed`, error); // eslint-disable-line no-console
      panelError(name, error);
    }
  });
  state.envs = envs;
  fillToolSelect($("peaks-tool"), state.peaksTool);
  fillToolSelect($("geo-tool"), state.geoTool);
  // One country per session: no per-tool split to choose from.
  const geo = envs.geography && envs.geography.data;
  $("geo-tool").closest("label").hidden = Boolean(geo && !Object.keys(geo.by_app).length);
  tidySections();
  document.querySelector("main").removeAttribute("aria-busy");
  const any = Object.values(envs)[0];
  if (any) {
    if (!state.range.from) {
      state.range = { from: any.from, to: any.to };
      $("range-from").value = any.from;
      $("range-to").value = any.to;
    }
    const w = windowWords(any.window);
    setStatus(`Showing ${fmtRange(any.from, any.to)} · ${plural(any.windows, `${w.adjective} window`)} with data · up to ${plural(any.nodes, "community node")} ${w.per}${failures ? ` · ${failures} panel(s) failed to load` : ""}`, failures > 0);
  } else {
    setStatus(failures ? "The numbers could not be loaded. Please try again later." : "No published data yet.", failures > 0);
  }
  document.body.dataset.ready = String(seq);
}

// ---- range --------------------------------------------------------------------------------

function markPreset() {
  const { from, to } = state.range;
  for (const chip of document.querySelectorAll(".presets .chip")) {
    const days = chip.dataset.days;
    const match = to === state.last && (days === "all" ? from === state.first : from === maxDay(state.first, addDays(to, 1 - Number(days))));
    chip.setAttribute("aria-pressed", String(Boolean(state.last) && match));
  }
}

const maxDay = (a, b) => (!a ? b : !b ? a : a > b ? a : b);

function setRange(from, to, reload = true) {
  state.range = { from, to };
  $("range-from").value = from;
  $("range-to").value = to;
  markPreset();
  if (reload) loadViews();
}

function initRange() {
  const fromEl = $("range-from");
  const toEl = $("range-to");
  let timer = 0;
  const changed = () => {
    window.clearTimeout(timer);
    timer = window.setTimeout(() => {
      const from = fromEl.value;
      const to = toEl.value;
      if (!from || !to) return;
      if (from > to) {
        setStatus("“From” must be on or before “To”.", true);
        return;
      }
      if (from === state.range.from && to === state.range.to) return;
      setRange(from, to);
    }, 250);
  };
  fromEl.addEventListener("change", changed);
  toEl.addEventListener("change", changed);
  $("range").addEventListener("submit", (event) => event.preventDefault());
  for (const chip of document.querySelectorAll(".presets .chip")) {
    chip.setAttribute("aria-pressed", "false");
    chip.addEventListener("click", () => {
      const to = state.last || state.range.to;
      if (!to) return;
      const days = chip.dataset.days;
      const from = days === "all" ? state.first || state.range.from : maxDay(state.first, addDays(to, 1 - Number(days)));
      setRange(from, to);
    });
  }
}

// ---- controls inside panels -------------------------------------------------------------------

function initPanelControls() {
  for (const button of document.querySelectorAll("#usage .seg")) {
    button.addEventListener("click", () => {
      state.measure = button.dataset.measure;
      for (const b of document.querySelectorAll("#usage .seg")) b.setAttribute("aria-pressed", String(b === button));
      if (state.envs.usage) VIEWS.usage(state.envs.usage);
    });
  }
  $("peaks-tool").addEventListener("change", (event) => {
    state.peaksTool = event.target.value;
    if (state.envs["peak-times"]) VIEWS["peak-times"](state.envs["peak-times"]);
  });
  $("geo-tool").addEventListener("change", (event) => {
    state.geoTool = event.target.value;
    if (state.envs.geography) VIEWS.geography(state.envs.geography);
  });
}

// ---- whose page --------------------------------------------------------------------------------

/** On a community node the page shows that one community's own published numbers: say so, and whose. */
function showNode(about) {
  const who = about.name || `community node ${about.key_id}`;
  document.body.dataset.kind = "node";
  document.title = `${who} — Liberation Analytics`;
  $("overview-title").textContent = "This community at a glance";
  const note = $("whose");
  note.replaceChildren(
    h("strong", { text: who }),
    ": this node's own page. It shows one community's published numbers (noised, signed snapshots), not the movement's: the federation hub merges many communities.",
  );
  note.hidden = false;
}

// ---- boot ---------------------------------------------------------------------------------------

async function boot() {
  initTheme();
  initRange();
  initPanelControls();
  initTypical();
  const world = fetch("static/world.json", { credentials: "omit" }).then((r) => (r.ok ? r.json() : null)).catch(() => null);
  const [index, windows, catalog, about] = await Promise.all([
    optional("/v1/views").catch(() => null),
    optional("/v1/windows").catch(() => null),
    optional("/v1/catalog").catch(() => null),
    optional("/v1/about").catch(() => null),
  ]);
  if (about && about.kind === "node") showNode(about);
  if (index && Array.isArray(index.views)) state.offered = new Set(index.views.map((v) => v.name));
  if (catalog) {
    for (const [name, app] of Object.entries(catalog.apps || {})) {
      state.ctx.titles[name] = app.title || name;
      state.ctx.order.push(name);
    }
    try {
      renderTransparency(catalog);
    } catch (error) {
      console.warn("rendering the catalog failed", error); // eslint-disable-line no-console
    }
  } else {
    $("privacy").querySelector("#transparency").replaceChildren(h("p", { class: "panel-note", text: "This server does not publish its catalog." }));
  }
  const days = windows && Array.isArray(windows.windows)
    ? windows.windows.map((w) => (typeof w.window_start === "string" ? w.window_start : new Date(w.start * 1000).toISOString().slice(0, 10))).sort()
    : [];
  if (days.length) {
    state.first = days[0];
    state.last = days[days.length - 1];
    for (const el of [$("range-from"), $("range-to")]) {
      el.min = state.first;
      el.max = state.last;
    }
    setRange(maxDay(state.first, addDays(state.last, -29)), state.last, false);
  }
  state.world = await world;
  await loadViews();
  // The transparency log last: it is the least urgent.
  try {
    const head = await optional("/v1/log", { limit: 1 });
    if (head) {
      const after = Math.max(0, ((head.head && head.head.seq) || 0) - 8);
      renderLog(head, await getJson("/v1/log", { after, limit: 8 }));
    } else {
      $("translog").hidden = true;
    }
  } catch (error) {
    $("translog").hidden = true;
    console.warn("the transparency log could not load", error); // eslint-disable-line no-console
  }
  document.body.dataset.loaded = "true";
}

boot().catch((error) => {
  setStatus(`The dashboard could not start: ${error.message}`, true);
});
