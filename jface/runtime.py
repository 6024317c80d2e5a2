"""Process settings jface's entry points apply before numpy and jax load (``setup()``); imports neither.

* ``OPENBLAS_NUM_THREADS=1``: data workers call numpy's BLAS on small matrices from several threads, and
  OpenBLAS's own thread pool then only adds contention (measured: 8 ms -> 1.2 ms per synthetic face's vertices).
* ``XLA_CPU_FLAGS``: on XLA CPU, convolutions and dots go to XLA's own (Eigen) kernels instead of YNNPACK's
  per-op path: 1.3-1.5x faster train steps on the 2-core machine, and the setting ``benchmarks/train_step.py``
  measures by default (docs/BENCHMARKS.md). An explicit user setting of the same flag wins.
"""
from __future__ import annotations

import os

XLA_CPU_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot"


def setup() -> None:
  """Sets the variables above unless the user set them. Call before importing numpy or jax."""
  os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
  if "ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + XLA_CPU_FLAGS).strip()
