"""Benchmarks: one artefact (:mod:`.run`), every artefact of a bundle (:mod:`.matrix`),
timing (:mod:`.timing`), memory (:mod:`.memory`), end-to-end frames (:mod:`.frames`),
Jetson telemetry (:mod:`.telemetry`, :mod:`.jetson`), machine description
(:mod:`.sysinfo`) and result tables (:mod:`.tables`)."""

from .matrix import run_matrix
from .run import BenchConfig, run_benchmark
from .tables import bench_rows, machine_line, matrix_markdown
from .telemetry import BenchEnvironment

__all__ = ["BenchConfig", "BenchEnvironment", "bench_rows", "machine_line", "matrix_markdown", "run_benchmark",
           "run_matrix"]
