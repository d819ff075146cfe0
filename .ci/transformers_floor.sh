#!/usr/bin/env bash
# The lowest transformers the package declares (pyproject: transformers>=5.0): the torch integration, the README
# example and the pinned prompt/token hashes on 5.0.0, next to 5.2 (the kvpress venv) and the newest (.venv).
# Triton is left out here: its kernels do not depend on transformers (their tests skip with the reason).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-tf-floor
.venv-tf-floor/bin/pip install -q -U pip
.venv-tf-floor/bin/pip install -q -e ".[torch]" "torch==2.13.0" "transformers==5.0.0" pytest hypothesis pytest-timeout
.venv-tf-floor/bin/python -c 'import transformers; print("transformers", transformers.__version__)'
.venv-tf-floor/bin/python -m pytest -q -p no:cacheprovider tests/torch tests/test_integration.py \
  tests/docs/test_readme_example.py tests/eval/test_prompt_hashes.py
