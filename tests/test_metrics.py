"""Tests for jface.eval.metrics: plain-numpy references, closed forms, and the AFLW2000-3D protocol oracle."""
from __future__ import annotations

import math

import numpy as np
import pytest

from jface.eval import metrics as M
from jface.eval import report


def _rot(axis, deg):
  a = np.radians(deg)
  c, s = math.cos(a), math.sin(a)
  i, j = [(1, 2), (2, 0), (0, 1)][axis]
  r = np.eye(3)
  r[i, i] = r[j, j] = c
  r[i, j], r[j, i] = -s, s
  return r


def _ref_nme(pred, gt, mask):
  """Loop reference: masked mean distance / sqrt(w h) of the masked GT box, percent."""
  out = []
  for p, g, m in zip(pred, gt, mask):
    g2 = g[m][:, :2]
    w, h = g2[:, 0].max() - g2[:, 0].min(), g2[:, 1].max() - g2[:, 1].min()
    out.append(100 * np.mean([np.linalg.norm(p[k, :2] - g[k, :2]) for k in np.where(m)[0]]) / math.sqrt(w * h))
  return np.array(out)


# ------------------------------------------------------------------------------------ landmark NME

def test_nme_2d_shift_closed_form():
  side, d = 80.0, 3.0
  g = np.stack(np.meshgrid(np.linspace(10, 10 + side, 5), np.linspace(5, 5 + side, 5)), -1).reshape(1, 25, 2)
  np.testing.assert_allclose(M.nme_2d(g + [d, 0.0], g), [100 * d / side])
  # the box is that of the GT: a non-square box of w x h gives 100 d / sqrt(w h)
  g2 = g * [1.0, 0.5]
  np.testing.assert_allclose(M.nme_2d(g2 + [0.0, d], g2), [100 * d / math.sqrt(side * side / 2)])


def test_nme_2d_matches_reference_with_mask():
  rng = np.random.default_rng(0)
  gt = rng.uniform(0, 100, (4, 68, 2))
  pred = gt + rng.normal(0, 2, gt.shape)
  mask = rng.uniform(size=(4, 68)) > 0.3
  pred[0, ~mask[0]] = np.nan  # NaN at masked-out points is ignored
  np.testing.assert_allclose(M.nme_2d(pred, gt, mask), _ref_nme(pred, gt, mask), rtol=1e-12)
  np.testing.assert_allclose(M.nme_2d(pred[1:], gt[1:]), _ref_nme(pred[1:], gt[1:], np.ones((3, 68), bool)))
  assert np.isnan(M.nme_2d(pred[:1], gt[:1], np.zeros((1, 68), bool)))[0]


def test_nme_3d_matches_reference_and_is_z_offset_invariant():
  rng = np.random.default_rng(1)
  gt = rng.uniform(0, 100, (3, 68, 3))
  pred = gt + rng.normal(0, 2, gt.shape)
  ref = []
  for p, g in zip(pred, gt):
    p, g = p.copy(), g.copy()
    p[:, 2] -= p[:, 2].min()
    g[:, 2] -= g[:, 2].min()
    box = math.sqrt(np.ptp(g[:, 0]) * np.ptp(g[:, 1]))
    ref.append(100 * np.linalg.norm(p - g, axis=1).mean() / box)
  np.testing.assert_allclose(M.nme_3d(pred, gt), ref, rtol=1e-12)
  np.testing.assert_allclose(M.nme_3d(pred + [0, 0, 37.0], gt), ref, rtol=1e-12)
  np.testing.assert_allclose(M.nme_3d(pred + [0, 0, 37.0], gt, z_align="mean"), M.nme_3d(pred, gt, z_align="mean"))
  # a pure z shift of d on a GT box of side L: 100 d / L without alignment, 0 with it
  g = np.array([[[0.0, 0, 0], [50, 0, 5], [0, 50, 2], [50, 50, 1]]])
  np.testing.assert_allclose(M.nme_3d(g + [0, 0, 4.0], g, z_align=None), [100 * 4.0 / 50])
  np.testing.assert_allclose(M.nme_3d(g + [0, 0, 4.0], g), [0.0], atol=1e-12)
  with pytest.raises(ValueError, match="z_align"):
    M.nme_3d(g, g, z_align="median")


