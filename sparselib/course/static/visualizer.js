/* The sparsity visualizer's behaviour in the page. Every view (keep-mask, row errors, summary) is
   computed in Python and embedded in the widget as JSON (script.sv-data); this script only switches
   between them, so the widget works in a static HTML book. sparselib/course/viz.py inlines this file
   into each widget and calls sparsityVisualizer(root) on the widget's root element.

   DOM hooks (shared with viz.py and the browser test): the root .sv-root carries data-mode,
   data-step and data-sparsity; button.sv-mode[data-mode] picks a rule; input.sv-slider picks a step;
   td.sv-cell[data-row][data-col][data-kept] is one weight; td.sv-err[data-row] holds a row's
   .sv-bar and .sv-err-text; .sv-summary and .sv-sparsity-value are text. */
function sparsityVisualizer(root) {
  if (!root || root.dataset.ready) return;
  root.dataset.ready = "1";
  var data = JSON.parse(root.querySelector("script.sv-data").textContent);
  var buttons = root.querySelectorAll("button.sv-mode");
  var slider = root.querySelector("input.sv-slider");
  var label = root.querySelector(".sv-sparsity-value");

  /* Draw the view of the current mode (root's data-mode) at the slider's step. */
  function show() {
    var mode = root.getAttribute("data-mode"), step = +slider.value;
    var info = data.modes.filter(function (m) { return m.key === mode; })[0];
    var states = data.states[mode], st = states[Math.min(step, states.length - 1)];
    root.querySelectorAll("td.sv-cell").forEach(function (c) {
      c.setAttribute("data-kept", st.keep[+c.getAttribute("data-row")][+c.getAttribute("data-col")]);
    });
    root.querySelectorAll("td.sv-err").forEach(function (c) {
      var rel = st.row_error_rel[+c.getAttribute("data-row")];
      c.querySelector(".sv-bar").style.width = (100 * rel).toFixed(1) + "%";
      c.querySelector(".sv-err-text").textContent = (100 * rel).toFixed(1) + "%";
    });
    root.querySelector(".sv-summary").textContent = st.summary;
    buttons.forEach(function (b) {
      b.setAttribute("aria-pressed", b.getAttribute("data-mode") === mode ? "true" : "false");
    });
    slider.disabled = !info.uses_sparsity;
    label.textContent = info.uses_sparsity ? st.sparsity_label
                                           : st.sparsity_label + " (fixed by this mode)";
    root.setAttribute("data-sparsity", String(st.sparsity));
  }

  buttons.forEach(function (b) {
    b.addEventListener("click", function () {
      root.setAttribute("data-mode", b.getAttribute("data-mode"));
      show();
    });
  });
  slider.addEventListener("input", function () { root.setAttribute("data-step", slider.value); show(); });
  show();
}
