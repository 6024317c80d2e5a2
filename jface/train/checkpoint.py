"""Orbax checkpoints of a workdir: ``checkpoints/`` (latest, kept ``keep``) and ``best/`` (best dev metric), the
saved ``config.json``, and loading a workdir back as ``(config, method, state)``.

Workdirs written before the method registry (state fields ``adv_params`` / ``adv_opt_state`` instead of
``extra``) are converted on load; anything else that does not match gives one line naming the workdir.
"""
from __future__ import annotations

import json
import logging
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

LATEST, BEST = "checkpoints", "best"
_LEGACY_KEYS = ("adv_params", "adv_opt_state")


class CheckpointError(FileNotFoundError):
  """A workdir without a loadable checkpoint (one-line message)."""


def managers(workdir: str, keep: int) -> tuple[ocp.CheckpointManager, ocp.CheckpointManager]:
  """(latest, best) managers; ``best`` keeps the step with the lowest ``metrics["dev_nme"]``."""
  latest = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, LATEST)), item_handlers=ocp.StandardCheckpointHandler(),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True))
  best = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, BEST)), item_handlers=ocp.StandardCheckpointHandler(),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["dev_nme"], best_mode="min",
                                           create=True, enable_async_checkpointing=False))
  return latest, best


def reader(path: str) -> ocp.CheckpointManager:
  """A read-only manager of a checkpoint folder (its metadata tells the saved layout). Orbax's warning that the
  folder is read only (which is what was asked) is kept off the user's console."""
  absl_log = logging.getLogger("absl")
  level = absl_log.level
  absl_log.setLevel(logging.ERROR)
  try:
    return ocp.CheckpointManager(path, item_handlers=ocp.StandardCheckpointHandler(),
                                 options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                                                      save_interval_steps=0))
  finally:
    absl_log.setLevel(level)


def save_args(state):
  return ocp.args.StandardSave(state)


def _abstract(tree):
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)


def _saved_tree(manager: ocp.CheckpointManager, step: int):
  """The saved item's metadata tree (leaves with ``.shape``), or None when this orbax cannot say."""
  try:
    meta = manager.item_metadata(step)
    return getattr(meta, "tree", meta)
  except Exception:  # noqa: BLE001 -- metadata formats vary across orbax versions; fall back to a plain restore
    return None


def _shapes(tree) -> list:
  """Sorted leaf shapes of a state or of a saved metadata tree (comparable across the two)."""
  def shape(x):
    s = getattr(x, "shape", None)
    return tuple(int(d) for d in (np.shape(x) if s is None else s))
  return sorted(shape(x) for x in jax.tree_util.tree_leaves(tree))


def restore(manager: ocp.CheckpointManager, template, step: int | None = None):
  """Restores ``step`` (default: latest) into host arrays shaped like ``template`` (a ``TrainState``);
  converts the pre-registry 2DASL layout (``adv_params``/``adv_opt_state``) into ``extra``. Raises ``ValueError``
  (one line) before reading any array when the saved leaves do not have the template's shapes."""
  step = manager.latest_step() if step is None else step
  saved = _saved_tree(manager, step)
  legacy = saved is not None and hasattr(saved, "keys") and _LEGACY_KEYS[0] in saved.keys()
  target = template
  if legacy:
    target = {"step": template.step, "params": template.params, "batch_stats": template.batch_stats,
              "opt_state": template.opt_state, "adv_params": template.extra.get("adv_params", {}),
              "adv_opt_state": template.extra.get("adv_opt_state", {})}
  if saved is not None and _shapes(saved) != _shapes(target):
    raise ValueError(f"the checkpoint at step {step} holds {len(jax.tree_util.tree_leaves(saved))} arrays whose "
                     f"shapes differ from the {len(jax.tree_util.tree_leaves(target))} the model needs")
  restored = manager.restore(step, args=ocp.args.StandardRestore(_abstract(target)))
  if not legacy:
    return restored
  extra = {k: restored[k] for k in _LEGACY_KEYS} if template.extra else {}
  return template.replace(step=restored["step"], params=restored["params"], batch_stats=restored["batch_stats"],
                          opt_state=restored["opt_state"], extra=extra)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2))


STAGES_FILE = "stages.json"  # a staged workdir (one sub-workdir per training stage): {"stages": [...], "final": ...}


def resolve_workdir(workdir: str) -> str:
  """A staged workdir (``STAGES_FILE``, e.g. PGN's three stages) -> its final stage's sub-workdir; else itself."""
  path = os.path.join(workdir, STAGES_FILE)
  if os.path.isfile(path):
    with open(path) as f:
      return os.path.join(workdir, json.load(f)["final"])
  return workdir


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The ``config.json`` of a workdir (of its final stage for a staged one)."""
  workdir = resolve_workdir(workdir)
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise CheckpointError(f"no checkpoint at {workdir}: expected a train.py workdir with config.json and "
                          f"{LATEST}/")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if "method" not in config:  # written before the method registry: 2DASL
    config.method = "2dasl"
  return config
