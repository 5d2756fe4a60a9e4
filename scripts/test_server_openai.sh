#!/usr/bin/env bash
# Runs the server's conformance tests with the official `openai` Python client against a live
# `gorae serve` (SmolLM2, started and stopped by the tests on a free loopback port).
# Needs: python3 scripts/fetch_models.py smollm2 (the model) and network access to PyPI once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_server_tests.sh
# The test profile is what `cargo test`/`cargo nextest` already built, so this is usually a
# no-op; it also keeps a stale binary from being tested.
cargo build --quiet --profile test -p gorae-cli --bin gorae
export GORAE_BIN="${GORAE_BIN:-$PWD/target/debug/gorae}"
exec models/.venv-server/bin/python -m pytest -q crates/gorae-server/tests/python "$@"
