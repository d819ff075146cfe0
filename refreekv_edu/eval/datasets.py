"""Loaders for the paper's datasets: LongBench subsets, GSM8K, CoQA, TruthfulQA -> :class:`~refreekv_edu.eval.tasks.Sample`.

Each loader reads the dataset's own file format from a local path (what the tests use, on small fixture
files in ``tests/eval/fixtures/``), or, with no path, downloads it through the Hugging Face ``datasets``
library when a network is there (``pip install 'refreekv_edu[eval]'``; the download path is unverified
in this repository's CI, which has no network).

Local layouts (the files as their projects publish them):

- LongBench: ``<dir>/longbench/<subset>.jsonl``, one record per line with ``input``, ``context``, ``answers``,
  ``all_classes``, ``_id`` (the files inside LongBench's ``data.zip``).
- GSM8K: ``<dir>/gsm8k/test.jsonl`` with ``question`` and ``answer`` (ending ``#### <number>``).
- CoQA: ``<dir>/coqa/coqa-dev-v1.0.json`` (official: ``data[].story``, ``questions[]``, ``answers[]``,
  ``additional_answers``) or a JSONL export of the Hugging Face ``stanfordnlp/coqa`` rows.
- TruthfulQA: ``<dir>/truthfulqa/TruthfulQA.csv`` (the GitHub CSV, answers separated by ``;``) or
  ``generation.jsonl`` (the Hugging Face ``generation`` config rows).

Prompt wording is ours; per-subset answer lengths and metrics follow LongBench's published settings.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .tasks import Sample, TokenCounter, approx_tokens

# LongBench subset -> (metric, max_new_tokens, prompt template with {context} and {input}).
LONGBENCH: dict[str, tuple[str, int, str]] = {
    "narrativeqa": ("qa_f1", 128, "Read the story below and answer the question as briefly as you can.\n\nStory: {context}\n\nQuestion: {input}\n\nAnswer:"),
    "qasper": ("qa_f1", 128, "Read the scientific article below and answer the question briefly. Answer \"unanswerable\" if the article does not say, and \"yes\" or \"no\" for yes/no questions.\n\nArticle: {context}\n\nQuestion: {input}\n\nAnswer:"),
    "multifieldqa_en": ("qa_f1", 64, "Read the text below and answer the question briefly.\n\n{context}\n\nQuestion: {input}\nAnswer:"),
    "hotpotqa": ("qa_f1", 32, "Answer the question using the passages below. Give only the answer.\n\n{context}\n\nQuestion: {input}\nAnswer:"),
    "2wikimqa": ("qa_f1", 32, "Answer the question using the passages below. Give only the answer.\n\n{context}\n\nQuestion: {input}\nAnswer:"),
    "musique": ("qa_f1", 32, "Answer the question using the passages below. Give only the answer.\n\n{context}\n\nQuestion: {input}\nAnswer:"),
    "gov_report": ("rouge_l", 512, "Summarise the following government report in one paragraph.\n\nReport:\n{context}\n\nSummary:"),
    "qmsum": ("rouge_l", 512, "Answer the query about the meeting transcript below in a few sentences.\n\nTranscript:\n{context}\n\nQuery: {input}\nAnswer:"),
    "multi_news": ("rouge_l", 512, "Summarise the following news articles in one paragraph.\n\n{context}\n\nSummary:"),
    "samsum": ("rouge_l", 128, "Summarise dialogues like the examples below.\n\n{context}\n\n{input}"),
    "triviaqa": ("qa_f1", 32, "Answer the question like the examples below. Give only the answer.\n\n{context}\n\n{input}"),
    "trec": ("classification", 64, "Classify the type of each question like the examples below.\n\n{context}\n{input}"),
    "passage_count": ("count", 32, "How many different paragraphs are there among the paragraphs below (some are repeated)? Answer with a number only.\n\n{context}\n\nNumber of different paragraphs:"),
    "passage_retrieval_en": ("retrieval", 32, "Which paragraph below is the summary taken from? Answer like \"Paragraph 3\".\n\n{context}\n\nSummary: {input}\n\nAnswer:"),
    "lcc": ("code_sim", 64, "Complete the next line of code.\n\n{context}"),
    "repobench-p": ("code_sim", 64, "Complete the next line of code.\n\n{context}{input}"),
}

DATASETS = tuple(f"longbench/{name}" for name in LONGBENCH) + ("gsm8k", "coqa", "truthfulqa")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every JSON object of a JSON-lines file (blank lines skipped; errors name the line)."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not a JSON object ({exc.msg}); expected one record per line") from None
    return rows


def _require(row: dict[str, Any], keys: Iterable[str], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{where}: record lacks field(s) {missing}; found {sorted(row)}. Is this the right dataset file?")


def truncate_middle(text: str, max_tokens: int, count: TokenCounter) -> str:
    """Keep the start and the end of ``text`` so that it fits ``max_tokens`` (LongBench's convention).

    Cuts in characters, scaled by the measured characters-per-token ratio, then re-checks.
    """
    tokens = count(text)
    if tokens <= max_tokens:
        return text
    keep = len(text) * max_tokens / tokens
    for _ in range(8):
        half = int(keep / 2)
        cut = text[:half] + "\n...\n" + text[len(text) - half :]
        if count(cut) <= max_tokens:
            return cut
        keep *= 0.95
    return cut


def _hub(name: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of a Hugging Face dataset (needs ``datasets`` and a network; unverified here)."""
    try:
        import datasets  # noqa: PLC0415 - optional extra, imported on use
    except ImportError:
        raise RuntimeError(
            f"no local file given and the 'datasets' library is not installed; either pass a data directory with "
            f"the dataset files (see refreekv_edu.eval.datasets) or pip install 'refreekv_edu[eval]' to download {name}"
        ) from None
    ds = datasets.load_dataset(name, config, split=split) if config else datasets.load_dataset(name, split=split)
    return [dict(r) for r in ds]


# ---------------------------------------------------------------------------------------------- LongBench
def load_longbench(subset: str, path: str | Path | None = None, n: int | None = None, max_tokens: int | None = None,
                   count_tokens: TokenCounter | None = None) -> list[Sample]:
    """LongBench ``subset`` as samples; ``max_tokens`` truncates long contexts in the middle."""
    if subset not in LONGBENCH:
        raise ValueError(f"unknown LongBench subset {subset!r}; known: {', '.join(LONGBENCH)}")
    metric, max_new, template = LONGBENCH[subset]
    rows = read_jsonl(path) if path else _hub("THUDM/LongBench", subset, "test")
    count = count_tokens or approx_tokens
    samples = []
    for i, row in enumerate(rows[:n] if n else rows):
        _require(row, ("input", "context", "answers"), f"LongBench {subset} record {i}")
        context = row["context"]
        if max_tokens:
            overhead = count(template.format(context="", input=row["input"]))
            context = truncate_middle(context, max(64, max_tokens - overhead - 20), count)
        samples.append(Sample(
            id=f"longbench/{subset}-{row.get('_id', i)}",
            task=f"longbench/{subset}",
            prompt=template.format(context=context, input=row["input"]),
            references=[str(a) for a in row["answers"]],
            metric=metric,
            chat=subset not in {"lcc", "repobench-p", "trec", "triviaqa", "samsum"},  # few-shot/code: raw continuation
            max_new_tokens=max_new,
            meta={"all_classes": row.get("all_classes") or [], "length": row.get("length")},
        ))
    return samples


# ---------------------------------------------------------------------------------------------- GSM8K
def load_gsm8k(path: str | Path | None = None, n: int | None = None, shots: list[dict[str, str]] | None = None,
               max_new_tokens: int = 256) -> list[Sample]:
    """GSM8K test problems; ``shots`` (rows with ``question``/``answer``) are prepended as worked examples."""
    rows = read_jsonl(path) if path else _hub("openai/gsm8k", "main", "test")
    prefix = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots or [])
    samples = []
    for i, row in enumerate(rows[:n] if n else rows):
        _require(row, ("question", "answer"), f"GSM8K record {i}")
        from .metrics import gsm8k_reference

        samples.append(Sample(
            id=f"gsm8k-{i}",
            task="gsm8k",
            prompt=f"{prefix}Question: {row['question']}\nAnswer: Let's think step by step.",
            references=[gsm8k_reference(row["answer"])],
            metric="gsm8k_accuracy",
            max_new_tokens=max_new_tokens,
            meta={"shots": len(shots or [])},
        ))
    return samples


