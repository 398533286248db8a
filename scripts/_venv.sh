# Sourced by scripts/serve and scripts/test: make ./.venv with vezastream installed.
# VEZASTREAM_EXTRAS picks the optional dependency groups (e.g. "s3,test").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VEZASTREAM_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "setting up $VENV (first run only; pip's own output is kept quiet)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
shopt -s nullglob
plugin_projects=("$ROOT"/plugins/*/pyproject.toml)
shopt -u nullglob
extras="${VEZASTREAM_EXTRAS:-}"
# A changed C source (vezastream/**/*.c, built at install) installs again too.
stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" "${plugin_projects[@]}" "$ROOT"/vezastream/*/*.c | sha256sum | cut -c1-16)-${extras//,/_}"
if [ ! -e "$stamp" ]; then
  echo "installing vezastream${extras:+[$extras]} and its plugins into $VENV" >&2
  "$VENV/bin/python" -m pip install -q -e "$ROOT${extras:+[$extras]}"
  for plugin in "${plugin_projects[@]}"; do
    "$VENV/bin/python" -m pip install -q -e "$(dirname "$plugin")"
  done
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
