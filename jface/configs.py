"""Loading a config file the way ``train.py --config FILE[:VARIANT]`` does, for scripts, tools and tests."""
from __future__ import annotations

import importlib.util
import os

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(spec: str) -> ml_collections.ConfigDict:
  """``"configs/2dasl.py:smoke"`` (or ``"2dasl:smoke"``, ``"2dasl"``) -> ``get_config("smoke")`` of that file.

  A relative path is looked up in the working directory, then in the repository's ``configs/``.
  """
  path, _, variant = spec.partition(":")
  if not path.endswith(".py"):
    path = os.path.join("configs", path + ".py")
  if not os.path.exists(path):
    path = os.path.join(ROOT, path) if os.path.exists(os.path.join(ROOT, path)) else os.path.join(
        ROOT, "configs", os.path.basename(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"missing config file {spec.partition(':')[0]} (looked in . and {ROOT}/configs)")
  mod_spec = importlib.util.spec_from_file_location(f"jface_config_{os.path.basename(path)[:-3]}", path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  return mod.get_config(variant or None)
