#!/usr/bin/env bash
# Set up (virtual environment + dependencies, first run only) and start the web UI on http://localhost:7860.
# Any flags are passed to app.py: ./webui.sh --api --listen --gradio-auth me:secret ...
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
if [ ! -f .venv/.requirements-installed ] || [ requirements.txt -nt .venv/.requirements-installed ]; then
  python -m pip install --upgrade pip
  python -m pip install -r requirements.txt
  touch .venv/.requirements-installed
fi
exec python app.py "$@"
