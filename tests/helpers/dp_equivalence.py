"""Run as a subprocess with 4 forced CPU devices: one data-parallel 2DASL step on 4 devices vs on 1 device.

Prints ``max_abs_diff <params> <batch_stats> <adv_params> <metrics>``. Used by tests/test_train_step.py.
"""
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from jface import parallel, train_lib  # noqa: E402
from tests.helpers.fakes import fake_batch, fake_config, random_face_model  # noqa: E402


def main():
  assert jax.device_count() == 4, jax.devices()
  config = fake_config(variant=sys.argv[1] if len(sys.argv) > 1 else "default")
  face = random_face_model()
  b3, b2 = fake_batch(8, seed=1, with_params=True), fake_batch(8, seed=2, with_params=False)
  results = []
  for n in (1, 4):
    mesh = parallel.make_mesh(n)
    mods = train_lib.make_modules(config)
    state = parallel.replicate(train_lib.init_state(config, mods, image_size=32), mesh)
    step = parallel.data_parallel(train_lib.make_train_step(config, mods), mesh, 2, 2, donate=False)
    for _ in range(2):
      state, metrics = step(state, parallel.replicate(face, mesh), parallel.shard_batch(b3, mesh),
                            parallel.shard_batch(b2, mesh))
    results.append(jax.device_get((state.params, state.batch_stats, state.adv_params, metrics)))
  diffs = []  # relative to each leaf's scale
  for a, b in zip(*results):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    diffs.append(max([float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / (np.max(np.abs(np.asarray(x))) + 1e-6))
                      for x, y in zip(la, lb)] + [0.0]))
  print("metrics", {k: float(v) for k, v in results[1][3].items()})
  print("max_rel_diff", *diffs)


if __name__ == "__main__":
  main()
