#!/usr/bin/env bash
# Set up a virtual environment in .venv from this project's own files and run the test suite.
#   scripts/test.sh              the default suite (under 10 minutes on 2 cores)
#   scripts/test.sh -m slow      the slow tests (full-size models, long fault scenarios)
# Extra arguments go to pytest. Chromium (for the report rendering test) is installed from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    echo "scripts/test.sh: installing Debian's chromium for the report rendering test" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, alone: `torch==2.13.0` by itself takes the CPU build where one lies on disk (this machine kind's
# /opt/wheels), while resolved together with the project's other dependencies pip picks PyPI's CUDA build (5 GB of
# nvidia-* wheels, 640 MB per process). The project's pin (==2.13.0) is then already satisfied.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e '.[all,test]'
if [ -z "${SKIP_LINT:-}" ]; then  # SKIP_LINT=1 scripts/test.sh ... to iterate on tests only
    .venv/bin/ruff check pipeline jobs tests scripts
    .venv/bin/mypy
    .venv/bin/lint-imports --no-cache > /dev/null || .venv/bin/lint-imports --no-cache
fi
exec .venv/bin/python -m pytest "$@"
