# Sourced by the test set-up helpers: install a Debian package for the tests when we may (root,
# apt-get present); tries the package index as it is, then refreshed. Never fails the caller.
apt_install_for_tests() {
  local pkg="$1" why="$2"
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 0
  echo "==> installing $pkg (Debian package) for $why" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >/dev/null 2>&1; } \
    || true
}
