"""benchmarks/ray_scaling.py's cluster layouts: more actors than CPUs (a fraction of a CPU each),
on several nodes, each layout in its own RESULTS section. No cluster, no timing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import ray_scaling as bench  # noqa: E402 - benchmarks/ is not a package


def test_the_default_layout_keeps_its_section_and_another_gets_its_own():
    assert bench.markers(2, 1, 2, 1) == (bench.START, bench.END)
    assert bench.markers(2, 2, 4, 0.5) == ("<!-- ray-scaling-2n-4x0.5:start -->", "<!-- ray-scaling-2n-4x0.5:end -->")


def test_four_half_cpu_actors_on_two_nodes_make_a_ray_engine_config(tmp_path):
    config = bench.engine_config(tmp_path, tmp_path / "model", "ray", 2, "127.0.0.1:6379", encoders=4,
                                 cpus_per_encoder=0.5)
    assert (config.engine.encoders, config.engine.cpus_per_encoder) == (4, 0.5)


def test_a_layout_that_does_not_fit_the_cpus_is_refused_before_a_cluster_starts():
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "ray_scaling.py"), "--cpus", "2", "--nodes", "2",
                           "--encoders", "4", "--cpus-per-encoder", "1", "--no-write"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "4 encoders x 1 CPUs do not fit in --cpus 2" in proc.stderr


def test_a_layer_count_or_chunk_size_gets_its_own_section_on_any_layout():
    assert bench.markers(2, 1, 2, 1, 1, 512) == ("<!-- ray-scaling-1-layers-512-tokens:start -->",
                                                 "<!-- ray-scaling-1-layers-512-tokens:end -->")
    names = {bench.markers(2, nodes, encoders, share, layers, tokens)[0]
             for nodes, encoders, share in ((1, 2, 1), (2, 4, 0.5))
             for layers in (None, 1) for tokens in (None, 512)}
    assert len(names) == 8
    assert "<!-- ray-scaling-2n-4x0.5-1-layers-512-tokens:start -->" in names


def test_the_committed_sections_keep_their_markers():
    results = (BENCHMARKS / "RESULTS.md").read_text(encoding="utf-8")
    for start, end in (bench.markers(2, 1, 2, 1), bench.markers(2, 1, 2, 1, 1, 512)):
        assert start in results and end in results


def test_max_tokens_chunks_at_that_size_with_an_eighth_overlap(tmp_path):
    config = bench.engine_config(tmp_path, tmp_path / "model", "local", 2, None, max_tokens=512)
    assert (config.chunking.max_tokens, config.chunking.overlap_tokens) == (512, 64)
    assert config.encoder.max_length >= 514
