"""Data sources by spec string (what configs and command lines name).

===================================  ==========================================================================
spec                                 source
===================================  ==========================================================================
``synthetic:N[:SEED]``               N rendered synthetic faces with 3D labels (embedded default, no download)
``synthetic2d:N[:SEED]``             the same faces as a 2D-only stream (params hidden, landmarks kept)
``crops:DIR``                        benchmark crop layout ``DIR/crops`` + ``DIR/meta.npz`` (+ ``DIR/AFLW2000``
                                     .mat labels when present); landmark input = FAN points of the meta
``mat:DIR``                          original AFLW2000-3D / 300W-LP layout ``DIR/*.jpg`` + ``DIR/*.mat``
``aflw_wild:DIR``                    AFLW in-the-wild crops with 21 visible-masked points (2D-only)
``folder:IMAGES:LANDMARKS``          a folder of images + a 68-point landmarks file (2D-only)
``fitted:DIR[:MAX_RESIDUAL]``        the images of a ``jface.data.fit_labels`` run in DIR with its fitted params as 3D
                                     labels (fits with residual > MAX_RESIDUAL px, and failed ones, stay 2D-only)
``tfds:NAME[:SPLIT[:DATA_DIR]]``     TFDS ``the300w_lp`` / ``aflw2k3d`` through ``tfds.data_source``
``synthetic_groups:N_IDS:K[:SEED]``  N_IDS synthetic identities x K frames (shared shape and albedo, own pose,
                                     expression, light, background), grouped (``group_size`` K), 3D labels
``groups:K:SPEC``                    a crops folder made from other images (``meta.npz`` ``source_name``, e.g.
                                     by ``jface.data.profiling``) as groups of K examples of one origin image
``clips:DIR[:K]``                    clips ``DIR/<clip>/<frame>.jpg|png`` + ``<frame>.pts`` (iBUG 68 points) as
                                     groups of K (default 2) consecutive frames of one clip (2D-only)
===================================  ==========================================================================

Grouped sources (the last three; ``jface.data.groups``) are for multi-frame methods (PGN): indices
``[g K, (g + 1) K)`` are K frames of one identity, examples carry ``group`` (int identity index), and
``jface.data.pipeline.Loader`` batches whole groups.
"""
from __future__ import annotations

import os

from jface.core.face_model import MissingAssetError

KINDS = ("synthetic", "synthetic2d", "crops", "mat", "aflw_wild", "folder", "fitted", "tfds", "synthetic_groups",
         "groups", "clips")


class HideParams:
  """Wraps a source so that it looks 2D-only: ``has_params`` False, params zero."""

  def __init__(self, source):
    self.source = source
    if hasattr(source, "group_size"):
      self.group_size = source.group_size

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    ex = dict(self.source[i])
    ex["params"] = ex["params"] * 0
    ex["has_params"] = False
    return ex


class Cached:
  """Memoises ``source[i]`` (thread-safe enough: a race only renders an example twice). For small synthetic
  sets, so a few-minute run renders each face once and then only pays for augmentation."""

  def __init__(self, source):
    self.source, self._memo = source, {}
    if hasattr(source, "group_size"):
      self.group_size = source.group_size

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    ex = self._memo.get(i)
    if ex is None:
      ex = self._memo[i] = self.source[i]
    return ex


CACHE_LIMIT = 2048  # synthetic and labelled-crop sets up to this size are kept in memory (~45 KB per example)


def _cached_if_small(src):
  return Cached(src) if len(src) <= CACHE_LIMIT else src


def _need_dir(path: str, spec: str, what: str = "data folder", made_by: str = "") -> str:
  """``path`` if it is a folder, else ``MissingAssetError`` in one line (naming the command ``made_by`` if any)."""
  if not os.path.isdir(path):
    how = f"; make it with {made_by}" if made_by else ""
    raise MissingAssetError(f"missing {what} {path} (from data spec {spec!r}){how}")
  return path


def origin_names(spec: str):
  """For a ``crops:DIR`` made from other images (``meta.npz`` with ``source_name``, e.g. by
  ``jface.data.profiling``): the source image name of each example; None for any other spec."""
  import numpy as np
  kind, _, rest = spec.partition(":")
  path = os.path.join(rest, "meta.npz")
  if kind != "crops" or not os.path.isfile(path):
    return None
  with np.load(path, allow_pickle=False) as meta:
    return None if "source_name" not in meta else [str(x) for x in meta["source_name"]]


