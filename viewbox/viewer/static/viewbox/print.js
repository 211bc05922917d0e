// The print view's button opens the browser's print dialog.
document.addEventListener("DOMContentLoaded", function () {
  "use strict";
  var button = document.getElementById("print-button");
  if (button) {
    button.addEventListener("click", function () { window.print(); });
  }
});
