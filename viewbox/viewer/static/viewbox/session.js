// Warn a minute before the session ends for inactivity, and let the person
// keep it. When the time is up, sign out, so that a screen left open shows
// nothing to the next person.
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("sign-out-form");
    var dialog = document.getElementById("session-warning");
    if (!form || !dialog || typeof dialog.showModal !== "function") {
      return;
    }
    var idleMs = Number(form.dataset.idleSeconds) * 1000;
    var warnMs = Math.max(idleMs - 60 * 1000, 0);
    var token = form.querySelector("input[name=csrfmiddlewaretoken]").value;
    var warnTimer;
    var endTimer;

    function start() {
      clearTimeout(warnTimer);
      clearTimeout(endTimer);
      warnTimer = setTimeout(function () { dialog.showModal(); }, warnMs);
      endTimer = setTimeout(function () {
        var reason = document.createElement("input");
        reason.type = "hidden";
        reason.name = "reason";
        reason.value = "idle";
        form.appendChild(reason);
        form.submit();
      }, idleMs);
    }

    document.getElementById("stay-signed-in").addEventListener("click", function () {
      fetch(form.dataset.keepaliveUrl, {
        method: "POST",
        headers: { "X-CSRFToken": token },
        credentials: "same-origin",
        // An ended session returns a redirect, which must not be followed.
        redirect: "manual"
      }).then(function (response) {
        if (response.status === 204) {
          dialog.close();
          start();
        } else {
          window.location.assign("/");
        }
      });
    });
    start();
  });
})();
