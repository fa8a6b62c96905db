// Formatting: every number with its noise, null as "not distinguishable from noise" (never 0).

export const LOCALE = "en-US";
const integer = new Intl.NumberFormat(LOCALE, { maximumFractionDigits: 0 });
const decimals = (d) => new Intl.NumberFormat(LOCALE, { minimumFractionDigits: d, maximumFractionDigits: d });
const one = decimals(1);
const compact = new Intl.NumberFormat(LOCALE, { notation: "compact", maximumFractionDigits: 1 });

export const BELOW = "not distinguishable from noise";

export function isNum(n) {
  return n !== null && typeof n === "object" && typeof n.value === "number";
}

export function fmtInt(v) {
  return integer.format(Math.round(v));
}

export function fmtCompact(v) {
  return compact.format(v);
}

export function fmtFixed(v, digits = 1) {
  return digits === 0 ? fmtInt(v) : decimals(digits).format(v);
}

/** The noise sd, rounded to something readable (never shown as "± 0"). */
function fmtSd(sd, digits) {
  if (!Number.isFinite(sd)) return "?";
  const shown = digits === 0 ? Math.max(1, Math.round(sd)) : Math.max(10 ** -digits, sd);
  return digits === 0 ? integer.format(shown) : decimals(digits).format(shown);
}

/**
 * Parts of a number: {value, pm} strings. kind: "count" (integer), "pct" (a 0..1 ratio shown as %),
 * "pctpts" (growth, signed %), "dec" (one decimal).
 */
export function parts(n, kind = "count", digits) {
  if (!isNum(n)) return null;
  if (kind === "pct") {
    const d = digits ?? 1;
    return { value: `${fmtFixed(n.value * 100, d)}%`, pm: `± ${fmtSd(n.sd * 100, d)}` };
  }
  if (kind === "growth") {
    const d = digits ?? 0;
    const v = n.value * 100;
    const sign = v > 0 ? "+" : v < 0 ? "−" : "";
    return { value: `${sign}${fmtFixed(Math.abs(v), d)}%`, pm: `± ${fmtSd(n.sd * 100, d)}` };
  }
  if (kind === "dec") {
    const d = digits ?? 1;
    return { value: fmtFixed(n.value, d), pm: `± ${fmtSd(n.sd, d)}` };
  }
  return { value: fmtInt(n.value), pm: `± ${fmtSd(n.sd, 0)}` };
}

/** "1,234 ± 56", or "not distinguishable from noise". */
export function text(n, kind = "count", digits) {
  const p = parts(n, kind, digits);
  return p ? `${p.value} ${p.pm}` : BELOW;
}

/** A <span class="num"> with .value and .pm children, or a hatched "not distinguishable from noise" badge. */
export function numEl(n, kind = "count", { digits, unit = "" } = {}) {
  const p = parts(n, kind, digits);
  if (!p) {
    const el = document.createElement("span");
    el.className = "below";
    el.textContent = BELOW;
    el.title = "Too few to publish safely: hidden, not zero";
    return el;
  }
  const el = document.createElement("span");
  el.className = "num";
  const value = document.createElement("span");
  value.className = "value";
  value.textContent = p.value + (unit ? ` ${unit}` : "");
  const pm = document.createElement("span");
  pm.className = "pm";
  pm.textContent = p.pm;
  pm.title = "Privacy noise: one standard deviation";
  el.append(value, " ", pm);
  return el;
}

// ---- dates ------------------------------------------------------------------

const dayFmt = new Intl.DateTimeFormat(LOCALE, { day: "numeric", month: "short", timeZone: "UTC" });
const dayYearFmt = new Intl.DateTimeFormat(LOCALE, { day: "numeric", month: "short", year: "numeric", timeZone: "UTC" });
const weekdayFmt = new Intl.DateTimeFormat(LOCALE, { weekday: "short", day: "numeric", month: "short", timeZone: "UTC" });

export function parseDay(text) {
  return new Date(`${text}T00:00:00Z`);
}

export function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

export function addDays(text, days) {
  const d = parseDay(text);
  d.setUTCDate(d.getUTCDate() + days);
  return isoDay(d);
}

export function fmtDay(text, withYear = false) {
  return (withYear ? dayYearFmt : dayFmt).format(parseDay(text));
}

export function fmtUnixDay(seconds, withWeekday = false) {
  const d = new Date(seconds * 1000);
  return (withWeekday ? weekdayFmt : dayFmt).format(d);
}

export function fmtRange(from, to) {
  if (from === to) return fmtDay(from, true);
  const sameYear = from.slice(0, 4) === to.slice(0, 4);
  return `${fmtDay(from, !sameYear)} – ${fmtDay(to, true)}`;
}

// ---- names ------------------------------------------------------------------

let regionNames = null;
try {
  regionNames = new Intl.DisplayNames([LOCALE], { type: "region" });
} catch {
  regionNames = null;
}

export function countryName(code) {
  if (code === "ZZ") return "Unknown country";
  try {
    const name = regionNames && regionNames.of(code);
    return name && name !== code ? name : code;
  } catch {
    return code;
  }
}

/** "runway_months" -> "Runway months"; "session-shape" -> "Session shape". */
export function humanize(name) {
  const t = String(name).replace(/[_-]+/g, " ").trim();
  return t.charAt(0).toUpperCase() + t.slice(1);
}

/** The words of a catalog's window: `window` is "day" or "week" (a view's or the catalog's `window`). */
export function windowWords(window) {
  return window === "week"
    ? { unit: "week", adjective: "weekly", per: "per week", title: "Weeks" }
    : { unit: "day", adjective: "daily", per: "per day", title: "Days" };
}

export function plural(n, one, many) {
  return `${fmtInt(n)} ${n === 1 ? one : many || `${one}s`}`;
}
