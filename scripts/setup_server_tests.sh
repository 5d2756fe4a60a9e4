#!/usr/bin/env bash
# Creates models/.venv-server with the official `openai` client and pytest, for the server's
# Python conformance tests (crates/gorae-server/tests/python). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=models/.venv-server
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "openai==3.51.0" "pytest==9.2.0"
