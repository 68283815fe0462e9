# Sourced by the test set-up helpers: install a Debian package for the tests when we may (root,
# apt-get present); tries the package index as it is, then refreshed. Never fails the caller.
apt_install_for_tests() {
  local pkg="$1" why="$2"
  [ "${GATEWAY_TEST_NO_APT:-}" = 1 ] && return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 0
  echo "==> installing $pkg (Debian package) for $why" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >/dev/null 2>&1; } \
    || true
}

# Says, before anything is installed, which Debian packages the tests would install and how not to.
announce_apt_for_tests() {
  [ "$#" -gt 0 ] || return 0
  if [ "${GATEWAY_TEST_NO_APT:-}" = 1 ]; then
    echo "==> not installing $* (GATEWAY_TEST_NO_APT=1): the tests that need them are skipped" >&2
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> scripts/test installs these Debian packages with apt-get (as root): $*" >&2
    echo "    (to skip: GATEWAY_TEST_NO_APT=1 scripts/test; the tests that need them are then skipped)" >&2
  else
    echo "==> missing $* (installed only as root with apt-get): the tests that need them are skipped" >&2
  fi
}