def test_nme_bad_shapes():
  with pytest.raises(ValueError, match="shape"):
    M.nme_2d(np.zeros((2, 68, 2)), np.zeros((2, 67, 2)))
  with pytest.raises(ValueError, match="points"):
    M.nme_3d(np.zeros((2, 68, 2)), np.zeros((2, 68, 2)))


def test_nme_dense_reference_and_normaliser():
  rng = np.random.default_rng(2)
  gt = rng.uniform(0, 200, (2, 500, 3))
  pred = gt + rng.normal(0, 1, gt.shape)
  box = np.array([math.sqrt(np.ptp(g[:, 0]) * np.ptp(g[:, 1])) for g in gt])
  d2 = np.linalg.norm(pred[..., :2] - gt[..., :2], axis=-1).mean(-1)
  np.testing.assert_allclose(M.nme_dense(pred, gt, dims=2), 100 * d2 / box, rtol=1e-12)
  np.testing.assert_allclose(M.nme_dense(pred, gt, normaliser=[10.0, 20.0], dims=2), 100 * d2 / [10, 20])
  zal = lambda a: a - [0, 0, 1] * a[..., 2:].min(-2, keepdims=True)
  d3 = np.linalg.norm(zal(pred) - zal(gt), axis=-1).mean(-1)
  np.testing.assert_allclose(M.nme_dense(pred, gt), 100 * d3 / box, rtol=1e-12)


# ----------------------------------------------------------------------------------------- yaw bins

def test_yaw_bin_summary_edges_failures_and_open_last_bin():
  err = np.array([1.0, 2.0, 3.0, 4.0, 10.0, np.nan, 6.0, 5.0])
  yaw = np.array([0.0, -30.0, 30.1, -60.0, 95.0, 10.0, 61.0, np.nan])
  s = M.yaw_bin_summary(err, yaw)
  assert s["counts"] == [2, 2, 2] and s["failed"] == [1, 0, 0]
  np.testing.assert_allclose(s["bins"], [1.5, 3.5, 8.0])
  assert s["mean_of_bins"] == pytest.approx(13.0 / 3)
  assert s["std_of_bins"] == pytest.approx(np.std([1.5, 3.5, 8.0]))
  assert s["overall"] == pytest.approx(np.mean([1, 2, 3, 4, 10, 6, 5]))
  assert (s["n"], s["n_failed"], s["n_unbinned"]) == (7, 1, 1)
  assert s["labels"] == ["[0, 30]", "(30, 60]", "(60, 90+]"]
  empty = M.yaw_bin_summary([1.0, 3.0], [5.0, 70.0])
  assert empty["counts"] == [1, 0, 1] and np.isnan(empty["bins"][1]) and empty["mean_of_bins"] == 2.0
  with pytest.raises(ValueError, match="yaws"):
    M.yaw_bin_summary([1.0], [1.0, 2.0])


# ----------------------------------------------------------------------------- AFLW2000-3D protocol

def test_subset_mask_synthetic_names():
  names = np.array(["image00001.jpg", "image02139.jpg", "/x/y/image03862.jpg", "image03863.jpg"])
  np.testing.assert_array_equal(M.subset_mask(names, "1998"), [True, False, False, True])
  np.testing.assert_array_equal(M.subset_mask(names, "2000"), [True] * 4)
  with pytest.raises(ValueError, match="subset"):
    M.subset_mask(names, "1999")


