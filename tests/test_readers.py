"""Dataset readers: datasets/common.py, mat_layout.py, crops_layout.py, wild.py, tfds_sources.py, pseudo_label.py."""
from __future__ import annotations

import os
import sys

import chex
import cv2
import numpy as np
import pytest
import scipy.io

from jface.core import crop
from jface.data import common, crops_layout, mat_layout, pseudo_label, tfds_sources, wild
from jface.data.common import BadExample


def check_contract(ex, crop=120):
  """The documented example dict."""
  for k in common.EXAMPLE_KEYS:
    assert k in ex, k
  chex.assert_shape(ex["image"], (crop, crop, 3))
  assert ex["image"].dtype == np.uint8
  chex.assert_shape(ex["params"], (62,))
  assert ex["params"].dtype == np.float32 and np.all(np.isfinite(ex["params"]))
  assert isinstance(ex["has_params"], (bool, np.bool_))
  if not ex["has_params"]:
    assert not np.any(ex["params"])
  chex.assert_shape(ex["landmarks"], (68, 2))
  assert ex["landmarks"].dtype == np.float32 and np.all(np.isfinite(ex["landmarks"]))
  chex.assert_shape(ex["landmarks_mask"], (68,))
  assert ex["landmarks_mask"].dtype == bool
  assert not np.any(ex["landmarks"][~ex["landmarks_mask"]])
  chex.assert_shape(ex["roi_box"], (4,))
  assert ex["roi_box"].dtype == np.float32
  assert isinstance(ex["yaw"], np.float32)
  assert isinstance(ex["source"], str) and isinstance(ex["name"], str)


def nme(pred, gt):
  """(N, 68, 2) -> (N,) percent, normalised by sqrt(w h) of the GT box."""
  sz = np.sqrt(np.prod(gt.max(1) - gt.min(1), -1))
  return np.linalg.norm(pred - gt, axis=-1).mean(-1) / sz * 100


def iou(a, b):
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  i = ix * iy
  return i / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - i)


def rot_readme(pitch, yaw, roll):
  """R = Rx Ry Rz exactly as written in ../shared/README.md."""
  c, s = np.cos(pitch), np.sin(pitch)
  rx = np.array([[1, 0, 0], [0, c, s], [0, -s, c]])
  c, s = np.cos(yaw), np.sin(yaw)
  ry = np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])
  c, s = np.cos(roll), np.sin(roll)
  rz = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
  return rx @ ry @ rz


def fake_model(seed=0):
  """A random stand-in with the FaceModel attributes the readers use (for tests that need no ../shared)."""
  import types
  rng = np.random.default_rng(seed)
  scale = np.concatenate([np.tile([3e-4, 3e-4, 3e-4, 20.0], 3), np.full(40, 3e5), np.ones(10)])  # ~ 3DDFA's
  return types.SimpleNamespace(param_mean=rng.normal(size=62) * scale, param_std=rng.uniform(0.5, 2, 62) * scale,
                               u_base=rng.normal(0, 5e4, 204), w_shp_base=rng.normal(0, 1, (204, 40)),
                               w_exp_base=rng.normal(0, 1e3, (204, 10)), crop_size=120)


def fake_face_model(seed=0):
  """``fake_model`` as a real ``FaceModel`` (for jface.core.geometry), float32."""
  import jax.numpy as jnp
  from jface.core.face_model import FaceModel
  m = fake_model(seed)
  f = lambda a: jnp.asarray(a, jnp.float32)
  return FaceModel(u_base=f(m.u_base), w_shp_base=f(m.w_shp_base), w_exp_base=f(m.w_exp_base),
                   param_mean=f(m.param_mean), param_std=f(m.param_std), name="fake").check()


@pytest.fixture(scope="module")
def aflw_mats(dev_dir, train_dir):
  """{split: (meta, [mat dicts])} for the 1000 ../shared AFLW2000-3D images (read once, ~2 s)."""
  out = {}
  for split, d in (("dev", dev_dir), ("train", train_dir)):
    meta = common.load_meta(str(d / "meta.npz"))
    mats = [common.read_mat(str(d / "AFLW2000" / n.replace(".jpg", ".mat"))) for n in meta["names"]]
    out[split] = (meta, mats)
  return out


