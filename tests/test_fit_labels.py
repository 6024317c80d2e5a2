"""Tests for jface.data.fit_labels: pseudo-3D labels fitted to 2D points, chunked and resumable.

Synthetic faces of the embedded model, written as a ``crops:`` folder (the benchmark crop layout, whole-crop roi
boxes, their exact 68 landmarks as the ``fan_pts68_crop`` points). Every fit uses batches of <= 8 (one padded
compilation, shared with the BFM test).
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from jface.core import geometry, synthetic
from jface.data import fit_labels, registry, wild
from jface.data.synthetic_faces import SyntheticFaces

N = 12
CHUNK = 4  # -> 3 chunks
IDX21 = wild.AFLW21_TO_IBUG68[wild.AFLW21_TO_IBUG68 >= 0]  # the 18 iBUG indices the AFLW-21 points map to


@pytest.fixture(scope="module")
def model():
  return synthetic.face_model()


@pytest.fixture(scope="module")
def faces(model):
  src = SyntheticFaces(N, seed=3, model=model)
  return [src[i] for i in range(N)]


@pytest.fixture(scope="module")
def crops_dir(tmp_path_factory, faces):
  """``crops/`` + ``meta.npz``; image 5 is a truncated JPEG (unreadable)."""
  root = tmp_path_factory.mktemp("crops")
  os.makedirs(root / "crops")
  names = [f"face{i:02d}.jpg" for i in range(N)]
  for name, ex in zip(names, faces):
    cv2.imwrite(str(root / "crops" / name), cv2.cvtColor(ex["image"], cv2.COLOR_RGB2BGR))
  data = (root / "crops" / names[5]).read_bytes()
  (root / "crops" / names[5]).write_bytes(data[: len(data) // 2])
  np.savez(root / "meta.npz", names=np.array(names), roi_box=np.tile(np.float32([0, 0, 120, 120]), (N, 1)),
           fan_pts68_crop=np.stack([ex["landmarks"] for ex in faces]), yaw=np.float32([ex["yaw"] for ex in faces]))
  return root


def _run(crops_dir, out, **kw):
  kw = dict(dict(chunk=CHUNK, batch=8, progress=lambda s: None, shape_prior=1e-3, exp_prior=1e-3,
                 robust_scale=0.0), **kw)
  return fit_labels.run(f"crops:{crops_dir}", str(out), "synthetic", **kw)


def test_21_points_recover_landmarks(model, faces):
  """Noise-free AFLW-21 points (18 iBUG indices), the default priors: mean residual < 1 px (measured <= 0.53),
  each given point < 3 px (<= 1.98); all 68 landmarks within 3 % of sqrt(w h) of their box per face (the other 50
  points come from the prior; measured 1.2-2.0 %)."""
  true = np.stack([ex["landmarks"] for ex in faces[:8]])
  w = np.zeros((8, 68), np.float32)
  w[:, IDX21] = 1.0
  fit = fit_labels.fit_points(model, np.where(w[..., None] > 0, true, 0), w, **fit_labels.DEFAULTS)
  assert np.all(fit["status"] == 0) and np.all(fit["n_points"] == len(IDX21))
  pred = np.asarray(geometry.landmarks2d(model, fit["params"]))
  d = np.linalg.norm(pred - true, axis=-1)
  size = np.sqrt(np.prod(true.max(1) - true.min(1), -1))
  assert fit["residual"].max() < 1.0 and d[:, IDX21].max() < 3.0  # the priors pull a little
  nme = 100 * d.mean(1) / size
  assert nme.max() < 3.0, nme


def test_resume_same_as_uninterrupted(crops_dir, tmp_path):
  lines = []
  assert _run(crops_dir, tmp_path / "a", max_chunks=1, progress=lines.append) is None
  assert sorted(os.listdir(tmp_path / "a" / "chunks")) == ["chunk_00000.npz"]
  assert not (tmp_path / "a" / "labels.npz").exists() and "ETA" in lines[-1]
  summary = _run(crops_dir, tmp_path / "a", progress=lines.append)
  assert "1 chunks already done" in " ".join(lines)
  _run(crops_dir, tmp_path / "b")
  a, b = (dict(np.load(tmp_path / d / "labels.npz")) for d in "ab")
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert summary["fitted"] == N - 1 and summary["skipped"]["unreadable"] == 1
  assert a["params"].shape == (N, 62) and list(a["names"][:2]) == ["face00.jpg", "face01.jpg"]
  with pytest.raises(ValueError, match="other settings"):
    _run(crops_dir, tmp_path / "a", shape_prior=2.0)


def test_bad_rows_skipped_and_counted(crops_dir, faces, tmp_path):
  """A points file: row 0 all NaN, row 1 three points, row 2 ten points far outside, face03 absent; plus the
  unreadable face05."""
  pts = np.stack([ex["landmarks"] for ex in faces]).astype(np.float32)  # roi = whole crop: image = crop coords
  pts[0] = np.nan
  pts[1, 3:] = np.nan
  pts[2, :10] = 1e4
  keep = [i for i in range(N) if i != 3]
  np.savez(tmp_path / "pts.npz", names=np.array([f"face{i:02d}.jpg" for i in keep]), landmarks=pts[keep])
  s = _run(crops_dir, tmp_path / "out", points=str(tmp_path / "pts.npz"))
  assert s["skipped"] == {"unreadable": 1, "too few points": 3, "fit failed": 0}
  assert s["fitted"] == N - 4
  c = s["point_counts"]
  assert c["outside"] == 10 and c["file_missing"] == 1 and c["file_unknown"] == 68 + 65
  lab = np.load(tmp_path / "out" / "labels.npz")
  np.testing.assert_array_equal(lab["status"][[0, 1, 2, 3, 5]], [2, 2, 0, 2, 1])
  assert lab["names"][5] == "face05.jpg"
  assert lab["n_points"][2] == 58 and np.isnan(lab["params"][[0, 1, 3, 5]]).all()
  assert np.isfinite(lab["residual"][[2, 4]]).all() and np.isnan(lab["residual"][0])


def test_reader(crops_dir, model, tmp_path):
  _run(crops_dir, tmp_path / "out")
  lab = np.load(tmp_path / "out" / "labels.npz")
  src = registry.build_source(f"fitted:{tmp_path / 'out'}", model)
  assert len(src) == N and src.names[0] == "face00.jpg"
  ex = src[0]
  assert ex["params"].shape == (62,) and ex["params"].dtype == np.float32 and ex["has_params"]
  assert ex["image"].shape == (120, 120, 3) and ex["landmarks"].shape == (68, 2)
  np.testing.assert_array_equal(ex["params"], lab["params"][0])
  assert ex["fit_residual"].dtype == np.float32 and ex["fit_residual"] < 0.5
  with pytest.raises(Exception, match="face05"):
    src[5]  # unreadable stays unreadable
  strict = registry.build_source(f"fitted:{tmp_path / 'out'}:1e-12", model)
  ex = strict[0]
  assert not ex["has_params"] and np.all(ex["params"] == 0) and np.isfinite(ex["fit_residual"])
  other = model.replace(param_mean=model.param_mean + 1.0)
  with pytest.raises(ValueError, match="whitened"):
    registry.build_source(f"fitted:{tmp_path / 'out'}", other)
  cfg = json.loads((tmp_path / "out" / "config.json").read_text())
  assert os.path.isabs(cfg["data"].split(":", 1)[1])


def test_mesh_points_file(crops_dir, photo_models, tmp_path):
  """The face-mesh points file has the landmarks-file layout (NaN rows where the mesh failed or the image is
  unreadable) and feeds ``--landmarks``."""
  out = tmp_path / "mesh.npz"
  info = fit_labels.mesh_points(f"crops:{crops_dir}", str(out), model_dir=photo_models, progress=lambda s: None)
  names, pts = wild.read_landmarks_file(str(out))
  assert info["n"] == N and pts.shape == (N, 68, 2) and names[5] == "face05.jpg" and np.isnan(pts[5]).all()
  s = _run(crops_dir, tmp_path / "fit", landmarks=str(out))
  assert s["fitted"] == N - 1 and s["point_counts"]["file_missing"] == 0


def test_combine_weighted_mean():
  p = np.zeros((2, 1, 68, 2), np.float32)
  p[0, 0, 0], p[1, 0, 0], p[1, 0, 1] = (0, 0), (3, 6), (1, 1)
  w = np.zeros((2, 1, 68), np.float32)
  w[0, 0, 0], w[1, 0, 0], w[1, 0, 1] = 2.0, 1.0, 0.5
  pts, wt = fit_labels.combine([(p[0], w[0]), (p[1], w[1])])
  np.testing.assert_allclose(pts[0, :2], [[1, 2], [1, 1]])
  np.testing.assert_allclose(wt[0, :3], [3.0, 0.5, 0.0])


def test_aflw2000_points21(train_dir):
  names, pts = fit_labels.aflw2000_points21(str(train_dir))
  assert len(names) == 800 and pts.shape == (800, 68, 2)
  known = np.isfinite(pts[..., 0])
  assert known[:, np.setdiff1d(np.arange(68), IDX21)].sum() == 0 and 6 <= np.median(known.sum(1)) <= 18
  gt = np.swapaxes(np.load(train_dir / "meta.npz")["pts68"][:, :2], 1, 2)
  d = np.linalg.norm(pts - gt, axis=-1)[known]
  size = np.sqrt(np.prod(gt.max(1) - gt.min(1), -1))
  assert np.median(d / np.repeat(size, known.sum(1))) < 0.05  # the AFLW points lie near their iBUG twins


def test_missing_fitted_folder_names_the_command(tmp_path):
  """A ``fitted:`` spec whose folder does not exist says in one line which folder and the command that makes it."""
  from jface.core.face_model import MissingAssetError
  from jface.data import registry
  with pytest.raises(MissingAssetError, match=r"missing pseudo-label folder .*nope.*python -m jface.data.fit_labels"):
    registry.build_source(f"fitted:{tmp_path}/nope:3", None)
