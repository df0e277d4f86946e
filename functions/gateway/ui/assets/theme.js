// Applies the theme chosen with the dashboard's toggle before the page is drawn, so a dark page
// never flashes light. Without a saved choice the page follows prefers-color-scheme.
(function () {
  try {
    var theme = window.localStorage.getItem("gpu-telemetry-theme");
    if (theme === "light" || theme === "dark") {
      document.documentElement.dataset.theme = theme;
    }
  } catch (e) {
    // Storage can be disabled; the system preference applies then.
  }
})();
