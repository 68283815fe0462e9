# Sourced by scripts/test: a real Chromium for the dashboard tests (driven over the DevTools
# protocol, tests/cdp.py). Installs Debian's `chromium` when missing (root only); where that is
# impossible, exports GATEWAY_TEST_CHROMIUM_SKIP with the reason and those tests are skipped.
ensure_test_chromium() {
  local exe
  exe="$(command -v chromium || command -v chromium-browser || true)"
  if [ -z "$exe" ]; then
    apt_install_for_tests chromium "the dashboard tests"
    exe="$(command -v chromium || true)"
  fi
  if [ -n "$exe" ]; then
    export GATEWAY_TEST_CHROMIUM="$exe"
  else
    export GATEWAY_TEST_CHROMIUM_SKIP="no chromium, and it could not be installed"
    echo "warning: $GATEWAY_TEST_CHROMIUM_SKIP" >&2
  fi
}