# -------------------------------------------------------------------------------------- helpers

def test_crop_numpy_path_matches_jax_path():
  """jface.core.crop on numpy arrays (float64, one box) equals the batched JAX path (float32) within f32 rounding."""
  import jax.numpy as jnp
  rng = np.random.default_rng(0)
  pts = rng.uniform(0, 400, (5, 68, 3))
  boxes = np.concatenate([rng.uniform(0, 100, (5, 2)), rng.uniform(200, 400, (5, 2))], 1)
  ref = crop.image_to_crop(jnp.asarray(pts, jnp.float32), jnp.asarray(boxes, jnp.float32))
  assert ref.dtype == jnp.float32 and crop.image_to_crop(pts, boxes).dtype == np.float64
  ref = np.asarray(ref)
  for p, b, r in zip(pts, boxes, ref):
    c = crop.image_to_crop(p, b)
    np.testing.assert_allclose(c, r, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(crop.crop_to_image(c, b), p, atol=1e-9)
    np.testing.assert_allclose(crop.image_to_crop(p[:, :2], b), c[:, :2])


def test_angles_from_raw_params_match_geometry():
  import jax.numpy as jnp
  from jface.core import geometry as G
  rng = np.random.default_rng(1)
  ang = rng.uniform([-80, -40, -40], [80, 40, 40], (6, 3))
  r = np.asarray(G.angles_to_matrix(jnp.asarray(ang, jnp.float32)), np.float64)
  p = np.zeros((6, 62))
  p[:, :12] = np.concatenate([0.0007 * r, rng.normal(size=(6, 3, 1))], -1).reshape(6, 12)
  np.testing.assert_allclose(common.angles_from_raw_params(p), ang, atol=1e-3)


def test_roi_box_from_landmarks_closed_form():
  pts = np.array([[10.0, 20.0], [50.0, 40.0], [30.0, 30.0]])
  # L = 40, side = 40 sqrt(2) = 56.57, centre (30, 30): sx = round(1.716) = 2, ex = 2 + 57
  np.testing.assert_array_equal(common.roi_box_from_landmarks(pts), [2, 2, 59, 59])
  np.testing.assert_array_equal(common.roi_box_from_landmarks(pts, image_shape=(50, 55, 3)), [2, 2, 55, 50])
  far = np.array([[1000.0, 1000.0], [np.nan, 5.0]])
  np.testing.assert_array_equal(
      common.roi_box_from_landmarks(np.concatenate([pts, far]), mask=[1, 1, 1, 0, 1]), [2, 2, 59, 59])
  with pytest.raises(ValueError, match=">= 2 usable"):
    common.roi_box_from_landmarks(pts, mask=[1, 0, 0])


def test_roi_box_reproduces_benchmark_boxes(aflw_mats):
  """3DDFA's box from pt3d_68, clipped to the 450x450 image == meta roi_box for all 1000 images."""
  for split, (meta, mats) in aflw_mats.items():
    boxes = np.stack([common.roi_box_from_landmarks(m["pt3d_68"][:2].T, image_shape=(450, 450)) for m in mats])
    np.testing.assert_array_equal(boxes, meta["roi_box"], err_msg=split)


def test_crop_image_closed_form():
  rng = np.random.default_rng(2)
  img = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
  # a 120-pixel box (inclusive 1-based sx..ex) is copied unchanged
  np.testing.assert_array_equal(common.crop_image(img, [11, 21, 130, 140]), img[20:140, 10:130])
  # a box reaching past the image is zero padded
  out = common.crop_image(img, [-9, 201, 110, 320])
  np.testing.assert_array_equal(out[:100, 10:], img[200:300, 0:110])
  assert not out[100:].any() and not out[:, :10].any()
  # the overlap-only path for huge boxes agrees with the canvas path
  box = [-150, -100, 350, 400]
  a = common.crop_image(img, box).astype(float)
  b = common.crop_image(img, box, max_canvas=1000).astype(float)
  assert np.abs(a - b).mean() < 40 and np.abs(a - b)[b > 0].size > 0
  with pytest.raises(ValueError, match="empty roi box"):
    common.crop_image(img, [10, 10, 10, 50])


def test_crop_matches_benchmark_crops(dev_dir):
  meta = common.load_meta(str(dev_dir / "meta.npz"))
  diffs = []
  for n, box in list(zip(meta["names"], meta["roi_box"]))[::20]:
    ours = common.crop_image(common.read_image(str(dev_dir / "AFLW2000" / n)), box)
    ref = common.read_image(str(dev_dir / "crops" / n))
    diffs.append(np.abs(ours.astype(float) - ref).mean())
  assert np.mean(diffs) < 2.5, diffs  # measured 1.7 (JPEG noise); an off-by-one box gives >= 3.4


def test_read_image_is_rgb(tmp_path):
  img = np.zeros((8, 10, 3), np.uint8)
  img[..., 0] = 200  # red in RGB
  cv2.imwrite(str(tmp_path / "r.png"), img[..., ::-1])
  out = common.read_image(str(tmp_path / "r.png"))
  np.testing.assert_array_equal(out, img)
  assert common.image_size(str(tmp_path / "r.png")) == (8, 10)


# ---------------------------------------------------------------------------------- mat layout

def test_mat_to_params_closed_form():
  """Synthetic 40/10-component fits: landmarks of the converted params map back to the README's image points."""
  import jax.numpy as jnp
  from jface.core import geometry as G
  bfm = fake_face_model()
  rng = np.random.default_rng(3)
  u = np.asarray(bfm.u_base, np.float64)
  ws, we = np.asarray(bfm.w_shp_base, np.float64), np.asarray(bfm.w_exp_base, np.float64)
  pws, raws, boxes, refs = [], [], [], []
  for k in range(3):
    shp, exp = np.zeros((199, 1)), np.zeros((29, 1))
    shp[:40, 0] = rng.normal(0, 3e5, 40) / (1 + np.arange(40))
    exp[:10, 0] = rng.normal(0, 1, 10)
    pose = np.array([[*rng.uniform(-0.5, 0.5, 3), *rng.uniform(150, 300, 2), rng.uniform(-50, 50), 1.2e-3]])
    mat = {"Pose_Para": pose.astype(np.float32), "Shape_Para": shp, "Exp_Para": exp}
    h = 450 + 30 * k
    s = pose[0, 6]
    q = s * (u + ws @ shp[:40, 0] + we @ exp[:10, 0]).reshape(-1, 3) @ rot_readme(*pose[0, :3]).T + pose[0, 3:6]
    q[:, 1] = h + 1 - q[:, 1]  # the README's y -> 451 - y for H = 450
    box = np.array([q[:, 0].min() - 30, q[:, 1].min() - 45, q[:, 0].max() + 25, q[:, 1].max() + 10])
    pw = mat_layout.mat_to_params(mat, box, h, bfm)
    chex.assert_shape(pw, (62,))
    assert pw.dtype == np.float32
    raw = mat_layout.mat_to_raw_params(mat, box, h)
    np.testing.assert_allclose(raw[12:52], shp[:40, 0])
    np.testing.assert_allclose(raw[52:], exp[:10, 0])
    np.testing.assert_allclose(mat_layout.fit_landmarks_image(mat, h, bfm), q, atol=1e-6 * np.ptp(q))
    pws.append(pw), raws.append(raw), boxes.append(box), refs.append(q)
  pws, boxes = jnp.asarray(np.stack(pws)), jnp.asarray(np.stack(boxes), jnp.float32)
  np.testing.assert_allclose(np.asarray(G.dewhiten(bfm, pws)), np.stack(raws), rtol=1e-4, atol=1e-6)
  back = np.asarray(crop.crop_to_image(G.landmarks3d(bfm, pws), boxes))
  for b, q in zip(back, refs):
    tol = 2e-4 * np.ptp(q[:, :2], 0).max()
    np.testing.assert_allclose(b, q, atol=tol)  # x, y and z


def test_mat_to_params_bad_input():
  bfm = fake_model()
  ok = {"Pose_Para": np.ones((1, 7)), "Shape_Para": np.zeros((199, 1)), "Exp_Para": np.zeros((29, 1))}
  mat_layout.mat_to_params(ok, [1, 1, 100, 100], 450, bfm)
  for bad_mat, msg in [({**ok, "Pose_Para": np.ones(6)}, "Pose_Para"), ({**ok, "Exp_Para": np.zeros(5)}, "Exp_Para"),
                       ({k: v for k, v in ok.items() if k != "Shape_Para"}, "Shape_Para"),
                       ({**ok, "Pose_Para": np.full(7, np.nan)}, "finite")]:
    with pytest.raises(ValueError, match=msg):
      mat_layout.mat_to_params(bad_mat, [1, 1, 100, 100], 450, bfm)


def test_mat_to_params_residual_on_shared(bfm, aflw_mats, capsys):
  """Converted params reproduce pt3d_68 through the benchmark crop box up to the 40/10 truncation (~0.9 %), and
  resemble (not equal) 2DASL's released predictions."""
  import jax
  import jax.numpy as jnp
  from jface.core import geometry as G

  @jax.jit
  def project(pw, boxes):  # -> image landmarks (N, 68, 2), yaw (N,)
    return crop.crop_to_image(G.landmarks2d(bfm, pw), boxes), G.pose_angles(bfm, pw)[:, 0]

  report = []
  for split, (meta, mats) in aflw_mats.items():
    n = len(mats)
    pw = np.stack([mat_layout.mat_to_params(m, b, 450, bfm) for m, b in zip(mats, meta["roi_box"])])
    both = np.concatenate([pw, meta["released_2dasl_params"]])
    boxes = jnp.asarray(np.tile(meta["roi_box"], (2, 1)))
    lm_all, yaw_all = (np.asarray(a) for a in project(jnp.asarray(both), boxes))
    lm, rel, yaw, yaw_rel = lm_all[:n], lm_all[n:], yaw_all[:n], yaw_all[n:]
    gt = np.stack([m["pt3d_68"][:2].T for m in mats])
    res = nme(lm, gt)
    vs_rel = nme(lm, rel)
    report.append(f"{split}: residual NME mean {res.mean():.3f} median {np.median(res):.3f} "
                  f"p5-p95 {np.percentile(res, 5):.3f}-{np.percentile(res, 95):.3f} max {res.max():.3f} %; "
                  f"vs released 2DASL median {np.median(vs_rel):.2f} %, yaw diff median "
                  f"{np.median(np.abs(yaw - yaw_rel)):.1f} deg")
    assert res.mean() < 1.2 and np.percentile(res, 95) < 1.8 and res.max() < 3.0, report[-1]
    assert np.median(vs_rel) < 4.0 and np.median(np.abs(yaw - yaw_rel)) < 5.0, report[-1]
    wrapped = (meta["yaw"] + 180) % 360 - 180
    np.testing.assert_allclose([mat_layout.pose_para_yaw(m["Pose_Para"]) for m in mats], wrapped, atol=1e-3)
  with capsys.disabled():
    print("\n  " + "\n  ".join(report))


def test_mat_layout_source(bfm, dev_dir, tmp_path):
  meta = common.load_meta(str(dev_dir / "meta.npz"))
  src = mat_layout.MatLayoutSource(str(dev_dir), bfm)
  assert len(src) == 200 and src.source == "aflw2000_3d"
  assert [os.path.basename(n) for n in src.names] == sorted(meta["names"])
  by_meta = mat_layout.MatLayoutSource(str(dev_dir), bfm, roi_boxes=str(dev_dir / "meta.npz"))
  for i in (0, 57, -1):
    ex = src[i]
    check_contract(ex)
    j = list(meta["names"]).index(ex["name"])
    assert ex["has_params"] and ex["landmarks_mask"].all()
    np.testing.assert_array_equal(ex["roi_box"], meta["roi_box"][j])
    np.testing.assert_allclose(ex["gt_pts68"], meta["pts68"][j], atol=1e-4)
    np.testing.assert_allclose(ex["landmarks"], crop.image_to_crop(meta["pts68"][j][:2].T, meta["roi_box"][j]),
                               atol=1e-3)
    assert abs(ex["yaw"] - ((meta["yaw"][j] + 180) % 360 - 180)) < 1e-3
    other = by_meta[i]
    np.testing.assert_array_equal(other["params"], ex["params"])
    np.testing.assert_array_equal(other["image"], ex["image"])
  assert not mat_layout.MatLayoutSource(str(dev_dir), None)[0]["has_params"]
  with pytest.raises(IndexError):
    src[200]
  # 300W-LP-like .mat without pt3d_68: the box comes from the fit's projected landmarks
  n = meta["names"][0]
  mat = scipy.io.loadmat(str(dev_dir / "AFLW2000" / n.replace(".jpg", ".mat")))
  scipy.io.savemat(str(tmp_path / "a.mat"), {k: mat[k] for k in ("Pose_Para", "Shape_Para", "Exp_Para")})
  os.symlink(dev_dir / "AFLW2000" / n, tmp_path / "a.jpg")
  ex = mat_layout.MatLayoutSource(str(tmp_path), bfm)[0]
  check_contract(ex)
  assert iou(ex["roi_box"], meta["roi_box"][0]) > 0.8  # measured 0.81-1.0, median 0.975 over the 1000
  with pytest.raises(BadExample, match="no pt3d_68"):
    mat_layout.MatLayoutSource(str(tmp_path), None)[0]


# --------------------------------------------------------------------------------- crops layout

def test_crops_layout_source(bfm, dev_dir, train_dir, tmp_path):
  meta = common.load_meta(str(dev_dir / "meta.npz"))
  src = crops_layout.CropsLayoutSource(str(dev_dir), bfm)
  mats = mat_layout.MatLayoutSource(str(dev_dir), bfm, names=list(meta["names"]))
  assert len(src) == 200
  for i in (0, 123):
    ex = src[i]
    check_contract(ex)
    np.testing.assert_array_equal(ex["landmarks"], meta["fan_pts68_crop"][i])
    assert ex["landmarks_mask"].all() and ex["yaw"] == meta["yaw"][i]
    np.testing.assert_array_equal(ex["gt_pts68"], meta["pts68"][i])
    np.testing.assert_array_equal(ex["gt_pts68_reannotated"], meta["pts68_reannotated"][i])
    assert ex["has_params"]
    np.testing.assert_array_equal(ex["params"], mats[i]["params"])  # labels from the .mat, not the predictions
    assert np.abs(ex["params"] - meta["released_2dasl_params"][i]).max() > 1e-3
    assert np.abs(ex["image"].astype(float) - mats[i]["image"]).mean() < 3.0
  assert not crops_layout.CropsLayoutSource(str(dev_dir), bfm, labels="none")[0]["has_params"]
  assert crops_layout.CropsLayoutSource(str(train_dir), bfm)[5]["has_params"]
  # without AFLW2000/ beside the crops: no labels (and 'require' fails per example)
  (tmp_path / "crops").mkdir()
  os.symlink(dev_dir / "crops" / meta["names"][0], tmp_path / "crops" / meta["names"][0])
  np.savez(tmp_path / "meta.npz", **{k: v[:1] for k, v in meta.items()})
  ex = crops_layout.CropsLayoutSource(str(tmp_path), bfm)[0]
  check_contract(ex)
  assert not ex["has_params"]
  with pytest.raises(BadExample, match="missing file"):
    crops_layout.CropsLayoutSource(str(tmp_path), bfm, labels="require")[0]


# ------------------------------------------------------------------------------------------ wild

def test_aflw21_to_ibug68():
  pts = np.stack([np.arange(21) * 10.0, np.arange(21) * 10.0 + 5])
  pts[:, 3] = [-1, 452]  # invisible (x = -1)
  out, mask = wild.aflw21_to_ibug68(pts)
  want = {17: 0, 19: 1, 21: 2, 24: 4, 26: 5, 36: 6, 39: 8, 42: 9, 45: 11, 2: 12, 31: 13, 30: 14, 35: 15, 14: 16,
          48: 17, 54: 19, 8: 20}
  assert set(np.nonzero(mask)[0]) == set(want)
  for j, k in want.items():
    np.testing.assert_array_equal(out[j], pts[:, k])
  assert not out[~mask].any()
  _, m2 = wild.aflw21_to_ibug68(pts.T, ears=False)
  assert set(np.nonzero(m2)[0]) == set(want) - {2, 14}


def test_aflw21_mapping_matches_aflw2000_fits(aflw_mats):
  """AFLW2000-3D .mat files hold the AFLW 21 points (pt2d) and pt3d_68: each mapped pair is close."""
  d, n = [], 0
  for meta, mats in aflw_mats.values():
    for m in mats:
      if m["pt2d"].shape != (2, 21):
        continue  # one file has 23 points
      p68, mask = wild.aflw21_to_ibug68(m["pt2d"])
      g = m["pt3d_68"][:2].T
      sz = np.sqrt(np.prod(g.max(0) - g.min(0)))
      dist = np.full(68, np.nan)
      dist[mask] = np.linalg.norm(p68[mask] - g[mask], axis=1) / sz
      d.append(dist[wild.AFLW21_TO_IBUG68[wild.AFLW21_TO_IBUG68 >= 0]])
      n += 1
  med = np.nanmedian(np.array(d), 0)
  assert n >= 990 and np.all(med < 0.045), med  # measured 0.018-0.039


def test_aflw_wild_source(wild_dir):
  src = wild.AFLWWildSource(str(wild_dir))
  meta = src.meta
  assert len(src) == len(meta["names"])
  frontal = np.nonzero(np.abs(meta["yaw"]) < 15)[0][:60]
  order = []
  for i in frontal:
    ex = src[int(i)]
    check_contract(ex)
    assert not ex["has_params"] and ex["source"] == "aflw_wild"
    vis = meta["pts21"][i][0] != -1
    mapped = vis & (wild.AFLW21_TO_IBUG68 >= 0)
    assert ex["landmarks_mask"].sum() == mapped.sum()
    lm, mk = ex["landmarks"], ex["landmarks_mask"]
    assert np.all((lm[mk] > -5) & (lm[mk] < 125))
    # geometric relations in the crop: brow above eye above nose tip above mouth corner above chin; left < right
    chain = [19, 36, 30, 48, 8]
    if mk[chain].all():
      order.append(np.all(np.diff(lm[chain, 1]) > 0))
    if mk[[17, 26, 36, 45, 48, 54]].all():
      order.append(lm[17, 0] < lm[26, 0] and lm[36, 0] < lm[45, 0] and lm[48, 0] < lm[54, 0])
  assert len(order) >= 40 and np.mean(order) > 0.9, np.mean(order)


# -------------------------------------------------------------------------- generic folder + CSV

def test_landmarks_csv_roundtrip(tmp_path):
  rng = np.random.default_rng(4)
  pts = rng.uniform(1, 300, (3, 68, 2)).astype(np.float32)
  pts[1, 5] = np.nan
  path = str(tmp_path / "lm.csv")
  wild.write_landmarks_csv(path, ["a.jpg", "sub/b, c.png", "d.jpg"][:2], pts[:2])
  wild.write_landmarks_csv(path, ["d.jpg"], pts[2:], append=True)
  names, back = wild.read_landmarks_file(path)
  assert names == ["a.jpg", "sub/b, c.png", "d.jpg"]
  np.testing.assert_allclose(back, pts, atol=6e-4)
  assert np.isnan(back[1, 5]).all() and np.isfinite(back[0]).all()
  with open(path) as f:
    lines = f.read().splitlines()
  assert lines[0].startswith("#") and lines[1].startswith("name,x0,y0,x1") and len(lines) == 5
  np.savez(tmp_path / "lm.npz", names=np.array(names), landmarks=back)
  n2, b2 = wild.read_landmarks_file(str(tmp_path / "lm.npz"))
  assert n2 == names
  np.testing.assert_array_equal(b2, back)
  with open(tmp_path / "bad.csv", "w") as f:
    f.write("name,x0\nz.jpg,1,2,3\n")
  with pytest.raises(ValueError, match=r"bad\.csv: row 2 \('z\.jpg'\) has 4 fields"):
    wild.read_landmarks_file(str(tmp_path / "bad.csv"))


def test_folder_source(tmp_path):
  rng = np.random.default_rng(5)
  h, w = 240, 200
  img = np.zeros((h, w, 3), np.uint8)
  pts = np.stack([rng.uniform(60, 140, 68), rng.uniform(70, 150, 68)], 1)
  pts[0], pts[1] = (60, 70), (140, 150)  # landmark bbox 80 x 80 -> box side round(113.1) = 113
  r, c = int(pts[2, 1]) - 1, int(pts[2, 0]) - 1
  pts[2] = (c + 1, r + 1)  # a bright pixel at landmark 2 (1-based: pixel [r, c] is at (c + 1, r + 1))
  img[r, c] = 255
  cv2.imwrite(str(tmp_path / "f.png"), img)
  cv2.imwrite(str(tmp_path / "g.png"), img)
  pts_g = np.full((68, 2), np.nan)
  pts_g[:3] = pts[:3]
  wild.write_landmarks_csv(str(tmp_path / "lm.csv"), ["f.png", "g.png", "missing.png", "h.png"],
                           np.stack([pts, pts_g, pts, np.full((68, 2), np.nan)]))
  cv2.imwrite(str(tmp_path / "h.png"), img)
  src = wild.FolderSource(str(tmp_path), str(tmp_path / "lm.csv"))
  assert len(src) == 4
  ex = src[0]
  check_contract(ex)
  np.testing.assert_array_equal(ex["roi_box"], common.roi_box_from_landmarks(pts, image_shape=img.shape))
  np.testing.assert_allclose(crop.crop_to_image(ex["landmarks"], ex["roi_box"]), pts, atol=1e-3)
  x, y = ex["landmarks"][2]
  patch = ex["image"][int(round(y)) - 2:int(round(y)) + 1, int(round(x)) - 2:int(round(x)) + 1]
  assert patch.max() > 100  # the bright pixel lands within a pixel of its landmark
  ex_g = src[1]
  assert ex_g["landmarks_mask"].sum() == 3 and not ex_g["has_params"]
  with pytest.raises(BadExample, match="missing.png"):
    src[2]
  with pytest.raises(BadExample, match="no usable landmarks"):
    src[3]
  full = wild.FolderSource(str(tmp_path), str(tmp_path / "lm.csv"), roi="full")[0]
  np.testing.assert_array_equal(full["roi_box"], [1, 1, w, h])
  check_contract(full)


# ---------------------------------------------------------------------------------- pseudo-label

def test_pseudo_label_missing_dlib(monkeypatch, tmp_path, capsys):
  monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
  with pytest.raises(pseudo_label.MissingDlibError) as e:
    pseudo_label.load_dlib()
  assert "\n" not in str(e.value) and "pip install" in str(e.value)
  assert pseudo_label.main([str(tmp_path), str(tmp_path / "out.csv")]) == 2
  assert "error: pseudo-labelling needs dlib" in capsys.readouterr().out


def test_pseudo_label_resumes(tmp_path):
  img = np.zeros((20, 20, 3), np.uint8)
  for n in ("a.jpg", "b.jpg", "c.png"):
    cv2.imwrite(str(tmp_path / n), img)
  out = str(tmp_path / "out.csv")
  assert pseudo_label.pending_images(str(tmp_path), out) == ["a.jpg", "b.jpg", "c.png"]
  wild.write_landmarks_csv(out, ["b.jpg"], np.ones((1, 68, 2)), append=True)
  assert pseudo_label.pending_images(str(tmp_path), out) == ["a.jpg", "c.png"]
  l, t, r, b = pseudo_label.fallback_box(120, 100)
  assert (r - l) == 70 and (l + r) / 2 == 50 and (t + b) / 2 == 65


# ----------------------------------------------------------------------------------- bad inputs

def test_bad_examples_are_one_line(tmp_path):
  rng = np.random.default_rng(6)
  ok, data = cv2.imencode(".jpg", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
  (tmp_path / "x.jpg").write_bytes(data.tobytes()[: len(data) // 2])  # truncated
  (tmp_path / "x.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
  (tmp_path / "y.jpg").write_bytes(data.tobytes())
  (tmp_path / "y.mat").write_bytes(b"garbage")
  (tmp_path / "z.jpg").write_bytes(data.tobytes())  # no .mat
  with pytest.raises(BadExample, match=r"x\.jpg: truncated JPEG") as e:
    common.read_image(str(tmp_path / "x.jpg"))
  assert "\n" not in str(e.value)
  with pytest.raises(BadExample, match=r"x\.mat: cannot read \.mat") as e:
    common.read_mat(str(tmp_path / "x.mat"))
  assert "\n" not in str(e.value)
  with pytest.raises(BadExample, match=r"nope\.png: cannot read file"):
    common.read_image(str(tmp_path / "nope.png"))
  src = mat_layout.MatLayoutSource(str(tmp_path), fake_model())
  assert src.names == ["x.jpg", "y.jpg", "z.jpg"]
  counter = common.ErrorCounter()
  got = [counter.get(src, i) for i in range(len(src))]
  assert got == [None, None, None] and counter.count == 3
  assert all("\n" not in m for m in counter.messages)
  assert "x.mat" in counter.messages[0] and "y.mat" in counter.messages[1] and "z.mat: missing" in counter.messages[2]
  assert counter.summary() == f"3 bad examples skipped ({src.source}: 3)"


# ------------------------------------------------------------------------------------------- TFDS

def test_tfds_data_source_with_mock_data():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=2):
    for builder in tfds_sources.BUILDERS:
      src = tfds_sources.TFDSSource(builder, model=fake_model())
      assert len(src) == 2
      ex = src[1]
      check_contract(ex)
      assert ex["name"] == f"{builder}/train/1" and ex["source"] == builder
      assert bool(ex["has_params"]) == (builder == "the300w_lp")
      chex.assert_shape(ex["gt_pts68"], (3, 68))
  assert "tensorflow" not in sys.modules  # data_source needs no TensorFlow


def test_tfds_unprepared_is_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match="tfds build aflw2k3d --file_format=array_record") as e:
    tfds_sources.TFDSSource("aflw2k3d", data_dir=str(tmp_path))
  assert "\n" not in str(e.value)


def test_tfds_records_from_real_fits(bfm, dev_dir):
  """Records built as the TFDS builders build them (from the .mat/.jpg) map like the .mat layout."""
  meta = common.load_meta(str(dev_dir / "meta.npz"))
  names = list(meta["names"][:2])
  recs_2k, recs_lp = [], []
  for n in names:
    mat = common.read_mat(str(dev_dir / "AFLW2000" / n.replace(".jpg", ".mat")))
    img = common.read_image(str(dev_dir / "AFLW2000" / n))
    xyz = mat["pt3d_68"].T.astype(np.float32)
    recs_2k.append({"image": img, "landmarks_68_3d_xy_normalized": xyz[:, :2] / 450.0,
                    "landmarks_68_3d_z": xyz[:, 2:]})
    recs_lp.append({"image": img, "pose_params": mat["Pose_Para"].reshape(-1).astype(np.float32),
                    "shape_params": mat["Shape_Para"].reshape(-1).astype(np.float32),
                    "exp_params": mat["Exp_Para"].reshape(-1).astype(np.float32)})
  ref = mat_layout.MatLayoutSource(str(dev_dir), bfm, names=names)
  src = tfds_sources.TFDSSource("aflw2k3d", data_source=recs_2k)
  import jax.numpy as jnp
  from jface.core import geometry as G
  lp = tfds_sources.TFDSSource("the300w_lp", model=bfm, data_source=recs_lp)
  for i in range(2):
    ex, r = src[i], ref[i]
    check_contract(ex)
    np.testing.assert_array_equal(ex["roi_box"], r["roi_box"])
    np.testing.assert_array_equal(ex["image"], r["image"])
    np.testing.assert_allclose(ex["landmarks"], r["landmarks"], atol=1e-3)
    np.testing.assert_allclose(ex["gt_pts68"], r["gt_pts68"], atol=1e-3)
    e2 = lp[i]
    check_contract(e2)
    assert e2["has_params"] and abs(e2["yaw"] - r["yaw"]) < 1e-3
    assert iou(e2["roi_box"], r["roi_box"]) > 0.8
    np.testing.assert_allclose(np.asarray(G.landmarks2d(bfm, jnp.asarray(e2["params"]))), e2["landmarks"], atol=2e-2)
    back = crop.crop_to_image(e2["landmarks"], e2["roi_box"])
    assert nme(back[None], r["gt_pts68"][:2].T[None])[0] < 2.5
  with pytest.raises(ValueError, match="needs a model"):
    tfds_sources.TFDSSource("the300w_lp", data_source=recs_lp)
