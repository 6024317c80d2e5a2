r"""MediaPipe's face models as plain ``.tflite`` files, run by LiteRT (``ai-edge-litert``), without mediapipe itself.

Optional (never needed by the tests or the training job)::

  pip install -e '.[photos]'                 # ai-edge-litert, LiteRT's interpreter (numpy 2 compatible)
  python -m jface.inference.tflite fetch     # the .tflite files, from mediapipe 0.10.21's wheel on PyPI

mediapipe 0.10.21 is the last release that bundles its models; its metadata pins numpy < 2, so jface does not
install it: ``fetch`` downloads the wheel with ``pip download --no-deps`` (no install), extracts the files below
into ``default_dir()`` and checks their SHA-256. ``--wheel FILE`` uses a wheel already on disk (offline machines).
The files are Apache-2.0 (the wheel's LICENSE is copied next to them).

Where the files are looked for (``find_model``): the ``model_dir`` argument, ``$JFACE_MODELS``, ``default_dir()``
(``~/.cache/jface/mediapipe`` or ``$XDG_CACHE_HOME/jface/mediapipe``), then an installed ``mediapipe`` package's
``modules/`` folders (read as files; mediapipe is not imported).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import zipfile
from typing import Dict, List, Optional, Sequence

import numpy as np

from jface.core import wheels
from jface.core.face_model import MissingAssetError

WHEEL = "mediapipe==0.10.21"
# name -> (path inside the wheel, sha256 of the file in mediapipe 0.10.21)
MODELS: Dict[str, tuple] = {
    "face_detection_short_range.tflite": (
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"),
    "face_detection_full_range_sparse.tflite": (
        "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
        "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1"),
    "face_landmark.tflite": (
        "mediapipe/modules/face_landmark/face_landmark.tflite",
        "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"),
}
FETCH_HINT = "python -m jface.inference.tflite fetch"
INSTALL_HINT = "pip install -e '.[photos]' (ai-edge-litert)"


def default_dir() -> str:
  """``$XDG_CACHE_HOME/jface/mediapipe`` (default ``~/.cache/jface/mediapipe``)."""
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "jface", "mediapipe")


def _mediapipe_dirs() -> List[str]:
  try:
    spec = importlib.util.find_spec("mediapipe")
  except (ImportError, ValueError):
    return []
  if spec is None or not spec.submodule_search_locations:
    return []
  return [os.path.join(p, "modules", sub) for p in spec.submodule_search_locations
          for sub in ("face_detection", "face_landmark")]


def search_dirs(model_dir: Optional[str] = None) -> List[str]:
  """Folders searched for the model files, in order (module docstring)."""
  dirs = [model_dir] if model_dir else []
  if os.environ.get("JFACE_MODELS"):
    dirs.append(os.environ["JFACE_MODELS"])
  return dirs + [default_dir()] + _mediapipe_dirs()


def find_model(name: str, model_dir: Optional[str] = None) -> str:
  """Path of the model file ``name`` (a key of ``MODELS``); ``MissingAssetError`` (one line) when absent."""
  for d in search_dirs(model_dir):
    p = os.path.join(d, name)
    if os.path.isfile(p):
      return p
  where = model_dir or os.environ.get("JFACE_MODELS") or default_dir()
  raise MissingAssetError(f"missing {name} in {where}: MediaPipe's face model (Apache-2.0), from "
                          f"`{FETCH_HINT}` (extracts it from the mediapipe 0.10.21 wheel on PyPI)")


def litert_available() -> bool:
  return importlib.util.find_spec("ai_edge_litert") is not None


def models_available(names: Sequence[str], model_dir: Optional[str] = None) -> bool:
  """LiteRT is installed and every file of ``names`` is found."""
  if not litert_available():
    return False
  try:
    for n in names:
      find_model(n, model_dir)
  except MissingAssetError:
    return False
  return True


class TFLiteModel:
  """One ``.tflite`` model with a single float input ``(B, H, W, 3)``, run by LiteRT on the CPU.

  ``__call__(x (B, H, W, 3) float32) -> list of outputs``, each ``(B, ...)`` float32, in the model's output order.
  The batch dimension is resized on demand (the MediaPipe face models accept any batch).
  """

  def __init__(self, name: str, model_dir: Optional[str] = None, num_threads: int = 1):
    if not litert_available():
      raise MissingAssetError(f"ai-edge-litert is not installed (runs {name}): {INSTALL_HINT}")
    from ai_edge_litert.interpreter import Interpreter
    self.path = find_model(name, model_dir)
    try:
      self._it = Interpreter(model_path=self.path, num_threads=int(num_threads))
    except (ValueError, RuntimeError) as e:
      raise MissingAssetError(f"{self.path}: not a readable .tflite model ({' '.join(str(e).split())[:200]}); "
                              f"fetch it again with `{FETCH_HINT}`") from None
    self._it.allocate_tensors()
    inp = self._it.get_input_details()[0]
    self.input_shape = tuple(int(s) for s in inp["shape"][1:])
    self._input = inp["index"]
    self._outputs = [d["index"] for d in self._it.get_output_details()]
    self._batch = 1

  def __call__(self, x: np.ndarray) -> List[np.ndarray]:
    x = np.ascontiguousarray(x, np.float32)
    if x.shape[1:] != self.input_shape:
      raise ValueError(f"{os.path.basename(self.path)}: input must be (B, {', '.join(map(str, self.input_shape))}),"
                       f" got {x.shape}")
    if len(x) == 0:
      return [np.zeros((0,), np.float32) for _ in self._outputs]
    if len(x) != self._batch:
      self._it.resize_tensor_input(self._input, (len(x),) + self.input_shape)
      self._it.allocate_tensors()
      self._batch = len(x)
    self._it.set_tensor(self._input, x)
    self._it.invoke()
    return [np.array(self._it.get_tensor(i), np.float32).reshape(len(x), -1) for i in self._outputs]


# ------------------------------------------------------------------------------------------- fetch

def download_wheel(dest: str) -> str:
  """``pip download --no-deps`` mediapipe 0.10.21 (one cp311 manylinux wheel; the models are the same in every
  wheel) into ``dest`` -> the wheel's path. Needs network access to PyPI."""
  return wheels.pip_download(WHEEL, dest, "mediapipe-",
                             ["--python-version", "3.11", "--platform", "manylinux_2_28_x86_64"])


