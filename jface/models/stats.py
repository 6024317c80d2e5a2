"""Model size and cost: parameter counts and multiply-accumulate (MAC) counts, without compiling."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np

from jface.models.layers import Conv1x1Dot


def count_params(tree) -> int:
  """Total number of elements in a pytree of arrays (or ShapeDtypeStructs), e.g. ``variables['params']``."""
  return int(sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))


def count_macs(module: nn.Module, *inputs, **kwargs) -> int:
  """MACs of one forward pass of ``module`` on ``inputs`` (whole batch: pass batch 1 for per-image).

  Counts ``nn.Conv`` (out pixels * k_h * k_w * in / groups * out), ``Conv1x1Dot`` (out pixels * in * out) and
  ``nn.Dense`` (rows * in * out) layers only: batch norm, activations, pooling and additions are left out, as in
  the usual "GMAC" figures. Runs ``init`` under ``jax.eval_shape`` with an interceptor, so nothing is compiled or
  allocated; ``inputs`` may be ``jax.ShapeDtypeStruct``s.
  """
  total = [0]

  def interceptor(next_fun, args, kw, context):
    out = next_fun(*args, **kw)
    mod = context.module
    if context.method_name == "__call__" and isinstance(mod, (nn.Conv, nn.Dense, Conv1x1Dot)):
      x = args[0]
      rows = math.prod(out.shape[:-1])
      if isinstance(mod, nn.Conv):
        ks = mod.kernel_size if isinstance(mod.kernel_size, tuple) else (mod.kernel_size,)
        total[0] += rows * math.prod(ks) * (x.shape[-1] // mod.feature_group_count) * out.shape[-1]
      else:
        total[0] += rows * x.shape[-1] * out.shape[-1]
    return out

  def run(*xs):
    with nn.intercept_methods(interceptor):
      return module.init(jax.random.key(0), *xs, **kwargs)

  jax.eval_shape(run, *inputs)
  return int(total[0])