def test_aflw2000_nme_synthetic_roi_and_failures():
  rng = np.random.default_rng(3)
  n = 4
  crop = rng.uniform(20, 100, (n, 68, 3))
  roi = np.array([[10.0, 20.0, 250.0, 260.0]] * n)  # scale 2 both ways
  img = np.concatenate([crop[..., :2] * 2 + [10.0, 20.0], crop[..., 2:] * 2], -1)
  gt = img + rng.normal(0, 1.5, img.shape)
  names = ["image00001.jpg", "image02139.jpg", "image00003.jpg", "image00004.jpg"]
  yaw = np.array([5.0, 40.0, 70.0, -20.0])
  pred = crop.copy()
  pred[3, 7] = np.nan  # a failed prediction
  r = M.aflw2000_nme(pred, roi, np.swapaxes(gt, 1, 2), yaw, names, subset="1998")
  keep = [0, 2, 3]
  np.testing.assert_array_equal(r["mask"], [True, False, True, True])
  ref = _ref_nme(img[keep], gt[keep], np.ones((3, 68), bool))
  np.testing.assert_allclose(r["nme2d"][:2], ref[:2], rtol=1e-5)
  assert np.isnan(r["nme2d"][2]) and r["summary2d"]["n_failed"] == 1
  assert r["summary2d"]["counts"] == [1, 0, 1] and list(r["names"]) == [names[i] for i in keep]
  np.testing.assert_allclose(r["nme3d"][:2], M.nme_3d(img[keep][:2], gt[keep][:2]), rtol=1e-5)
  r2 = M.aflw2000_nme(crop[..., :2], roi, np.swapaxes(gt[..., :2], 1, 2), yaw, names, subset="2000")
  assert r2["nme2d"].shape == (4,) and "nme3d" not in r2
  with pytest.raises(ValueError, match="gt must be"):
    M.aflw2000_nme(crop, roi, gt, yaw, names)


@pytest.fixture(scope="module")
def dev_protocol(dev_dir, bfm):
  from jface.core import geometry
  meta = dict(np.load(dev_dir / "meta.npz"))
  pred = np.asarray(geometry.landmarks3d(bfm, meta["released_2dasl_params"]))
  zero = np.asarray(geometry.landmarks2d(bfm, np.zeros_like(meta["released_2dasl_params"])))
  return meta, pred, zero


def test_protocol_oracle_dev(dev_protocol):
  meta, pred, zero = dev_protocol
  args = (meta["roi_box"],)
  kw = dict(yaw=meta["yaw"], names=meta["names"])
  ori = M.aflw2000_nme(pred[..., :2], *args, gt=meta["pts68"], **kw)["summary2d"]
  np.testing.assert_allclose(ori["bins"], [2.6548, 3.3461, 4.3882], atol=1e-3)
  assert ori["mean_of_bins"] == pytest.approx(3.4631, abs=1e-3)
  assert ori["overall"] == pytest.approx(3.2610, abs=1e-3)
  assert ori["n"] == 200 and ori["n_failed"] == 0
  re = M.aflw2000_nme(pred[..., :2], *args, gt=meta["pts68_reannotated"], **kw)["summary2d"]
  np.testing.assert_allclose(re["bins"], [2.3222, 2.7597, 3.7699], atol=1e-3)
  assert re["mean_of_bins"] == pytest.approx(2.9506, abs=1e-3)
  fan = M.aflw2000_nme(meta["fan_pts68_crop"], *args, gt=meta["pts68"], **kw)["summary2d"]
  assert fan["mean_of_bins"] == pytest.approx(5.4962, abs=1e-3)
  mean_face = M.aflw2000_nme(zero, *args, gt=meta["pts68"], **kw)["summary2d"]
  assert mean_face["mean_of_bins"] == pytest.approx(24.7071, abs=1e-3)


def test_protocol_3d_dev(dev_protocol):
  meta, pred, _ = dev_protocol
  r = M.aflw2000_nme(pred, meta["roi_box"], meta["pts68"], meta["yaw"], meta["names"])
  # 3D error >= 2D error image by image (same normaliser, one more coordinate), and the z sign is right:
  # flipping the predicted depth makes it far worse.
  assert np.all(r["nme3d"] >= r["nme2d"] - 1e-9)
  flipped = pred * [1, 1, -1]
  rf = M.aflw2000_nme(flipped, meta["roi_box"], meta["pts68"], meta["yaw"], meta["names"])
  assert rf["summary3d"]["mean_of_bins"] > 3 * r["summary3d"]["mean_of_bins"]


# -------------------------------------------------------------------------------- AFLW 21 points

