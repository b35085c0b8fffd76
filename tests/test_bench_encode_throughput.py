"""The pure helpers of benchmarks/encode_throughput.py: the amortised time and the vectors check
that stops a disagreeing backend's figures from being published. No model, no timing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import encode_throughput as bench  # noqa: E402 - benchmarks/ is not a package

DENSE = [0.6, 0.8, 0.0]
SPARSE = {"5": 0.25, "9": 0.5}


def row(backend: str, dense=DENSE, sparse=SPARSE, **extra) -> dict:
    return {"backend": backend, "sample": [[list(dense), None if sparse is None else dict(sparse)]], **extra}


def test_amortised_seconds_subtracts_the_probe_and_refuses_an_impossible_one():
    assert bench.amortised_seconds(10.0, 3.5) == pytest.approx(6.5)
    assert bench.amortised_seconds(10.0, 0.0) == 10.0
    for probe in (-0.1, 10.0, 12.0):
        with pytest.raises(ValueError):
            bench.amortised_seconds(10.0, probe)


def test_summarise_leads_with_the_amortised_rate_and_keeps_the_per_call_one():
    timing = {"total_tokens": 1000, "useful_gflop": 10.0, "latency_ms": {"query": [1.0, 3.0]}, "max_rss_mb": 1}
    rows = [{"backend": "reference", "throughput_s": 4.0, "probe_s": 2.0, **timing},
            {"backend": "torch", "throughput_s": 1.0, **timing}]
    reference, torch = bench.summarise(rows, peak=100.0)
    assert (reference["tokens_s"], reference["tokens_s_call"]) == (500, 250)
    assert torch["tokens_s"] == torch["tokens_s_call"] == 1000
    assert (torch["ratio_ref"], torch["ratio_ref_call"]) == (2, 4)


def test_compare_counts_a_sparse_id_on_one_side_only_as_weight_zero():
    c = bench.compare(row("a")["sample"], row("b", sparse={**SPARSE, "7": 0.125})["sample"])
    assert (c["same_ids"], c["sparse_max_diff"]) == (0, 0.125)
    dense_only = bench.compare(row("a", sparse=None)["sample"], row("b")["sample"])
    assert dense_only["sparse_max_diff"] is None and dense_only["cos_min"] == pytest.approx(1.0)


def test_rows_that_agree_with_the_reference_pass():
    rows = [row("reference"), row("torch"), row("transformers", sparse={"5": 0.25 + 1e-7, "9": 0.5}),
            row("sentence-transformers", sparse=None), {"backend": "onnx", "skipped": "not installed"}]
    assert bench.check_agreement(rows) == []


def test_a_baseline_computing_something_else_fails_the_check():
    rows = [row("reference"), row("transformers", sparse={"5": 0.25, "9": 0.5, "3": 0.01}),
            row("sentence-transformers", dense=[0.8, 0.6, 0.0], sparse=None)]
    failures = bench.check_agreement(rows)
    assert len(failures) == 2
    assert failures[0].startswith("transformers against reference: sparse weight max |diff|")
    assert failures[1].startswith("sentence-transformers against reference: dense cosine min")


def test_int8_is_held_loosely_and_fp32_exactly():
    near = [0.61, 0.79, 0.0]  # cosine ~0.9999 with DENSE
    assert bench.check_agreement([row("reference"), row("onnx-int8", dense=near, sparse={"5": 0.3})]) == []
    assert bench.check_agreement([row("reference"), row("onnx", dense=near)]) != []


def test_without_the_reference_the_rows_are_checked_against_torch():
    failures = bench.check_agreement([row("torch"), row("transformers", dense=[0.0, 1.0, 0.0])])
    assert failures and failures[0].startswith("transformers against torch:")
