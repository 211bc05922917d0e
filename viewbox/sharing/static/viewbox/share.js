// The copy button next to a new share link. Without the clipboard API the
// link is selected, so that the person can copy it themselves.
(function () {
  "use strict";
  var button = document.getElementById("copy-link");
  var field = document.getElementById("share-url");
  var status = document.getElementById("copy-status");
  if (!button || !field || !status) {
    return;
  }
  button.hidden = false;

  function selectLink() {
    field.focus();
    field.select();
  }

  button.addEventListener("click", function () {
    if (!navigator.clipboard || !window.isSecureContext) {
      selectLink();
      status.textContent = button.dataset.failed;
      return;
    }
    navigator.clipboard.writeText(field.value).then(
      function () {
        status.textContent = button.dataset.copied;
      },
      function () {
        selectLink();
        status.textContent = button.dataset.failed;
      }
    );
  });
  field.addEventListener("focus", selectLink);
})();