def test_pts68_to_aflw21_mapping():
  pts = np.arange(68 * 2, dtype=np.float64).reshape(68, 2)
  out = M.pts68_to_aflw21(pts)
  assert out.shape == (21, 2)
  np.testing.assert_allclose(out[0], pts[17])
  np.testing.assert_allclose(out[7], pts[36:42].mean(0))
  np.testing.assert_allclose(out[14], pts[30])
  np.testing.assert_allclose(out[18], pts[60:68].mean(0))
  np.testing.assert_allclose(out[20], pts[8])
  import jax.numpy as jnp
  np.testing.assert_allclose(np.asarray(M.pts68_to_aflw21(jnp.asarray(pts[None], jnp.float32)))[0], out, rtol=1e-6)


def test_aflw21_nme_reference():
  rng = np.random.default_rng(4)
  gt = rng.uniform(0, 300, (3, 21, 2))
  vis = rng.uniform(size=(3, 21)) > 0.3
  pred = gt + rng.normal(0, 3, gt.shape)
  gt_nan = np.where(vis[..., None], gt, np.nan)
  np.testing.assert_allclose(M.aflw21_nme(pred, gt_nan, vis), _ref_nme(pred, gt, vis), rtol=1e-12)
  vis2 = vis.copy()
  vis2[:, [12, 16]] = False
  np.testing.assert_allclose(M.aflw21_nme(pred, gt_nan, vis, drop_ears=True), _ref_nme(pred, gt, vis2))
  meta = np.swapaxes(np.where(vis[..., None], gt, -1.0), 1, 2)
  g2, v2 = M.aflw21_from_meta(meta)
  np.testing.assert_array_equal(v2, vis)
  np.testing.assert_allclose(g2[vis], gt[vis])


def test_aflw21_order_matches_data(wild_dir, bfm):
  """The mapped BFM mean landmarks fit visible AFLW annotations of near-frontal faces with a similarity."""
  meta = np.load(wild_dir / "meta.npz")
  gt, vis = M.aflw21_from_meta(meta["pts21"])
  sel = np.where((np.abs(meta["yaw"]) < 10) & vis.all(1))[0][:200]
  assert len(sel) >= 50
  u = np.asarray(bfm.u_base, np.float64).reshape(68, 3)
  tmpl = M.pts68_to_aflw21(u[:, :2] * [1, -1])  # model y is up, image y is down
  za = (tmpl - tmpl.mean(0)) @ [1, 1j]
  zb = (gt[sel] - gt[sel].mean(1, keepdims=True)) @ [1, 1j]
  c = (zb @ np.conj(za)) / (np.conj(za) @ za)  # per-image complex similarity (no reflection)
  res = np.abs(c[:, None] * za - zb) / M.box_size(gt[sel])[:, None] * 100
  med = np.median(res, 0)
  assert np.all(med < 12), med
  non_ear = np.setdiff1d(np.arange(21), M.AFLW21_EARS)
  assert np.all(med[non_ear] < 7), med


def test_aflw_nme_end_to_end():
  rng = np.random.default_rng(5)
  crop = rng.uniform(20, 100, (2, 68, 2))
  roi = np.array([[0.0, 0.0, 240.0, 240.0], [5.0, 5.0, 65.0, 65.0]])
  img = crop * np.array([2.0, 0.5])[:, None, None] + roi[:, None, :2]
  gt21 = M.pts68_to_aflw21(img) + 1.0
  pts21 = np.swapaxes(gt21, 1, 2).copy()
  pts21[0, :, 3] = -1  # invisible
  r = M.aflw_nme(crop, roi, pts21, yaw=[10.0, 50.0])
  vis = np.ones((2, 21), bool)
  vis[0, 3] = False
  np.testing.assert_allclose(r["nme"], _ref_nme(M.pts68_to_aflw21(img), gt21, vis), rtol=1e-5)
  assert r["summary"]["counts"] == [1, 1, 0]


# --------------------------------------------------------------------------- ICP / reconstruction

@pytest.fixture(scope="module")
def surface():
  """A bumpy, asymmetric face-like height field, (V, 3)."""
  rng = np.random.default_rng(6)
  xy = rng.uniform(-1, 1, (1500, 2))
  z = 0.5 * np.exp(-4 * (xy ** 2).sum(1)) + 0.2 * xy[:, 0] ** 2 + 0.1 * xy[:, 1] ** 3 + 0.05 * xy[:, 0]
  return np.concatenate([xy, z[:, None]], 1) * 50.0


