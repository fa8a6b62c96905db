/* Liberation Analytics client: no cookies, no fingerprinting, sends only on
 * track(), never under GPC or Do Not Track. <script src=".../js/liberation.js"
 * data-app="my-app" data-endpoint="(default: script origin + /v1/events)">
 * Calls before load: liberation = {q: [[app, action, attributes], ...]} */
(function (w, d, n) {
  var K = "liberation_sid", lib = w.liberation || {}, q = lib.q || [], mem, ep, app, s, i;
  try {
    s = d.currentScript || d.querySelector('script[src*="liberation.js"]');
    app = s.getAttribute("data-app");
    ep = s.getAttribute("data-endpoint") ||
      s.src.replace(/^(\w+:\/\/[^\/?#]+).*$/, "$1") + "/v1/events";
  } catch (e) {}

  function off() {
    var dnt = [n.doNotTrack, w.doNotTrack, n.msDoNotTrack].join();
    return n.globalPrivacyControl === true || /\b(1|yes)\b/.test(dnt);
  }

  // Per-tab id of 16 random bytes in sessionStorage (in memory if refused).
  function sid() {
    var id, b, i;
    try { id = w.sessionStorage.getItem(K); } catch (e) {}
    if (id) return (mem = id);
    if (!mem) {
      b = (w.crypto || w.msCrypto).getRandomValues(new Uint8Array(16));
      for (mem = "s_", i = 0; i < 16; i++) mem += (b[i] + 256).toString(16).slice(1);
    }
    try { w.sessionStorage.setItem(K, mem); } catch (e) {}
    return mem;
  }

  function send(body) {
    try { if (n.sendBeacon(ep, body)) return; } catch (e) {}
    w.fetch(ep, {
      method: "POST", body: body, keepalive: true, mode: "cors",
      credentials: "omit", headers: { "Content-Type": "text/plain" }
    })["catch"](function () {});
  }

  // True if the event was handed to the browser; never throws.
  function track(a, action, attributes) {
    try {
      if (off() || !ep) return false;
      send(JSON.stringify({
        app: a || app, action: action, attributes: attributes || {},
        timestamp: new Date().toISOString(), session_id: sid()
      }));
      return true;
    } catch (e) {
      return false;
    }
  }

  lib.track = track;
  lib.trackAction = function (action, attributes) { return track(0, action, attributes); };
  lib.q = { push: function (c) { try { return track.apply(0, c); } catch (e) {} } };
  w.liberation = lib;
  for (i = 0; i < q.length; i++) lib.q.push(q[i]);
})(window, document, navigator);