def build_source(spec: str, model=None):
  """A random-access source for ``spec`` (see the module table). ``model`` whitens 3D labels."""
  if not spec:
    raise ValueError(f"empty data spec; expected one of: {', '.join(k + ':...' for k in KINDS)}")
  kind, _, rest = spec.partition(":")
  args = rest.split(":") if rest else []
  if kind == "groups":
    from jface.data.groups import GroupedSource
    k, _, inner = rest.partition(":")
    if not k.isdigit() or int(k) < 1 or not inner:
      raise ValueError(f"data spec {spec!r}: expected groups:K:SPEC (e.g. groups:4:crops:DIR)")
    src = build_source(inner, model)
    origins = origin_names(inner)
    if origins is None:
      raise ValueError(f"data spec {spec!r}: groups need a crops folder with meta.npz source_name (e.g. from "
                       "python -m jface.data.profiling)")
    return GroupedSource(src, origins, int(k), what=f"data spec {spec!r}")
  if kind == "synthetic_groups":
    from jface.data.synthetic_faces import SyntheticGroups
    if not 2 <= len(args) <= 3 or not all(a.isdigit() for a in args) or int(args[1]) < 1:
      raise ValueError(f"data spec {spec!r}: expected synthetic_groups:N_IDS:K[:SEED]")
    return _cached_if_small(SyntheticGroups(int(args[0]), int(args[1]), seed=int(args[2]) if len(args) > 2 else 0,
                                            model=model if model is not None and model.name == "synthetic" else None))
  if kind == "clips":
    from jface.data.groups import ClipsSource
    if not 1 <= len(args) <= 2 or (len(args) == 2 and (not args[1].isdigit() or int(args[1]) < 1)):
      raise ValueError(f"data spec {spec!r}: expected clips:DIR[:K]")
    return ClipsSource(_need_dir(args[0], spec), int(args[1]) if len(args) > 1 else 2)
  if kind in ("synthetic", "synthetic2d"):
    from jface.data.synthetic_faces import SyntheticFaces
    if not args or not args[0].isdigit():
      raise ValueError(f"data spec {spec!r}: expected {kind}:N[:SEED]")
    src = SyntheticFaces(int(args[0]), seed=int(args[1]) if len(args) > 1 else 0,
                         model=model if model is not None and model.name == "synthetic" else None)
    src = _cached_if_small(src)
    return HideParams(src) if kind == "synthetic2d" else src
  if kind == "crops":
    from jface.data.crops_layout import CropsLayoutSource
    # Each example reads and converts a .mat file; 800 AFLW2000-3D crops fit in memory.
    return _cached_if_small(CropsLayoutSource(_need_dir(rest, spec), model=model))
  if kind == "mat":
    from jface.data.mat_layout import MatLayoutSource
    return MatLayoutSource(_need_dir(rest, spec), model=model)
  if kind == "aflw_wild":
    from jface.data.wild import AFLWWildSource
    return AFLWWildSource(_need_dir(rest, spec))
  if kind == "folder":
    from jface.data.wild import FolderSource
    if len(args) != 2:
      raise ValueError(f"data spec {spec!r}: expected folder:IMAGES_DIR:LANDMARKS_FILE")
    if not os.path.exists(args[1]):
      raise MissingAssetError(f"missing landmarks file {args[1]} (from data spec {spec!r})")
    return FolderSource(_need_dir(args[0], spec), args[1])
  if kind == "fitted":
    from jface.data.fit_labels import FittedSource
    if not args or len(args) > 2:
      raise ValueError(f"data spec {spec!r}: expected fitted:DIR[:MAX_RESIDUAL]")
    folder = _need_dir(args[0], spec, "pseudo-label folder", "python -m jface.data.fit_labels --data "
                       f"aflw_wild:../shared/data/aflw_wild --out {args[0]} (README, 'pseudo-3D labels')")
    return FittedSource(folder, float(args[1]) if len(args) > 1 else None, model=model)
  if kind == "tfds":
    from jface.data.tfds_sources import TFDSSource
    if not args:
      raise ValueError(f"data spec {spec!r}: expected tfds:NAME[:SPLIT[:DATA_DIR]]")
    return TFDSSource(args[0], split=args[1] if len(args) > 1 else "train",
                      data_dir=args[2] if len(args) > 2 else None, model=model)
  raise ValueError(f"unknown data spec kind {kind!r} in {spec!r}; choose one of {', '.join(KINDS)}")
