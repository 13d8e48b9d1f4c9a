#!/usr/bin/env bash
# medanon quick start: needs only Python 3.11+ and the package registry.
#   bash quickstart.sh demo   build a messy sample archive and de-identify it (embedded Prefect, local disk)
#   bash quickstart.sh test   run the test suite
#   bash quickstart.sh install   only create .venv and install medanon
set -euo pipefail
cd "$(dirname "$0")"
PY=""
for cand in python3.11 python3.12 python3.13 python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    PY="$cand"; break
  fi
done
[ -n "$PY" ] || { echo "quickstart: Python 3.11 or newer is required" >&2; exit 2; }
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.medanon-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "quickstart: installing medanon and its dependencies into .venv (first run only)..." >&2
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e ".[test]"; } \
      >.venv/install.log 2>&1; then
    cat .venv/install.log >&2
    echo "quickstart: installation failed (log above, also in .venv/install.log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
export PREFECT_SERVER_ANALYTICS_ENABLED=false
case "${1:-demo}" in
  install) exit 0 ;;
  demo) shift || true; exec .venv/bin/medanon demo "$@" ;;
  test) shift || true; exec .venv/bin/python -m pytest -q "$@" ;;
  *) echo "usage: bash quickstart.sh demo|test" >&2; exit 2 ;;
esac