# ---------------------------------------------------------------------------------------------- CoQA
def _coqa_dialogues(rows: list[dict[str, Any]]) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(id, story, questions, answers-per-turn) from either the official JSON or Hugging Face rows."""
    out = []
    for i, row in enumerate(rows):
        _require(row, ("story", "questions", "answers"), f"CoQA record {i}")
        if isinstance(row["answers"], dict):  # Hugging Face: questions list[str], answers {"input_text": [...]}
            questions = list(row["questions"])
            answers = [[a] for a in row["answers"]["input_text"]]
        else:  # official: lists of {"input_text", "turn_id"}, plus optional additional_answers
            questions = [q["input_text"] for q in row["questions"]]
            answers = [[a["input_text"]] for a in row["answers"]]
            for extra in (row.get("additional_answers") or {}).values():
                for turn, a in enumerate(extra[: len(answers)]):
                    answers[turn].append(a["input_text"])
        out.append((str(row.get("id", i)), row["story"], questions, answers))
    return out


def load_coqa(path: str | Path | None = None, n: int | None = None, turns: str = "last") -> list[Sample]:
    """CoQA dialogues: a story, the earlier question/answer turns, and the current question (metric: F1).

    ``turns="last"`` makes one sample per story (its last turn, with all earlier turns as history);
    ``turns="all"`` one sample per turn.
    """
    if turns not in {"last", "all"}:
        raise ValueError(f"turns must be 'last' or 'all', got {turns!r}")
    if path:
        try:  # the official file is one JSON document {"version": ..., "data": [...]}
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            rows = doc["data"] if isinstance(doc, dict) and "data" in doc else [doc]
        except json.JSONDecodeError:  # several lines: a JSONL export of the hub rows
            rows = read_jsonl(path)
    else:
        rows = _hub("stanfordnlp/coqa", None, "validation")
    samples = []
    for story_id, story, questions, answers in _coqa_dialogues(rows):
        chosen = range(len(questions)) if turns == "all" else [len(questions) - 1]
        for t in chosen:
            history = "".join(f"Q: {q}\nA: {a[0]}\n" for q, a in zip(questions[:t], answers[:t]))
            samples.append(Sample(
                id=f"coqa-{story_id}-t{t + 1}",
                task="coqa",
                prompt=f"Read the story and answer the last question in a few words.\n\n{story}\n\n{history}Q: {questions[t]}\nA:",
                references=answers[t],
                metric="qa_f1",
                max_new_tokens=32,
                meta={"turn": t + 1},
            ))
    return samples[:n] if n else samples


# ---------------------------------------------------------------------------------------------- TruthfulQA
def _truthfulqa_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        out = []
        for i, r in enumerate(rows):
            _require(r, ("Question", "Best Answer", "Correct Answers", "Incorrect Answers"), f"TruthfulQA CSV row {i}")
            out.append({
                "question": r["Question"],
                "best_answer": r["Best Answer"],
                "correct_answers": [a.strip() for a in r["Correct Answers"].split(";") if a.strip()],
                "incorrect_answers": [a.strip() for a in r["Incorrect Answers"].split(";") if a.strip()],
                "category": r.get("Category", ""),
            })
        return out
    return read_jsonl(path)


def load_truthfulqa(path: str | Path | None = None, n: int | None = None) -> list[Sample]:
    """TruthfulQA (generation): metric = ROUGE-L closer to a true answer than to every false one."""
    rows = _truthfulqa_rows(Path(path)) if path else _hub("truthfulqa/truthful_qa", "generation", "validation")
    samples = []
    for i, row in enumerate(rows[:n] if n else rows):
        _require(row, ("question", "correct_answers", "incorrect_answers"), f"TruthfulQA record {i}")
        correct = list(row["correct_answers"])
        if row.get("best_answer") and row["best_answer"] not in correct:
            correct.insert(0, row["best_answer"])
        samples.append(Sample(
            id=f"truthfulqa-{i}",
            task="truthfulqa",
            prompt=f"Answer the question truthfully in one sentence.\n\nQ: {row['question']}\nA:",
            references=correct,
            metric="truthfulqa_rouge_acc",
            max_new_tokens=48,
            meta={"incorrect": list(row["incorrect_answers"]), "category": row.get("category", "")},
        ))
    return samples


# ---------------------------------------------------------------------------------------------- by name
_LOCAL_FILES: dict[str, tuple[str, ...]] = {
    "gsm8k": ("gsm8k/test.jsonl",),
    "coqa": ("coqa/coqa-dev-v1.0.json", "coqa/validation.jsonl"),
    "truthfulqa": ("truthfulqa/TruthfulQA.csv", "truthfulqa/generation.jsonl"),
}


def find_local(name: str, data_dir: str | Path) -> Path:
    """The file for dataset ``name`` inside ``data_dir`` (see the module docstring for the layout)."""
    data_dir = Path(data_dir)
    candidates = (f"longbench/{name.split('/', 1)[1]}.jsonl",) if name.startswith("longbench/") else _LOCAL_FILES.get(name, ())
    for rel in candidates:
        if (data_dir / rel).is_file():
            return data_dir / rel
    raise FileNotFoundError(f"dataset {name!r}: none of {list(candidates)} exists under {data_dir}")


def load_dataset_samples(name: str, data_dir: str | Path | None = None, n: int | None = None, max_tokens: int | None = None,
                         count_tokens: TokenCounter | None = None) -> list[Sample]:
    """Samples of a paper dataset by name (``"longbench/qasper"``, ``"gsm8k"``, ``"coqa"``, ``"truthfulqa"``).

    With ``data_dir`` the local files are read; without, the Hugging Face hub is used (needs a network).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    path = find_local(name, data_dir) if data_dir else None
    loaders: dict[str, Callable[[], list[Sample]]] = {
        "gsm8k": lambda: load_gsm8k(path, n),
        "coqa": lambda: load_coqa(path, n),
        "truthfulqa": lambda: load_truthfulqa(path, n),
    }
    if name.startswith("longbench/"):
        return load_longbench(name.split("/", 1)[1], path, n, max_tokens, count_tokens)
    return loaders[name]()
