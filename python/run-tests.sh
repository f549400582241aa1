#!/usr/bin/env bash
# The Python SDK's tests: a virtualenv of its own (python/.venv, ignored by python/.gitignore),
# the package installed editable with its test extras (pinned in pyproject.toml, from PyPI), then
# pytest against a real `opentab dev` (target/debug/opentab, or $OPENTAB_BIN: build it first with
# `cargo build -p opentab`). Arguments go to pytest: `python/run-tests.sh -k corpus -x`.
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
  echo "the Python SDK needs Python 3.10 or newer (set PYTHON=…)" >&2
  exit 1
fi
# Debian's python3 lacks ensurepip (and so venv) without python3-venv.
if ! "$python" -c 'import ensurepip' 2>/dev/null && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then as_root=(); else as_root=(sudo); fi
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi

binary=${OPENTAB_BIN:-../target/debug/opentab}
if [ ! -x "$binary" ]; then
  echo "$binary is missing: build it with \`cargo build -p opentab\` (or set OPENTAB_BIN)" >&2
  exit 1
fi

venv=${OPENTAB_PY_VENV:-$PWD/.venv}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# Reinstall only when the package's metadata changed (editable: sources are read in place).
if [ ! -f "$venv/.opentab-installed" ] || [ pyproject.toml -nt "$venv/.opentab-installed" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -e '.[test]'
  touch "$venv/.opentab-installed"
fi
exec "$venv/bin/python" -m pytest "$@"