def extract_models(wheel: str, dest: str) -> List[str]:
  """Extracts ``MODELS`` (and the wheel's LICENSE) from a mediapipe wheel into ``dest``, checking each SHA-256
  -> written paths. Raises ``ValueError`` on a wheel without them or with other bytes."""
  os.makedirs(dest, exist_ok=True)
  out = []
  try:
    zf = zipfile.ZipFile(wheel)
  except (OSError, zipfile.BadZipFile) as e:
    raise ValueError(f"{wheel}: not a readable wheel ({e})") from None
  with zf:
    names = set(zf.namelist())
    for name, (inner, digest) in MODELS.items():
      if inner not in names:
        raise ValueError(f"{wheel} has no {inner}: use the {WHEEL} wheel")
      tmp = os.path.join(dest, name + ".part")
      with zf.open(inner) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
      if wheels.sha256(tmp) != digest:
        os.remove(tmp)
        raise ValueError(f"{wheel}: {inner} differs from {WHEEL}'s (SHA-256 mismatch)")
      os.replace(tmp, os.path.join(dest, name))
      out.append(os.path.join(dest, name))
    lic = [n for n in names if n.endswith(".dist-info/LICENSE")]
    if lic:
      with zf.open(lic[0]) as src, open(os.path.join(dest, "LICENSE.mediapipe"), "wb") as dst:
        shutil.copyfileobj(src, dst)
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m jface.inference.tflite",
                               description="Fetch MediaPipe's face detector and face mesh .tflite files.")
  sub = ap.add_subparsers(dest="cmd", required=True)
  f = sub.add_parser("fetch", help=f"extract the models from the {WHEEL} wheel (downloaded with pip, not installed)")
  f.add_argument("--dir", default=None, help=f"destination (default {default_dir()})")
  f.add_argument("--wheel", default=None, help="a mediapipe-0.10.21 wheel already on disk (no download)")
  sub.add_parser("where", help="where each model file is found")
  args = ap.parse_args(argv)
  if args.cmd == "where":
    for name in MODELS:
      try:
        print(f"{name}: {find_model(name)}")
      except MissingAssetError as e:
        print(f"{name}: {e}")
    print(f"ai-edge-litert: {'installed' if litert_available() else 'missing: ' + INSTALL_HINT}")
    return 0
  dest = args.dir or default_dir()
  try:
    if args.wheel:
      paths = extract_models(args.wheel, dest)
    else:
      with tempfile.TemporaryDirectory() as tmp:
        print(f"downloading {WHEEL} (~36 MB, not installed) ...", flush=True)
        paths = extract_models(download_wheel(tmp), dest)
  except (RuntimeError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for p in paths:
    print(f"wrote {p}")
  if not litert_available():
    print(f"note: to run them, {INSTALL_HINT}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
