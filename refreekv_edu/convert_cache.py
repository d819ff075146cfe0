"""The conversion cache shared by the torch and MLX loaders: folders written once, checked by a manifest.

Converting a GGUF (dequantizing its tensors, rebuilding its tokenizer from the metadata) is slow, so the backends
save the result once under ``<cache_dir()>/converted/<gguf stem>-<sha256[:16]>/<backend folder>/`` and read it
afterwards. This module holds the framework-free mechanics (standard library only); each backend decides what
goes into a folder (``save_pretrained``, ``mx.save_safetensors``...) and how to read it back.

- A folder is written under a temporary name (``.tmp-<pid>-...`` next to it) and renamed into place when
  complete (:func:`write_cached`, :func:`publish`), so an interrupted conversion never leaves a half folder;
  temporaries of killed processes are removed by the next conversion (:func:`remove_stale_temporaries`).
- The last file written is a manifest (:data:`MANIFEST`) listing every other file and its size; a folder whose
  manifest does not match (an interrupted copy, a deleted file) is incomplete (:func:`cache_is_complete`) and
  rebuilt (:func:`usable`).
- The key is the GGUF's sha256 (:func:`gguf_sha256`), so new contents at the same path get a new folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from refreekv_edu.models import ARTIFACTS, cache_dir, sha256_of

#: Bump when the layout of a converted-model folder changes (old folders are then simply not found).
CACHE_FORMAT = 1
#: Revision of the torch loader's tokenizer normalisation (``gguf_tokenizer``); part of the folder name
#: (``torch-v1-tok2-...``), so a folder converted before it (a transformers 5.0-5.2 tokenizer that adds a BOS and
#: calls ``<|im_start|>`` the EOS) is rebuilt.
TOKENIZER_REVISION = 2
#: Start of the torch loader's folder names: ``torch-v1-tok2-transformers5.25-float32`` for instance.
TORCH_FOLDER_PREFIX = f"torch-v{CACHE_FORMAT}-tok{TOKENIZER_REVISION}-"
#: The file written last into a converted-model folder: its key and the size of every other file.
MANIFEST = "refreekv-cache.json"
#: Prefix of the temporary folders a conversion writes into: ``.tmp-<pid>-<random>``.
TMP_PREFIX = ".tmp-"

_sha_memo: dict[tuple[str, int, int], str] = {}


def gguf_sha256(gguf: str | Path, name_or_path: str | Path | None = None) -> str:
    """The sha256 of a GGUF file, as 64 hex digits.

    When ``name_or_path`` is a bundled artifact name (``"smollm2-135m"``), its published sha256 (``fetch_model``
    checked the file against it). Otherwise the file is hashed (~0.3 s per 100 MB) and the result remembered for
    the process while the file's size and mtime stay the same.
    """
    if name_or_path is not None and str(name_or_path) in ARTIFACTS:
        return ARTIFACTS[str(name_or_path)].file_sha256
    path = Path(gguf)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_memo:
        _sha_memo[key] = sha256_of(path)
    return _sha_memo[key]


def major_minor(version: str) -> str:
    """``"4.57.1"`` -> ``"4.57"``: the part of a library version that names a cache folder."""
    return ".".join(version.split(".")[:2])


def converted_root(gguf: str | Path, sha256: str) -> Path:
    """``<cache_dir()>/converted/<gguf stem>-<sha256[:16]>``: the folders converted from one GGUF file
    (``$REFREEKV_CACHE`` moves the root, see :func:`refreekv_edu.models.cache_dir`)."""
    return cache_dir() / "converted" / f"{Path(gguf).stem}-{sha256[:16]}"


def say(message: str) -> None:
    """Print ``refreekv: <message>`` on stderr (progress and cache notes, never on stdout)."""
    print(f"refreekv: {message}", file=sys.stderr, flush=True)


def cache_is_complete(folder: Path) -> bool:
    """True when ``folder`` holds its manifest and every file listed there, at the recorded size."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        return bool(files) and all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def write_manifest(folder: Path, info: dict[str, Any]) -> None:
    """Write ``folder``'s manifest: ``info`` (the cache key) plus ``"files"``, the size of every other file."""
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({**info, "files": files}, indent=1))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(parent: Path) -> None:
    """Remove the ``.tmp-<pid>-*`` folders in ``parent`` left by conversions that were killed (their process is
    gone); those of live processes are left alone."""
    if not parent.is_dir():
        return
    for tmp in parent.glob(TMP_PREFIX + "*"):
        pid = tmp.name[len(TMP_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, final: Path) -> None:
    """Rename a finished temporary folder to ``final``; if another process finished first, keep theirs (a complete
    folder) or replace it (an incomplete one)."""
    try:
        os.replace(tmp, final)  # atomic on one filesystem; fails if final is a non-empty directory
    except OSError:
        if not cache_is_complete(final):
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def usable(folder: Path) -> bool:
    """Whether ``folder`` is a complete cached conversion; an incomplete one is removed (and so rebuilt)."""
    if cache_is_complete(folder):
        return True
    if folder.exists():
        say(f"the cached conversion at {folder} is incomplete; rebuilding it")
        shutil.rmtree(folder, ignore_errors=True)
    return False


def discard(folder: Path, err: BaseException, what: str = "conversion") -> None:
    """Say that the cached ``what`` at ``folder`` failed to load (``err``) and remove it, so it is rebuilt: its
    files were damaged inside (same sizes, so the manifest did not notice)."""
    say(f"could not load the cached {what} at {folder} ({type(err).__name__}: {err}); rebuilding it")
    shutil.rmtree(folder, ignore_errors=True)


def write_cached(
    folder: Path,
    write: Callable[[Path], Any],
    info: dict[str, Any],
    fallback: str = "continuing without it",
) -> bool:
    """Fill ``folder`` atomically: run ``write(tmp_folder)``, add the manifest (``info`` plus the file sizes) and
    rename the temporary folder into place (:func:`publish`).

    Returns False when the cache cannot be written (read-only, a file in the way...), after saying
    ``cannot write the conversion cache (<error>); <fallback>``. An interrupted write (Ctrl-C included) removes
    its temporary folder; errors other than ``OSError`` are raised again.
    """
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=folder.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as the GGUF next to it
    except OSError as err:
        say(f"cannot write the conversion cache ({err}); {fallback}")
        return False
    try:
        write(tmp)
        write_manifest(tmp, info)
        publish(tmp, folder)
    except BaseException as err:  # KeyboardInterrupt included: never leave a half-written folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(err, OSError):
            raise
        say(f"cannot write the conversion cache ({err}); {fallback}")
        return False
    return True
