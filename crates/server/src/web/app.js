// secondkey web UI: the one page script, allowed by the page's CSP nonce.
// Every page works without it. It (1) shows times in the reader's local
// time (the UTC instant stays on hover) and (2) keeps a request page live:
// on each change the server announces (server-sent events), it fetches the
// page again and swaps in the parts that changed, keeping a comment being
// typed.
(function () {
  "use strict";
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d)) { return; }
      var tz = "";
      try { tz = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { tz = ""; }
      t.textContent = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) +
        " " + pad(d.getHours()) + ":" + pad(d.getMinutes()) + (tz ? " " + tz : " local");
      t.title = t.getAttribute("datetime") + " (UTC)";
    });
  }
  localTimes(document);

  var top = document.getElementById("top");
  if (!top || !window.EventSource || !window.fetch || !window.DOMParser) { return; }
  var id = top.getAttribute("data-request");
  var state = top.getAttribute("data-state");
  var reviews = top.getAttribute("data-reviews");
  var updates = 0;
  var source = new EventSource("/requests/" + encodeURIComponent(id) + "/events");
  function swap(doc, sel) {
    var now = document.querySelector(sel), next = doc.querySelector(sel);
    if (now && next) { now.replaceWith(next); }
  }
  function refresh() {
    fetch(window.location.pathname, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        [".crumbs", "#quorum", "#time-left", "#grant", "#reviews-section", "#timeline"].forEach(function (s) { swap(doc, s); });
        var form = document.getElementById("decision-form");
        if (form && !doc.getElementById("decision-form")) {
          var why = doc.getElementById("cannot");
          if (why) { form.replaceWith(why); }
        }
        var t = doc.getElementById("top");
        if (t) { top.setAttribute("data-state", t.getAttribute("data-state")); }
        updates += 1;
        document.body.setAttribute("data-live-updates", String(updates));
        var note = document.getElementById("live");
        if (note) { note.textContent = "Updated live at " + new Date().toLocaleTimeString() + "."; note.hidden = false; }
        localTimes(document);
      })
      .catch(function () { /* the next event, or a reload, tries again */ });
  }
  source.addEventListener("state", function (e) {
    var v;
    try { v = JSON.parse(e.data); } catch (err) { return; }
    var n = String((v.reviews || []).length);
    if (v.state === state && n === reviews) { return; }
    state = v.state;
    reviews = n;
    refresh();
    if (v.state !== "pending" && v.state !== "approved") { source.close(); }
  });
  document.body.setAttribute("data-live", "on");
})();
