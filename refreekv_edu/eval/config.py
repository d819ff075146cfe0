"""What an evaluation runs (:class:`EvalConfig`, checked before any model loads) and the samples it means."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .datasets import DATASETS, load_dataset_samples
from .haystack import SOURCES
from .methods import DEFAULT_METHODS, ORACLE_TOLERANCE, parse_methods
from .tasks import TASKS, Sample, TokenCounter, make_samples


@dataclass
class EvalConfig:
    """What to evaluate.

    Attributes:
        tasks: offline task names (:data:`~refreekv_edu.eval.tasks.TASKS`) and/or dataset names
            (:data:`~refreekv_edu.eval.datasets.DATASETS`, which need ``data_dir`` or a network).
        lengths: target prompt lengths in tokens (``short`` and datasets ignore them; datasets are
            truncated in the middle to the largest length).
        methods: method names (see :mod:`refreekv_edu.eval.methods`); ``full`` is always added.
        samples: samples per task and length.
        seed: seeds the prompts (passkeys, haystack order).
        model: model name or path for :func:`refreekv_edu.load_model`.
        backend: ``"torch"``, ``"mlx"`` or ``"auto"``.
        out_dir: where ``samples.jsonl``, ``refs/`` and the report go.
        window: ``w`` of the ``h2o``/``snapkv`` fixed baselines (>= 1; the presets keep their own window).
        gqa: the GQA mode of every method (``"group"`` or ``"expand"``).
        data_dir: local dataset files (see :mod:`refreekv_edu.eval.datasets`).
        haystack: ``"prose"`` (the default, the same on every machine), ``"docs"`` (stdlib docstrings) or ``"procedural"``.
        max_new_tokens: overrides each sample's own decode length when set (an int >= 1).
        progress: tqdm bars.
        oracle_tolerance: the ``<ranking>@oracle`` binary search stops when the budget interval is this narrow
            (default :data:`~.methods.ORACLE_TOLERANCE`; ``1/32`` takes one probe fewer per sample).
        threads: ``torch.set_num_threads(threads)`` before running (``None``: leave torch's default). On a
            loaded 2-core machine 1 thread is several times faster than 2 (threads spin-waiting on each other).
        speed_length: when set (e.g. ``4096``), the speed step: a passkey prompt of about this many tokens runs
            with the full cache and the paper preset side by side (interleaved) before the evaluation, and
            ``<out>/speed.json`` gets decode tokens/s of each and their ratio (see :mod:`.speed`).
        speed_new_tokens: decode steps of the speed step (the same for both; end-of-sequence ignored).
        speed_repeats: runs of each method in the speed step (the fastest decode is kept).
        sweep_samples: run every ReFreeKV method except the paper preset itself (the ablation presets, any
            preset at another threshold: the ``sweep``) only on the first ``sweep_samples`` samples of each task
            and length (``None``: on every sample); the paper preset, the full cache and the fixed baselines
            still run on all of them.
    """

    tasks: list[str] = field(default_factory=lambda: ["passkey", "multi_needle", "short", "reading", "continuation", "repeat"])
    lengths: list[int] = field(default_factory=lambda: [1024])
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    samples: int = 2
    seed: int = 0
    model: str = "smollm2-135m"
    backend: str = "auto"
    out_dir: str = "results/eval"
    window: int = 8
    gqa: str = "group"
    data_dir: str | None = None
    haystack: str = "prose"
    max_new_tokens: int | None = None
    progress: bool = True
    oracle_tolerance: float = ORACLE_TOLERANCE
    threads: int | None = None
    speed_length: int | None = None
    speed_new_tokens: int = 32
    speed_repeats: int = 2
    sweep_samples: int | None = None

    def validate(self) -> None:
        """Check the config before any model is loaded; return nothing if it is usable.

        Raises:
            ValueError: a task that is neither an offline task nor a dataset, no lengths or a length
                below 64 tokens, ``samples < 1``, a method name :func:`~refreekv_edu.eval.methods.parse_methods`
                does not accept, ``window < 1``, an unknown ``gqa`` or haystack, or ``max_new_tokens < 1``.
        """
        from ..policies import GQA_MODES

        unknown = [t for t in self.tasks if t not in TASKS and t not in DATASETS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; offline tasks: {', '.join(TASKS)}; datasets: {', '.join(DATASETS)}")
        if not self.lengths or any(int(n) < 64 for n in self.lengths):
            raise ValueError(f"lengths must be token counts >= 64, got {self.lengths}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {self.samples!r}")
        if self.sweep_samples is not None and (
            isinstance(self.sweep_samples, bool) or not isinstance(self.sweep_samples, int) or self.sweep_samples < 1
        ):
            raise ValueError(f"sweep_samples must be an int >= 1 (or None: every sample), got {self.sweep_samples!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be an int >= 1 (the h2o/snapkv baselines score candidates by the last w "
                             f"queries; the official script uses 8), got {self.window!r}")
        if self.max_new_tokens is not None and (
            isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1
        ):
            raise ValueError(f"max_new_tokens must be an int >= 1 (or None: each task's own), got {self.max_new_tokens!r}")
        if self.gqa not in GQA_MODES:
            raise ValueError(f"gqa must be one of {', '.join(GQA_MODES)}, got {self.gqa!r}")
        if self.haystack not in SOURCES:
            raise ValueError(f"haystack must be one of {', '.join(map(repr, SOURCES))}, got {self.haystack!r}")
        if not 0.0 < float(self.oracle_tolerance) < 0.5:
            raise ValueError(f"oracle_tolerance must lie in (0, 0.5), e.g. 1/64, got {self.oracle_tolerance!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be an int >= 1 (or None: the backend's default), got {self.threads!r}")
        if self.speed_length is not None and int(self.speed_length) < 64:
            raise ValueError(f"speed_length must be a token count >= 64 (e.g. 4096), got {self.speed_length!r}")
        for name in ("speed_new_tokens", "speed_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        parse_methods(self.methods)  # raises on a bad name


def token_counter(tokenizer: Any) -> TokenCounter:
    """Count tokens with the model's tokenizer (no special tokens)."""

    def count(text: str) -> int:
        try:
            return len(tokenizer.encode(text, add_special_tokens=False))
        except TypeError:  # tokenizers whose encode has no add_special_tokens (some mlx-lm wrappers)
            return len(tokenizer.encode(text))

    return count


def build_samples(config: EvalConfig, count_tokens: TokenCounter | None = None) -> list[Sample]:
    """All samples of a config, in a fixed order (tasks, then lengths, then index)."""
    out: list[Sample] = []
    for task in config.tasks:
        if task in DATASETS:
            out += load_dataset_samples(task, config.data_dir, n=config.samples, max_tokens=max(config.lengths), count_tokens=count_tokens)
        elif task in ("short", "reading"):
            out += make_samples(task, 0, config.samples, config.seed)
        else:
            for length in config.lengths:
                out += make_samples(task, int(length), config.samples, config.seed, count_tokens, source=config.haystack)
    return out
