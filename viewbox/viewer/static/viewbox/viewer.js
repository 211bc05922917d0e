// Frame scrolling for multi-frame images without reloading the page.
// Without JavaScript the frame form submits and the page reloads instead.
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var viewer = document.querySelector(".image-viewer");
    var slider = document.getElementById("frame");
    if (!viewer || !slider) {
      return;
    }
    var image = document.getElementById("frame-image");
    var output = document.getElementById("frame-output");
    var frames = Number(viewer.dataset.frames);
    var template = viewer.dataset.urlTemplate;

    var altTemplate = image.dataset.altTemplate;

    function show(frame) {
      var url = template.replace("/999999/", "/" + frame + "/");
      image.removeAttribute("srcset");
      image.src = url;
      image.alt = altTemplate.replace("999999", frame);
      output.textContent = frame + " / " + frames;
      slider.setAttribute("aria-valuetext", frame + " / " + frames);
      // Keep the frame in the address, so that reloading stays on it.
      history.replaceState(null, "", "?frame=" + frame);
    }

    slider.addEventListener("input", function () {
      show(slider.value);
    });
    viewer.dataset.ready = "true";
  });
})();
