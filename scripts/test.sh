#!/usr/bin/env bash
# The project's test command (what CI runs): every test except those needing a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -m "not gpu and not slow" -q "$@"