def test_procrustes_closed_form():
  rng = np.random.default_rng(7)
  src = rng.normal(size=(30, 3))
  r = _rot(0, 30) @ _rot(1, -50) @ _rot(2, 100)
  t = np.array([3.0, -2.0, 7.0])
  r1, t1, s1 = M.procrustes(src, src @ r.T + t)
  np.testing.assert_allclose(r1, r, atol=1e-12)
  np.testing.assert_allclose(t1, t, atol=1e-12)
  assert s1 == 1.0
  r2, t2, s2 = M.procrustes(src, 2.5 * src @ r.T + t, scale=True)
  np.testing.assert_allclose([s2], [2.5])
  np.testing.assert_allclose(r2, r, atol=1e-12)
  np.testing.assert_allclose(t2, t, atol=1e-12)
  assert np.linalg.det(M.procrustes(src, src * [1, 1, -1])[0]) == pytest.approx(1.0)  # never a reflection


def test_rigid_icp_recovers_motion(surface):
  r = _rot(0, 8) @ _rot(1, -12) @ _rot(2, 5)
  t = np.array([10.0, -4.0, 25.0])
  dst = surface @ r.T + t
  perm = np.random.default_rng(8).permutation(len(dst))
  r1, t1, s1 = M.rigid_icp(surface, dst[perm], iters=100)
  np.testing.assert_allclose(r1, r, atol=1e-8)
  np.testing.assert_allclose(t1, t, atol=1e-6)
  assert s1 == 1.0


def test_reconstruction_nme(surface):
  r = _rot(0, 6) @ _rot(1, 10)
  moved = surface @ r.T + [5.0, 3.0, -8.0]
  assert M.reconstruction_nme(moved, surface) == pytest.approx(0.0, abs=1e-6)
  # scale changes need scale=True; rigid ICP leaves an error
  big = 1.2 * moved
  assert M.reconstruction_nme(big, surface, scale=True) == pytest.approx(0.0, abs=1e-6)
  assert M.reconstruction_nme(big, surface) > 1.0
  # a constant offset along z of a flat patch is removed by ICP; batch form, given normaliser
  flat = surface * [1, 1, 0]
  out = M.reconstruction_nme(np.stack([flat + [0, 0, 3.0], surface]), np.stack([flat, surface]), normaliser=50.0)
  np.testing.assert_allclose(out, [0.0, 0.0], atol=1e-6)
  # noise: error equals the brute-force nearest-neighbour mean when the clouds are already aligned
  rng = np.random.default_rng(9)
  pred = surface[::3] + rng.normal(0, 0.3, surface[::3].shape)
  got = M.reconstruction_nme(pred, surface, iters=0)  # no ICP step: centroids matched only
  shifted = surface + pred.mean(0) - surface.mean(0)
  nn = np.sqrt(((shifted[:, None] - pred[None]) ** 2).sum(-1)).min(1).mean()
  assert got == pytest.approx(100 * nn / M.box_size(surface), rel=1e-9)
  assert np.isnan(M.reconstruction_nme(np.stack([pred * np.nan]), np.stack([surface]))[0])
  assert M.outer_interocular(np.repeat(np.arange(68.0)[:, None], 3, 1)) == pytest.approx(9 * math.sqrt(3))


# ---------------------------------------------------------------------------------------------- CED

def test_ced_and_auc_closed_form(tmp_path):
  thr, frac = M.ced([1.0, 2.0, 3.0, np.nan], max_error=4.0, n=9)
  np.testing.assert_allclose(thr, np.arange(9) * 0.5)
  np.testing.assert_allclose(frac, [0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 0.75])
  # one image of error e: CED is a step at e, AUC = (max - e) / max
  assert M.ced_auc([2.5], max_error=10.0, n=100001) == pytest.approx(0.75, abs=1e-4)
  with pytest.raises(ValueError):
    M.ced([])
  path = report.plot_ced({"a": [1.0, 2.0, 5.0], "b": [0.5, np.nan]}, str(tmp_path / "sub" / "ced.png"))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
