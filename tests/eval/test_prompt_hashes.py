"""Every generated eval prompt is the same text on every Python version and import order (issue 20).

The hashes below were computed once; this test recomputes them. It needs only the core (numpy and the standard
library), so CI runs it in the main venv and again under a second Python (``.ci/run``, step "prompts on a second
Python"). A failure means the prompts changed: every number on the results page would change with them, so
either undo the change or regenerate the results and update these hashes in the same commit.

Two counters: the pure-Python word counter every test can use, and the bundled model's tokenizer, the one the
results page's prompts are built with. The tokenizer is checked twice: loaded by ``load_model`` (needs transformers,
torch and the bundled GGUF) and as the ``tokenizer.json`` that load saved into the conversion cache, read with the
``tokenizers`` library alone, so a second Python without torch checks the token counts too (CI's second venv).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from pathlib import Path

import pytest

from refreekv_edu.eval import tasks

#: Every task and length the results page uses, 20 samples each, seed 0, the default filler.
GROUPS = [(task, length) for task in ("passkey", "multi_needle", "continuation", "repeat") for length in (512, 1024)] + [
    ("short", 0),
    ("reading", 0),
]
SAMPLES = 20

#: sha256 (first 16 hex digits) of each group's prompts and references, built with the word counter.
PINNED_WORDS = {
    "passkey@512": "08cf016f08d881cd",
    "passkey@1024": "a377dc7120f9c296",
    "multi_needle@512": "bb78613b473de672",
    "multi_needle@1024": "e539740a3d49d02f",
    "continuation@512": "fbeabbc6da02e6aa",
    "continuation@1024": "d8db60c8dff5c86e",
    "repeat@512": "5faf6685cf6109ad",
    "repeat@1024": "38df69e29b46a5f0",
    "short@0": "e2d378baaf323e7c",
    "reading@0": "3a762e1b05fbad36",
}

#: The same, built with the bundled model's tokenizer (the results page's prompts).
PINNED_TOKENIZER = {
    "passkey@512": "109e540c6b98206f",
    "passkey@1024": "9cfd4b6cfd5aa472",
    "multi_needle@512": "b9cbde106c1efcfa",
    "multi_needle@1024": "b3606e30e48fb195",
    "continuation@512": "a4a974bda062e624",
    "continuation@1024": "1eb3d0b60a2c2e8d",
    "repeat@512": "2600cd58d20bbbd5",
    "repeat@1024": "9a9589f5b66552c2",
    "short@0": "e2d378baaf323e7c",
    "reading@0": "3a762e1b05fbad36",
}


def group_digest(task: str, length: int, count=None) -> str:
    samples = tasks.make_samples(task, length, SAMPLES, seed=0, count_tokens=count)
    blob = json.dumps([[s.id, s.prompt, s.references] for s in samples], ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def digests(count=None) -> dict[str, str]:
    return {f"{task}@{length}": group_digest(task, length, count) for task, length in GROUPS}


def test_prompts_pinned_word_counter():
    assert digests() == PINNED_WORDS, f"Python {sys.version.split()[0]}: the eval prompts changed"


def test_prompts_do_not_depend_on_import_order():
    before = digests()
    for name in ("argparse", "typing", "dataclasses", "inspect", "email.message", "http.client"):
        importlib.import_module(name)  # modules the old docstring filler read: importing them changed its text
    assert digests() == before


def test_prompts_pinned_bundled_tokenizer():
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from refreekv_edu import models
    from refreekv_edu.eval.config import token_counter

    art = models.ARTIFACTS["smollm2-135m"]
    if not (models.cache_dir() / "smollm2-135m" / art.member.split("/")[-1]).is_file():
        pytest.skip("the bundled model is not fetched; run `refreekv-edu fetch-model` (tests never download)")
    _, tok = models.load_model("smollm2-135m", backend="torch")
    assert digests(token_counter(tok)) == PINNED_TOKENIZER


def _converted_tokenizer_files() -> list[Path]:
    """The bundled model's tokenizers that the torch loader converted at the current tokenizer revision."""
    from refreekv_edu import convert_cache, models

    art = models.ARTIFACTS["smollm2-135m"]
    pattern = f"*/{convert_cache.TORCH_FOLDER_PREFIX}*/tokenizer.json"
    found = []
    for path in sorted((models.cache_dir() / "converted").glob(pattern)):
        try:
            manifest = json.loads((path.parent / convert_cache.MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # an unfinished conversion: the loader rebuilds it
        if manifest.get("gguf_sha256") == art.file_sha256:
            found.append(path)
    return found


def test_prompts_pinned_converted_tokenizer_json():
    tokenizers = pytest.importorskip("tokenizers")
    from refreekv_edu.eval.config import token_counter

    files = _converted_tokenizer_files()
    if not files:
        pytest.skip("no converted tokenizer in the cache; load the bundled model once (`refreekv-edu demo`)")
    for path in files:  # one per transformers version that converted the GGUF: all must count alike
        tok = tokenizers.Tokenizer.from_file(str(path))
        assert digests(token_counter(tok)) == PINNED_TOKENIZER, f"{path} on Python {sys.version.split()[0]}"
