"""The one batched-inference loop: a method's jitted predict function over N inputs in fixed-size chunks.

Used by the training loop's dev evaluation (through ``jface.eval``), ``evaluate.py --checkpoint`` and
``predict``. Chunks are padded (by repeating their first row) to ``batch_size``, or to the next power of two
below it for the last chunk, so only a few shapes are ever compiled.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import jax
import numpy as np

from jface.methods.base import FaceOutput


def _pow2_at_most(n: int, cap: int) -> int:
  """The smallest power of two >= n, capped at ``cap``."""
  size = 1
  while size < n:
    size *= 2
  return min(size, cap)


def predict_arrays(predict: Callable, state, face, inputs: Mapping[str, np.ndarray], batch_size: int = 32,
                   progress: Optional[Callable[[int], None]] = None) -> FaceOutput:
  """``predict(state, face, batch) -> FaceOutput`` over ``inputs`` (dict of (N, ...) arrays: ``image`` (N, S, S, 3)
  uint8 plus the method's ``input_fields``) -> FaceOutput of (N, ...) numpy arrays (float32).

  ``progress(k)`` is called after each chunk with the number of rows done in it.
  """
  n = len(inputs["image"])
  if n == 0:
    raise ValueError("predict_arrays: no inputs")
  batch_size = max(1, int(batch_size))
  parts = []
  for s in range(0, n, batch_size):
    e = min(s + batch_size, n)
    size = batch_size if e - s == batch_size else _pow2_at_most(e - s, batch_size)
    pad = size - (e - s)
    batch = {k: np.concatenate([v[s:e], np.repeat(v[s:s + 1], pad, 0)]) if pad else v[s:e]
             for k, v in inputs.items()}
    out = jax.device_get(predict(state, face, batch))
    parts.append(jax.tree_util.tree_map(lambda a: np.asarray(a)[:e - s], out))
    if progress is not None:
      progress(e - s)
  return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts)
