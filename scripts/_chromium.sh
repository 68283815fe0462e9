# Sourced by scripts/test: a real Chromium for the dashboard tests (driven over the DevTools
# protocol, tests/cdp.py). Installs Debian's `chromium` when missing (root only); where that is
# impossible, exports GATEWAY_TEST_CHROMIUM_SKIP with the reason and those tests are skipped.
ensure_test_chromium() {
  local exe
  exe="$(command -v chromium || command -v chromium-browser || true)"
  if [ -z "$exe" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing Chromium (Debian package) for the dashboard tests" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } \
      || true
    exe="$(command -v chromium || true)"
  fi
  if [ -n "$exe" ]; then
    export GATEWAY_TEST_CHROMIUM="$exe"
  else
    export GATEWAY_TEST_CHROMIUM_SKIP="no chromium, and it could not be installed"
    echo "warning: $GATEWAY_TEST_CHROMIUM_SKIP" >&2
  fi
}
