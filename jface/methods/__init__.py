"""The method registry: ``get(name) -> Method`` (``config.method``; see ``jface.methods.base``).

A config without a ``method`` field (workdirs written before methods existed) is 2DASL.
"""
from __future__ import annotations

import importlib

from jface.methods.base import FaceOutput, Method, Stream, TrainState

__all__ = ["FaceOutput", "Method", "Stream", "TrainState", "NAMES", "get", "of_config"]

# name -> module defining METHOD (imported on first use, so a method's dependencies load only when it is used)
_MODULES = {"2dasl": "jface.methods.twodasl.method", "prnet": "jface.methods.prnet.method",
            "pgn": "jface.methods.pgn.method"}
NAMES = tuple(_MODULES)


def get(name: str) -> Method:
  if name not in _MODULES:
    raise ValueError(f"unknown method {name!r}; known methods: {', '.join(NAMES)}")
  return importlib.import_module(_MODULES[name]).METHOD


def of_config(config) -> Method:
  """The method a config (or a workdir's saved config) trains; configs older than the registry are 2DASL."""
  return get(config.get("method", "2dasl"))
