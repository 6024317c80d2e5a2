"""Run as a subprocess with 4 forced CPU devices: two data-parallel 2DASL steps on 4 devices vs on 1 device.

Prints ``max_rel_diff <params> <batch_stats> <extra> <metrics>``. Used by tests/test_train.py.
"""
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from jface import methods  # noqa: E402
from jface.train import parallel  # noqa: E402
from tests.helpers.fakes import fake_batch, fake_config, random_face_model  # noqa: E402


def main():
  assert jax.device_count() == 4, jax.devices()
  config = fake_config(variant=sys.argv[1] if len(sys.argv) > 1 else "default")
  face = random_face_model()
  b3, b2 = fake_batch(8, seed=1, with_params=True), fake_batch(8, seed=2, with_params=False)
  results = []
  for n in (1, 4):
    mesh = parallel.make_mesh(n)
    method = methods.of_config(config)
    mods = method.build(config, bn_axis_name=parallel.AXIS)
    state = parallel.replicate(method.init_state(config, mods), mesh)
    step = parallel.data_parallel(method.make_train_step(config, mods), mesh, 2, 1, donate=False)
    for _ in range(2):
      batches = {"train_3d": parallel.shard_batch(b3, mesh), "train_2d": parallel.shard_batch(b2, mesh)}
      state, metrics = step(state, parallel.replicate(face, mesh), batches)
    results.append(jax.device_get((state.params, state.batch_stats, state.extra, metrics)))
  diffs = []  # relative to each leaf's scale
  for a, b in zip(*results):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    diffs.append(max([float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / (np.max(np.abs(np.asarray(x))) + 1e-6))
                      for x, y in zip(la, lb)] + [0.0]))
  print("metrics", {k: float(v) for k, v in results[1][3].items()})
  print("max_rel_diff", *diffs)


if __name__ == "__main__":
  main()
