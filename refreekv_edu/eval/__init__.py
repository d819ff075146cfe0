"""The evaluation harness: offline tasks, the paper's datasets, metrics, a resumable runner and reports.

Does ReFreeKV keep full-cache performance, at what KV memory, and how do fixed budgets compare at
the *same* average budget? ``refreekv-edu eval`` answers on the bundled model; the same pieces work
from Python::

    from refreekv_edu.eval import EvalConfig, run_eval, summarize, markdown_table
    records = run_eval(EvalConfig(tasks=["passkey"], lengths=[1024], samples=3, out_dir="results/pk"))
    print(markdown_table(summarize(records)))

Modules: :mod:`.haystack` (filler text made at run time; :mod:`.prose`, the default, is the same on every
Python), :mod:`.tasks` (offline tasks),
:mod:`.datasets` (LongBench, GSM8K, CoQA, TruthfulQA loaders), :mod:`.metrics` (task and fidelity
metrics), :mod:`.methods` (method names -> policies), :mod:`.config` (what to run, the samples), :mod:`.records` (the
resumable ``samples.jsonl`` and ``refs/`` store), :mod:`.runner` (the loop), :mod:`.speed` (decode speed of
the compressed vs the full cache at a long prompt, and memory), :mod:`.summary` (summary rows, bootstrap intervals,
tables), :mod:`.comparisons` (paired and oracle comparisons), :mod:`.sweep` (the threshold sweep's common samples),
:mod:`.layer_losses` (per-layer budgets on the samples the paper preset lost), :mod:`.findings_text` (the findings), :mod:`.plots`,
:mod:`.report` (``summary.md``, ``docs/results.md``), :mod:`.cli` (``refreekv-edu eval``).
Only numpy and the standard library are imported here; tqdm, matplotlib and ``datasets`` load on use.
"""

from .comparisons import oracle_comparisons, paired_comparisons
from .config import EvalConfig, build_samples
from .datasets import DATASETS, load_dataset_samples
from .findings_text import findings
from .methods import ALL_METHODS, DEFAULT_METHODS, MethodSpec, matched_budget, parse_method, parse_methods
from .metrics import METRICS, first_token_kl, qa_f1, rouge_l, score, token_agreement
from .records import read_records
from .report import write_results_md
from .runner import Runner, run_eval
from .speed import speed_check
from .summary import markdown_table, summarize
from .tasks import TASKS, Sample, make_samples

__all__ = [
    "ALL_METHODS",
    "DATASETS",
    "DEFAULT_METHODS",
    "METRICS",
    "TASKS",
    "EvalConfig",
    "MethodSpec",
    "Runner",
    "Sample",
    "build_samples",
    "findings",
    "first_token_kl",
    "load_dataset_samples",
    "make_samples",
    "markdown_table",
    "matched_budget",
    "oracle_comparisons",
    "paired_comparisons",
    "parse_method",
    "parse_methods",
    "qa_f1",
    "read_records",
    "rouge_l",
    "run_eval",
    "score",
    "speed_check",
    "summarize",
    "token_agreement",
    "write_results_md",
]
