"""A trained workdir back as ``(config, method, state)``: what ``evaluate.py --checkpoint`` and ``predict`` load."""
from __future__ import annotations

import os

from jface.methods import of_config
from jface.train import checkpoint


def load_checkpoint(workdir: str, which: str = "latest"):
  """-> (config, method, TrainState on the host) of a workdir written by ``jface.training``.

  ``which``: "latest" or "best". A staged workdir (PGN) loads its final stage. Raises ``CheckpointError`` (one line) when nothing loadable is there.
  """
  workdir = checkpoint.resolve_workdir(workdir)
  config = checkpoint.read_config(workdir)
  method = of_config(config)
  path = os.path.abspath(os.path.join(workdir, checkpoint.BEST if which == "best" else checkpoint.LATEST))
  if not os.path.isdir(path):
    raise checkpoint.CheckpointError(f"no checkpoints in {path}")
  manager = checkpoint.reader(path)
  if manager.latest_step() is None:
    raise checkpoint.CheckpointError(f"no checkpoints in {path}")
  template = method.init_state(config, method.build(config, bn_axis_name=None))
  try:
    state = checkpoint.restore(manager, template)
  except (ValueError, KeyError, TypeError) as e:
    why = " ".join(str(e).split())[:200]
    raise checkpoint.CheckpointError(f"cannot load {path}: it does not match the {method.name} model of its "
                                     f"config.json ({type(e).__name__}: {why})") from None
  return config, method, state
