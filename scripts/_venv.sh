# Sourced by scripts/serve and scripts/test: makes (or reuses) a venv under .venv/ for $PYTHON
# (default python3) and installs the project into it, with the pinned versions of constraints.txt
# (scripts/lock makes it). A stamp of pyproject.toml's and constraints.txt's hash per extras set
# (.installed-base, .installed-test) skips the pip step when nothing changed, so the second run
# starts in about a second; any extras install also covers the plain one (serve after test).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || { echo "error: $PYTHON not found (set PYTHON=/path/to/python3.11+)" >&2; exit 2; }
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "error: Python 3.11+ required, $PYTHON is $PYVER" >&2; exit 2; }
VENV="$ROOT/.venv/py$PYVER"
EXTRAS="${VENV_EXTRAS:-}"
NAME="$(echo "${EXTRAS:-base}" | tr -dc 'A-Za-z0-9,_-')"
STAMP="$VENV/.installed-$NAME"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating venv $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
INSTALLED=no
for have in "$STAMP" $([ -z "$EXTRAS" ] && echo "$VENV"/.installed-*); do
  if [ "$(cat "$have" 2>/dev/null)" = "$WANT" ]; then INSTALLED=yes; fi
done
if [ "$INSTALLED" = no ]; then
  echo "==> installing dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$ROOT/constraints.txt" -e "$ROOT$EXTRAS" >&2
  echo "$WANT" > "$STAMP"
fi
VPY="$VENV/bin/python"
