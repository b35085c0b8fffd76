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
