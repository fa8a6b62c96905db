// Tiny DOM helpers. Everything is built with createElement (never innerHTML), so
// text from the API is always text, and no inline style attribute is ever written
// (the Content-Security-Policy forbids them): sizes go through CSS custom
// properties set with the CSSOM (`el.style.setProperty`), which CSP allows.

const SVG_NS = "http://www.w3.org/2000/svg";

function apply(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = String(value);
    else if (key === "vars") for (const [k, v] of Object.entries(value)) el.style.setProperty(k, String(v));
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "style") throw new Error("inline styles are not allowed (CSP)");
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h("p", {class: "x"}, "text", child). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  apply(el, props);
  return append(el, children);
}

/** An SVG element. */
export function s(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  apply(el, props);
  return append(el, children);
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** Replace the children of `el`. */
export function fill(el, ...children) {
  clear(el);
  return append(el, children);
}

let uid = 0;
export function nextId(prefix = "id") {
  uid += 1;
  return `${prefix}-${uid}`;
}

/** An accessible chart: role=img with a label, a <title>, and a description. */
export function chartSvg(width, height, label, className = "chart") {
  const id = nextId("chart");
  return s(
    "svg",
    { class: className, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": `${id}-t`, preserveAspectRatio: "xMidYMid meet" },
    s("title", { id: `${id}-t`, text: label }),
  );
}

/** A collapsible data table: the text alternative of a chart. */
export function dataTable(caption, columns, rows, { open = false, summary = "Show the numbers" } = {}) {
  const table = h(
    "table",
    { class: "data" },
    h("caption", { text: caption }),
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.numeric ? "n" : null, text: c.label })))),
    h(
      "tbody",
      {},
      rows.map((row) =>
        h(
          "tr",
          {},
          row.map((cell, i) =>
            i === 0
              ? h("th", { scope: "row" }, cell)
              : h("td", { class: columns[i] && columns[i].numeric ? "n" : null }, cell),
          ),
        ),
      ),
    ),
  );
  return h("details", { class: "table-toggle", open: open || null }, h("summary", { text: summary }), h("div", { class: "table-wrap" }, table));
}
