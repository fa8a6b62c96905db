// The views API client. The base URL comes from the root element's `data-api`
// attribute (default: this origin), so a hub and a community node can serve the
// same page. A 404 means "this server does not offer that": the caller hides
// the panel. Only ever GET, only ever to that base: no visitor input is sent.

const root = document.documentElement;
export const API_BASE = (root.dataset.api || "").replace(/\/+$/, "");

export class NotOffered extends Error {}

export async function getJson(path, params) {
  const query = params ? `?${new URLSearchParams(params)}` : "";
  const response = await fetch(`${API_BASE}${path}${query}`, {
    headers: { Accept: "application/json" },
    credentials: "omit",
    referrerPolicy: "no-referrer",
    cache: "no-cache",
  });
  if (response.status === 404 || response.status === 405) throw new NotOffered(path);
  if (!response.ok) {
    let detail = `${response.status}`;
    try {
      const problem = await response.json();
      detail = problem.detail || problem.title || detail;
    } catch {
      /* not JSON */
    }
    throw new Error(`${path}: ${detail}`);
  }
  return response.json();
}

/** The JSON, or null when the server does not offer it (404). */
export async function optional(path, params) {
  try {
    return await getJson(path, params);
  } catch (error) {
    if (error instanceof NotOffered) return null;
    throw error;
  }
}

export function view(name, range) {
  const params = {};
  if (range && range.from) params.from = range.from;
  if (range && range.to) params.to = range.to;
  return optional(`/v1/views/${encodeURIComponent(name)}`, params);
}
