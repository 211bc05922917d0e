// Small improvements for every page; each page works without them.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  document.addEventListener("DOMContentLoaded", function () {
    // After a failed submit, take screen reader and keyboard users straight
    // to the list of problems.
    var summary = document.querySelector(".error-summary[tabindex]");
    if (summary) {
      summary.focus();
    }
  });
})();
