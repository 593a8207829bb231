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
# As in A1111: webui-user.sh (next to this script) may set COMMANDLINE_ARGS, e.g. COMMANDLINE_ARGS="--api --listen"
COMMANDLINE_ARGS=""
if [ -f webui-user.sh ]; then
  . ./webui-user.sh
fi
# shellcheck disable=SC2086 # the flags are meant to be split into words, as A1111 does
exec python app.py $COMMANDLINE_ARGS "$@"
