// Progress of a download being prepared, and the note after a download.
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    // Download stays disabled until the PHI box is ticked; the server
    // refuses a request without the tick in any case.
    document.querySelectorAll(".download-form").forEach(function (form) {
      var tick = form.querySelector("input[name=acknowledge_phi]");
      var submit = form.querySelector("button[type=submit]");
      function update() { submit.disabled = !tick.checked; }
      tick.addEventListener("change", update);
      update();
    });
    var dialog = document.getElementById("download-dialog");
    var opener = document.getElementById("open-download");
    if (dialog && opener && typeof dialog.showModal === "function") {
      opener.addEventListener("click", function (event) {
        event.preventDefault();
        dialog.showModal();
      });
      dialog.querySelectorAll("a").forEach(function (link) {
        if (link.textContent.trim() && link.getAttribute("href").indexOf("/images/") !== -1) {
          link.addEventListener("click", function (event) {
            event.preventDefault();
            dialog.close();
          });
        }
      });
    }
    var box = document.querySelector(".download-status");
    if (!box) {
      return;
    }
    // The file response sets a short-lived cookie; once it is there, the
    // browser has the file, and the confirmation shows.
    var link = document.getElementById("download-link");
    if (link) {
      link.addEventListener("click", function () {
        var wanted = "viewbox_download=" + box.dataset.package;
        var tries = 0;
        var timer = setInterval(function () {
          tries += 1;
          if (document.cookie.split("; ").indexOf(wanted) !== -1) {
            clearInterval(timer);
            document.cookie = "viewbox_download=; max-age=0; path=/; samesite=strict";
            document.getElementById("download-done").hidden = false;
          } else if (tries > 240) {
            clearInterval(timer);
          }
        }, 500);
      });
    }
    var status = box.dataset.status;
    if (status !== "queued" && status !== "preparing") {
      return;
    }
    var bar = document.getElementById("download-progress");
    function poll() {
      fetch(box.dataset.progressUrl, { credentials: "same-origin", redirect: "manual" })
        .then(function (response) {
          return response.status === 200 ? response.json() : null;
        })
        .then(function (data) {
          if (!data) {
            return;
          }
          if (data.status === "queued" || data.status === "preparing") {
            bar.value = data.progress;
            setTimeout(poll, 2000);
          } else {
            window.location.reload();
          }
        });
    }
    setTimeout(poll, 2000);
  });
})();
