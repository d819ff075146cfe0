"""Dataset loaders on small fixture files written in each dataset's published format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refreekv_edu.eval import datasets as ds
from refreekv_edu.eval.metrics import score

FIX = Path(__file__).parent / "fixtures"


def test_longbench_qasper_fields_prompt_metric():
    samples = ds.load_longbench("qasper", FIX / "longbench" / "qasper.jsonl")
    assert [s.id for s in samples] == ["longbench/qasper-fx-qasper-0001", "longbench/qasper-fx-qasper-0002"]
    s = samples[0]
    assert s.metric == "qa_f1" and s.max_new_tokens == 128 and s.chat
    assert "Wikitext corpus" in s.prompt and s.prompt.rstrip().endswith("Answer:")
    assert "Which corpus did the authors use" in s.prompt
    assert s.references == ["the Wikitext corpus", "Wikitext"]
    assert score(s.metric, "Wikitext", s.references) == 1.0


def test_longbench_trec_classification_uses_all_classes():
    (s,) = ds.load_longbench("trec", FIX / "longbench" / "trec.jsonl")
    assert s.metric == "classification" and not s.chat
    assert s.meta["all_classes"][:2] == ["Individual", "Distance measurement"]
    assert score(s.metric, "City", s.references, **s.meta) == 1.0
    assert score(s.metric, "Country", s.references, **s.meta) == 0.0


def test_longbench_truncates_in_the_middle():
    (s,) = ds.load_longbench("gov_report", FIX / "longbench" / "gov_report.jsonl")
    assert s.metric == "rouge_l"
    long_row = json.loads((FIX / "longbench" / "gov_report.jsonl").read_text())
    text = "start " + "filler words here. " * 400 + " end"
    cut = ds.truncate_middle(text, 100, lambda t: len(t.split()))
    assert len(cut.split()) <= 100 and cut.startswith("start") and cut.endswith("end")
    assert ds.truncate_middle(long_row["context"], 10_000, len) == long_row["context"]  # short text untouched


def test_gsm8k_reference_numbers():
    samples = ds.load_gsm8k(FIX / "gsm8k" / "test.jsonl")
    assert [s.references for s in samples] == [["7"], ["8"], ["30"]]  # "1,200 / 40 = 30" keeps the last answer
    assert samples[0].prompt.startswith("Question: A baker") and samples[0].metric == "gsm8k_accuracy"
    shots = ds.read_jsonl(FIX / "gsm8k" / "test.jsonl")[:1]
    (s,) = ds.load_gsm8k(FIX / "gsm8k" / "test.jsonl", n=1, shots=shots)
    assert s.prompt.count("Question:") == 2 and "#### 7" in s.prompt


def test_coqa_official_and_hub_formats():
    last = ds.load_coqa(FIX / "coqa" / "coqa-dev-v1.0.json")
    assert len(last) == 1
    s = last[0]
    assert s.id == "coqa-fx-coqa-1-t3"
    assert s.references == ["her brother Sam", "Sam"]  # main + additional answers
    assert "Q: What color was the kite?\nA: red\n" in s.prompt and s.prompt.endswith("Q: With whom?\nA:")
    assert score("qa_f1", "Sam", s.references) == 1.0
    every = ds.load_coqa(FIX / "coqa" / "coqa-dev-v1.0.json", turns="all")
    assert [x.meta["turn"] for x in every] == [1, 2, 3]
    assert every[0].references == ["red", "Red."]
    hub = ds.load_coqa(FIX / "coqa_hf.jsonl", turns="all")
    assert [x.references for x in hub] == [["at nine"], ["no"]]


def test_truthfulqa_csv_and_hub_formats():
    csv_samples = ds.load_truthfulqa(FIX / "truthfulqa" / "TruthfulQA.csv")
    assert len(csv_samples) == 2
    s = csv_samples[1]
    assert "Canberra" in s.references[0] and "Sydney" in s.meta["incorrect"]
    assert score(s.metric, "The capital is Canberra.", s.references, **s.meta) == 1.0
    assert score(s.metric, "The capital is Sydney.", s.references, **s.meta) == 0.0
    (g,) = ds.load_truthfulqa(FIX / "truthfulqa_generation.jsonl")
    assert g.references[0] == "It passes through your digestive system"
    assert g.meta["incorrect"][0].startswith("It stays")


def test_find_local_and_by_name():
    assert ds.find_local("longbench/qasper", FIX).name == "qasper.jsonl"
    assert len(ds.load_dataset_samples("gsm8k", FIX, n=2)) == 2
    assert len(ds.load_dataset_samples("truthfulqa", FIX)) == 2  # the CSV comes first
    with pytest.raises(FileNotFoundError, match="musique"):
        ds.find_local("longbench/musique", FIX)
    with pytest.raises(ValueError, match="unknown dataset"):
        ds.load_dataset_samples("squad", FIX)


def test_wrong_file_gives_clear_error(tmp_path):
    bad = tmp_path / "qasper.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(ValueError, match="lacks field"):
        ds.load_longbench("qasper", bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=":1: not a JSON object"):
        ds.read_jsonl(bad)
