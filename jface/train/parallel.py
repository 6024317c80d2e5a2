"""Data parallelism with pmap semantics, written with ``jax.shard_map`` over a 1-D ``'data'`` mesh.

Each device runs the per-device step on its slice of the global batch; inside it, gradients and losses are
``lax.pmean``-ed over ``'data'`` and batch-norm statistics are computed over the global batch (BatchNorm with
``axis_name='data'``). ``check_vma=False`` gives pmap's semantics: a replicated parameter's gradient is per-device
and must be averaged explicitly (with the default ``check_vma=True`` it already comes back summed).

Multi-host: set ``config.distributed = True`` to call ``jax.distributed.initialize()`` (env vars / cluster auto-
detection as in JAX's docs); every process then feeds its own ``global_batch / process_count`` examples through
``shard_batch``, which assembles the global array with ``jax.make_array_from_process_local_data``.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh named ``'data'`` over the first ``num_devices`` devices (default: all)."""
  devices = jax.devices()
  if num_devices is not None:
    if num_devices > len(devices):
      raise ValueError(f"asked for {num_devices} devices, only {len(devices)} present "
                       f"(CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N before importing jax)")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (AXIS,))


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch, mesh: Mesh):
  """Places a process-local batch (dict of numpy arrays, leading dim divisible by the device count).

  String/object arrays (names, sources) are dropped: they never enter the jitted step.
  """
  sharding = NamedSharding(mesh, P(AXIS))
  n = mesh.devices.size
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if v.dtype.kind in "OUS":
      continue
    if v.shape[0] * jax.process_count() % n:
      raise ValueError(f"global batch {v.shape[0] * jax.process_count()} is not divisible by {n} devices")
    out[k] = jax.make_array_from_process_local_data(sharding, v)
  return out


def data_parallel(step_fn: Callable, mesh: Mesh, n_replicated: int, n_sharded: int, donate: bool = True):
  """jit(shard_map(step_fn)) with the first ``n_replicated`` args replicated, the next ``n_sharded`` split on
  their leading axis; outputs replicated (the step must pmean them over ``'data'``)."""
  in_specs = (P(),) * n_replicated + (P(AXIS),) * n_sharded
  f = jax.shard_map(step_fn, mesh=mesh, in_specs=in_specs, out_specs=P(), check_vma=False)
  return jax.jit(f, donate_argnums=(0,) if donate else ())


pmean = functools.partial(jax.lax.pmean, axis_name=AXIS)
