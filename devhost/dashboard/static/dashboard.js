// Keeps the regions marked data-poll current: each is re-fetched (the same page with
// fragment=1, rendered and escaped by the server) and replaced. No other script runs here.
(function () {
  "use strict";
  var live = document.getElementById("live");
  function poll(region) {
    var every = parseInt(region.getAttribute("data-every"), 10) || 2000;
    function tick() {
      if (document.hidden) { setTimeout(tick, every); return; }
      fetch(region.getAttribute("data-poll"), { credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.text();
        })
        .then(function (html) {
          // Keep open <details> open across refreshes.
          var open = {};
          region.querySelectorAll("details[open]").forEach(function (d, i) { open[i] = true; });
          region.innerHTML = html;
          region.querySelectorAll("details").forEach(function (d, i) { if (open[i]) { d.open = true; } });
          if (live) { live.className = "live"; live.textContent = "live"; }
        })
        .catch(function () {
          if (live) { live.className = "live stale"; live.textContent = "not updating"; }
        })
        .finally(function () { setTimeout(tick, every); });
    }
    setTimeout(tick, every);
  }
  document.querySelectorAll("[data-poll]").forEach(poll);
})();
