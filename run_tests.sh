#!/usr/bin/env bash
# Set up (virtual environment + dependencies) and run the whole test suite. Usage: ./run_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -r requirements-test.txt
# sd-prompt-reader is a desktop app; its reader module works with pillow + piexif, without its GUI dependencies.
python -m pip install -q --no-deps sd-prompt-reader==1.3.5
# k-diffusion's package imports torchvision (not available here); the tests load its sampling.py file alone.
python -m pip install -q --no-deps k-diffusion==0.1.1.post1
# The browser tests drive Debian's chromium (never `playwright install`).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "warning: could not install chromium; browser tests will be skipped"
fi
# Two pytest processes, each file's tests in one of them; conftest.py splits the torch threads between them.
exec python -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
