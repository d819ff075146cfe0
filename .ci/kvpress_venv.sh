#!/usr/bin/env bash
# The second transformers version (issue 19): kvpress pins transformers < 5.3, so the kvpress extra gets 5.2,
# the lowest minor this package supports next to the newest one in .venv. A separate venv runs the torch
# integration tests and the kvpress tests there; the bundled model is already in the cache (.ci/run fetched it).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-kv
.venv-kv/bin/pip install -q -U pip
.venv-kv/bin/pip install -q -e ".[kvpress,triton]" "torch==2.13.0" pytest hypothesis
.venv-kv/bin/python -c 'import kvpress, transformers; print("kvpress", kvpress.__version__ if hasattr(kvpress, "__version__") else "", "transformers", transformers.__version__)'
.venv-kv/bin/python -m pytest -q -p no:cacheprovider -m "not slow" tests/torch tests/kvpress_tests
.venv-kv/bin/python -m pytest -q -p no:cacheprovider tests/docs/test_readme_example.py \
  tests/docs/test_snippets.py -k "integrations or readme"  # the README example and the kvpress section
