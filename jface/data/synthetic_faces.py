"""Synthetic 3D-labelled faces rendered on the fly (no download): the embedded default training source.

``SyntheticFaces(n, seed)[i]`` draws, deterministically from ``np.random.default_rng([seed, i])``:

* parameters from ``jface.core.synthetic.sample_params`` (yaw U(-80, 80), pitch/roll U(-20, 20), identity and
  expression of the synthetic 3DMM, face centred in the 120 px crop);
* an albedo: skin tone between light and dark, hair colour (or bald), brows, lips, iris, blush, plus a
  smooth multiplicative blotch field;
* a light: direction within ~60 degrees of the camera axis (mostly from above), ambient 0.2-0.55,
  diffuse 0.45-0.85, a slightly tinted colour;
* a background: solid colour, linear gradient, smooth noise, or random shapes (clutter);
* mild blur and pixel noise.

The example dict is the project's (see ``datasets/pipeline.py``): ``image`` (120, 120, 3) uint8 RGB,
``params`` (62,) float32 whitened with the synthetic model's ``param_mean/param_std``, ``has_params``,
``landmarks`` (68, 2) float32 crop coordinates equal to ``geometry.landmarks2d(model, params)``,
``landmarks_mask`` (68,) all True (as AFLW2000-3D / 300W-LP: self-occluded points keep their projected
positions and stay labelled), ``roi_box`` = (0, 0, 120, 120) (the crop is the whole image), ``yaw`` =
``geometry.pose_angles(model, params)[0]`` in degrees, ``source`` "synthetic", ``name`` "synthetic_NNNNNN".
With ``labels="2d"`` the same images come as a 2D-only source (``has_params`` False, params zeros, source
"synthetic2d"), for the in-the-wild stream of 2DASL.

``SyntheticGroups(n_ids, k, seed)`` (spec ``synthetic_groups:N_IDS:K[:SEED]``) renders k frames per identity
(shared shape coefficients and albedo, own pose / expression / light / background / noise) as a grouped source
(``group_size = k``, examples with ``group`` = identity) for multi-frame methods (PGN).

``python -m jface.data.synthetic_faces --grid docs/synthetic_face.png`` saves a grid of samples with landmarks.
"""
from __future__ import annotations

import argparse
from typing import Dict, Optional

import cv2
import numpy as np

from jface.core import render as render_lib
from jface.core import synthetic
from jface.core.face_model import CROP_SIZE, FaceModel

_HAIR = np.array([(0.07, 0.06, 0.05), (0.22, 0.14, 0.09), (0.42, 0.28, 0.16), (0.78, 0.63, 0.4),
                  (0.58, 0.57, 0.55), (0.52, 0.24, 0.12), (0.3, 0.22, 0.17)])
_IRIS = np.array([(0.3, 0.19, 0.1), (0.16, 0.1, 0.06), (0.3, 0.45, 0.6), (0.35, 0.45, 0.3), (0.45, 0.35, 0.2)])
_SKIN_LIGHT = np.array([0.96, 0.79, 0.69])
_SKIN_DARK = np.array([0.36, 0.23, 0.16])


def _rotation_angles(p_raw: np.ndarray) -> np.ndarray:
  """Numpy twin of ``geometry.rotation_from_params`` + ``matrix_to_angles``: raw (62,) -> (yaw, pitch, roll)."""
  fR = p_raw[:12].reshape(3, 4)[:, :3]
  r1 = fR[0] / np.linalg.norm(fR[0])
  r2 = fR[1] / np.linalg.norm(fR[1])
  R = np.stack([r1, r2, np.cross(r1, r2)])
  yaw = np.arcsin(np.clip(R[2, 0], -1.0, 1.0))
  c = np.cos(yaw)
  pitch = np.arctan2(R[2, 1] / c, R[2, 2] / c)
  roll = np.arctan2(R[1, 0] / c, R[0, 0] / c)
  return np.degrees([yaw, pitch, roll])


def random_colors(rng: np.random.Generator) -> Dict[str, np.ndarray]:
  """Region colours for ``jface.core.synthetic.albedo``: a random person."""
  tone = rng.beta(1.6, 1.6)
  skin = (_SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone) * rng.uniform(0.94, 1.06, 3)
  hair = _HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.85, 1.15, 3)
  if rng.random() < 0.08:  # bald / shaved
    hair = skin * rng.uniform(0.85, 1.0)
  brows = 0.55 * hair + 0.45 * np.array([0.14, 0.1, 0.07]) * rng.uniform(0.7, 1.3)
  lips = skin * np.array([0.88, 0.6, 0.6]) * rng.uniform(0.85, 1.1, 3)
  cols = dict(skin=skin, hair=hair, brows=brows, lips=lips, iris=_IRIS[rng.integers(len(_IRIS))],
              cheeks=skin * np.array([1.03, 0.82, 0.8]), nostrils=skin * 0.45, liner=brows * 0.7,
              teeth=np.array([0.92, 0.88, 0.78]) * rng.uniform(0.85, 1.05),
              sclera=np.array([0.93, 0.91, 0.88]) * rng.uniform(0.85, 1.02))
  return {k: np.clip(v, 0.0, 1.0) for k, v in cols.items()}


