"""Prediction files for ``evaluate.py --predictions``: ``.npy`` (N, 62) whitened params or (N, 68, 2|3) crop
landmarks in the dataset's image order, or ``.npz`` with ``names`` plus ``params`` (N, 62) or ``landmarks``
(N, 68, 2|3) in crop pixels (params win when both are present)."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from jface.core.face_model import MissingAssetError
from jface.eval.data import EvalError, _basename


@dataclasses.dataclass
class Predictions:
  """params (N, 62) whitened or None; landmarks (N, 68, 2|3) crop coords (NaN rows = failures) or None until
  computed from params; missing (N,) bool = not in the predictions file."""
  params: Optional[np.ndarray]
  landmarks: Optional[np.ndarray]
  missing: np.ndarray
  source: str


def _load_array_file(path: str) -> dict:
  if not os.path.exists(path):
    raise MissingAssetError(f"missing predictions file {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext not in (".npy", ".npz"):
    raise EvalError(f"{path}: predictions must be a .npy or .npz file")
  try:
    if ext == ".npy":
      return {"__array__": np.load(path, allow_pickle=False)}
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except Exception as e:  # noqa: BLE001 -- numpy raises many types on corrupt files
    raise EvalError(f"{path}: cannot read ({type(e).__name__}: {' '.join(str(e).split())})") from None


def _kind_of(arr: np.ndarray, n: Optional[int], path: str, what: str) -> str:
  if arr.ndim == 2 and arr.shape[1] == 62 and (n is None or arr.shape[0] == n):
    return "params"
  if arr.ndim == 3 and arr.shape[1] == 68 and arr.shape[2] in (2, 3) and (n is None or arr.shape[0] == n):
    return "landmarks"
  want = "N" if n is None else str(n)
  raise EvalError(f"{path}: {what} has shape {arr.shape}; expected ({want}, 62) whitened params or "
                  f"({want}, 68, 2|3) crop landmarks")


def read_predictions(path: str, names: Sequence[str], order: str) -> Predictions:
  """Reads a predictions file and aligns it with ``names`` (see the module docstring)."""
  data = _load_array_file(path)
  n = len(names)
  if "__array__" in data:
    arr = data["__array__"]
    if arr.dtype.kind not in "fiu":
      raise EvalError(f"{path}: expected a float array, got dtype {arr.dtype}")
    kind = _kind_of(arr, None, path, "the array")
    if arr.shape[0] != n:
      raise EvalError(f"{path}: {arr.shape[0]} rows but the dataset has {n} images (rows follow {order}); "
                      f"use an .npz with 'names' to evaluate a subset")
    arr = arr.astype(np.float64)
    return Predictions(arr if kind == "params" else None, arr if kind == "landmarks" else None,
                       np.zeros(n, bool), path)
  if "names" not in data:
    raise EvalError(f"{path}: an .npz of predictions needs 'names' plus 'params' or 'landmarks' "
                    f"(has {sorted(data)})")
  key = "params" if "params" in data else "landmarks" if "landmarks" in data else None
  if key is None:
    raise EvalError(f"{path}: no 'params' (N, 62) or 'landmarks' (N, 68, 2) array (has {sorted(data)})")
  arr = data[key]
  if arr.dtype.kind not in "fiu":
    raise EvalError(f"{path}: {key!r} must be numbers, got dtype {arr.dtype}")
  pnames = [_basename(x) for x in np.asarray(data["names"]).reshape(-1)]
  if len(pnames) != arr.shape[0]:
    raise EvalError(f"{path}: {len(pnames)} names but {key!r} has {arr.shape[0]} rows")
  kind = _kind_of(arr, len(pnames), path, repr(key))
  if kind != key:
    raise EvalError(f"{path}: {key!r} has shape {arr.shape}, which is not {key}")
  if len(set(pnames)) != len(pnames):
    dup = sorted({x for x in pnames if pnames.count(x) > 1})
    raise EvalError(f"{path}: repeated names: {', '.join(dup[:5])}{' ...' if len(dup) > 5 else ''}")
  index = {nm: i for i, nm in enumerate(names)}
  unknown = [x for x in pnames if x not in index]
  if unknown:
    raise EvalError(f"{path}: {len(unknown)} of {len(pnames)} names are not in the dataset ({order}), e.g. "
                    f"{', '.join(unknown[:5])}")
  out = np.full((n,) + arr.shape[1:], np.nan)
  rows = np.array([index[x] for x in pnames], int)
  out[rows] = arr
  missing = np.ones(n, bool)
  missing[rows] = False
  return Predictions(out if key == "params" else None, out if key == "landmarks" else None, missing, path)
