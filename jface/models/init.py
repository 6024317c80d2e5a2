"""Initial network variables drawn on the host with numpy: what ``module.init`` gives in distribution, without
compiling the random draws (XLA:CPU takes 10-25 s to compile ~80 kernel draws; every workdir load pays it).

``glorot_variables(shapes, seed, zero)``: every kernel Glorot-uniform (TF-slim's xavier, ``U(-b, b)``,
``b = sqrt(6 / (fan_in + fan_out))``, fans = receptive field x channels: conv (HWIO), transposed-conv and dense
kernels alike), batch-norm scales and variances 1, biases and means 0; leaves where ``zero(keys, name)`` is true
are 0 (a zeroed kernel still consumes its draw, so the other leaves do not change). Leaves are drawn in flatten
order from ``np.random.default_rng(seed)``: deterministic in ``seed`` on every backend.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def glorot_variables(shapes, seed: int, zero: Callable[[Sequence[str], str], bool] = lambda keys, name: False):
  """``shapes``: the tree of ``jax.eval_shape(module.init, ...)`` -> the same tree of arrays (module docstring)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    keys = [str(getattr(p, "key", p)) for p in path]
    name, shape, dtype = keys[-1], leaf.shape, leaf.dtype
    if zero(keys, name):
      if name == "kernel":
        rng.uniform(size=shape)
      return jnp.zeros(shape, dtype)
    if name == "kernel":
      receptive = int(np.prod(shape[:-2]))
      bound = np.sqrt(6.0 / (receptive * (shape[-2] + shape[-1])))
      return jnp.asarray(rng.uniform(-bound, bound, size=shape), dtype)
    if name in ("scale", "var"):
      return jnp.ones(shape, dtype)
    if name in ("bias", "mean"):
      return jnp.zeros(shape, dtype)
    raise ValueError(f"glorot_variables: no rule for the variable {jax.tree_util.keystr(path)}")
  return jax.tree_util.tree_map_with_path(draw, shapes)