def random_background(rng: np.random.Generator, size: int) -> np.ndarray:
  """(size, size, 3) uint8: solid, gradient, smooth noise or clutter, chosen uniformly."""
  kind = rng.integers(4)
  c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  if kind == 0:
    bg = np.broadcast_to(c0, (size, size, 3)).astype(np.float64)
  elif kind == 1:
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    t = np.clip(0.5 + np.cos(a) * xx + np.sin(a) * yy, 0.0, 1.0)[..., None]
    bg = c0 * (1 - t) + c1 * t
  elif kind == 2:
    k = int(rng.integers(2, 12))
    low = rng.uniform(0, 255, (k, k, 3)).astype(np.float32)
    bg = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float64)
  else:
    bg = np.ascontiguousarray(np.broadcast_to(c0, (size, size, 3)).astype(np.uint8))
    for _ in range(int(rng.integers(4, 14))):
      col = tuple(float(c) for c in rng.uniform(0, 255, 3))
      x0, y0 = (int(v) for v in rng.integers(-10, size + 10, 2))
      s = int(rng.integers(6, size // 2))
      shape = rng.integers(3)
      if shape == 0:
        cv2.rectangle(bg, (x0, y0), (x0 + s, y0 + int(rng.integers(6, size // 2))), col, -1)
      elif shape == 1:
        cv2.circle(bg, (x0, y0), s // 2, col, -1, lineType=cv2.LINE_AA)
      else:
        x1, y1 = (int(v) for v in rng.integers(-10, size + 10, 2))
        cv2.line(bg, (x0, y0), (x1, y1), col, int(rng.integers(1, 6)), lineType=cv2.LINE_AA)
    bg = bg.astype(np.float64)
  bg = bg + rng.normal(0.0, rng.uniform(0, 6), bg.shape)
  return np.clip(np.rint(bg), 0, 255).astype(np.uint8)


class SyntheticFaces:
  """Random-access source of rendered synthetic faces; ``src[i]`` is deterministic in ``(seed, i)``.

  Args:
    n: number of examples.
    seed: source seed.
    size: crop side; must equal the model's ``crop_size`` (120) -- the params are in that crop.
    model: the synthetic ``FaceModel`` used for whitening (default ``jface.core.synthetic.face_model()``).
    labels: ``"3d"`` (params + landmarks) or ``"2d"`` (landmarks only: has_params False, zero params).
  """

  def __init__(self, n: int, seed: int = 0, size: int = CROP_SIZE, model: Optional[FaceModel] = None,
               labels: str = "3d"):
    if n < 0:
      raise ValueError(f"SyntheticFaces: n must be >= 0, got {n}")
    model = synthetic.face_model() if model is None else model
    if model.name != "synthetic":
      raise ValueError(f"SyntheticFaces renders the synthetic 3DMM; got a FaceModel named {model.name!r}")
    if size != model.crop_size:
      raise ValueError(f"SyntheticFaces: size {size} != the model's crop_size {model.crop_size}")
    if labels not in ("3d", "2d"):
      raise ValueError(f"SyntheticFaces: labels must be '3d' or '2d', got {labels!r}")
    self.n, self.seed, self.size, self.labels = int(n), int(seed), int(size), labels
    self._a = synthetic.numpy_arrays()
    self._mean = np.asarray(model.param_mean, np.float64)
    self._std = np.asarray(model.param_std, np.float64)
    self._regions = synthetic.face_regions()
    self._rest = self._a["u"].reshape(-1, 3) / synthetic.UNIT

  def __len__(self) -> int:
    return self.n

  def _albedo(self, rng: np.random.Generator) -> np.ndarray:
    tex = synthetic.albedo(random_colors(rng))
    blotch = np.zeros(len(tex))
    for _ in range(4):
      c = rng.uniform([-0.7, -0.9, -0.2], [0.7, 0.8, 1.1])
      s = rng.uniform(0.15, 0.4)
      blotch += rng.normal(0.0, 0.06) * np.exp(-0.5 * np.sum((self._rest - c) ** 2, axis=-1) / s ** 2)
    return np.clip(tex * (1.0 + blotch)[:, None], 0.0, 1.0)

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    if not 0 <= i < self.n:
      raise IndexError(f"SyntheticFaces index {i} out of range [0, {self.n})")
    rng = np.random.default_rng([self.seed, i])
    p = synthetic.sample_params(rng, 1, crop_size=self.size)[0]
    tex = self._albedo(rng)
    return self._render(rng, p, tex, f"synthetic_{i:06d}", "synthetic" if self.labels == "3d" else "synthetic2d")

  def _render(self, rng: np.random.Generator, p: np.ndarray, tex: np.ndarray, name: str, source: str) -> dict:
    """The example of raw params ``p`` (62,) and albedo ``tex`` (N, 3); light, background, blur and noise are
    drawn from ``rng`` (in this order)."""
    az, el = np.radians(rng.uniform(-60, 60)), np.radians(rng.uniform(-25, 55))
    light = np.array([np.sin(az) * np.cos(el), -np.sin(el), np.cos(az) * np.cos(el)])
    tint = rng.uniform(0.9, 1.1, 3)
    bg = random_background(rng, self.size)
    v = synthetic.vertices_np(p, self._a, self.size)
    # The synthetic mesh is closed and wound outwards, so back faces can be culled (cull=+1, ~2x faster).
    img = render_lib.render(v, self._a["tri"], np.clip(tex * tint, 0, 1), light_dir=light,
                            ambient=rng.uniform(0.2, 0.55), diffuse=rng.uniform(0.45, 0.85), background=bg,
                            cull=1)
    if rng.random() < 0.5:
      img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.9))
    sigma = rng.uniform(0.0, 4.0)
    img = np.clip(img + rng.normal(0.0, sigma, img.shape), 0, 255).astype(np.uint8)
    pw = (p - self._mean) / self._std
    three_d = self.labels == "3d"
    return dict(
        image=img,
        params=(pw if three_d else np.zeros_like(pw)).astype(np.float32),
        has_params=np.bool_(three_d),
        landmarks=v[self._a["keypoints"], :2].astype(np.float32),
        landmarks_mask=np.ones(68, bool),
        roi_box=np.array([0, 0, self.size, self.size], np.float32),
        yaw=np.float32(_rotation_angles(p)[0]),
        source=source,
        name=name,
    )


class SyntheticGroups(SyntheticFaces):
  """``n_ids`` synthetic identities x ``k`` frames: a grouped source (``group_size = k``, see
  ``jface.data.pipeline``) for multi-frame methods (PGN).

  Index ``i k + j`` is frame j of identity i. The identity -- shape coefficients (raw params 12:52) and albedo
  (skin / hair / eye colours and blotches) -- comes from ``default_rng([seed, i, 0])``; each frame draws its own
  pose, scale, shift, expression (raw params 0:12 and 52:62), light, background, blur and noise from
  ``default_rng([seed, i, j + 1])``. Examples are ``SyntheticFaces``' (labels with the synthetic model) plus
  ``group`` = i (int); ``source`` "synthetic_groups" (``labels="2d"``: "synthetic_groups2d"), ``name``
  "synthetic_groups_IIIIII_JJ".
  """

  def __init__(self, n_ids: int, k: int, seed: int = 0, size: int = CROP_SIZE, model: Optional[FaceModel] = None,
               labels: str = "3d"):
    if n_ids < 0 or k < 1:
      raise ValueError(f"SyntheticGroups: need n_ids >= 0 and k >= 1, got {n_ids}, {k}")
    super().__init__(int(n_ids) * int(k), seed=seed, size=size, model=model, labels=labels)
    self.n_ids, self.group_size = int(n_ids), int(k)

  def identity(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Identity i -> (shape coefficients (40,) raw, albedo (N, 3) in [0, 1])."""
    rng = np.random.default_rng([self.seed, int(i), 0])
    shp = synthetic.sample_params(rng, 1, crop_size=self.size)[0, 12:52]
    return shp, self._albedo(rng)

  def __getitem__(self, idx: int) -> dict:
    idx = int(idx)
    if not 0 <= idx < self.n:
      raise IndexError(f"SyntheticGroups index {idx} out of range [0, {self.n})")
    i, j = divmod(idx, self.group_size)
    shp, tex = self.identity(i)
    rng = np.random.default_rng([self.seed, i, j + 1])
    p = synthetic.sample_params(rng, 1, crop_size=self.size)[0]
    p[12:52] = shp
    source = "synthetic_groups" if self.labels == "3d" else "synthetic_groups2d"
    ex = self._render(rng, p, tex, f"synthetic_groups_{i:06d}_{j:02d}", source)
    ex["group"] = i
    return ex


def grid(n: int = 8, seed: int = 1, cols: int = 4, landmarks: bool = True) -> np.ndarray:
  """A (rows*120, cols*120, 3) uint8 RGB grid of ``SyntheticFaces(n, seed)`` with landmarks drawn."""
  src = SyntheticFaces(n, seed)
  tiles = []
  for i in range(n):
    ex = src[i]
    img = ex["image"]
    if landmarks:
      img = render_lib.draw_landmarks(img, ex["landmarks"], color=(40, 255, 40), radius=0.55)
    tiles.append(img)
  rows = -(-n // cols)
  tiles += [np.zeros_like(tiles[0])] * (rows * cols - n)
  return np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], 1) for r in range(rows)], 0)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--grid", required=True, help="output PNG path")
  ap.add_argument("--n", type=int, default=8)
  ap.add_argument("--seed", type=int, default=1)
  ap.add_argument("--cols", type=int, default=4)
  ap.add_argument("--no_landmarks", action="store_true")
  args = ap.parse_args(argv)
  g = grid(args.n, args.seed, args.cols, not args.no_landmarks)
  if not cv2.imwrite(args.grid, g[..., ::-1]):
    raise SystemExit(f"cannot write {args.grid}")
  print(f"wrote {args.grid} ({g.shape[1]}x{g.shape[0]})")


if __name__ == "__main__":
  main()
