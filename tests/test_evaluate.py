"""evaluate.py / jface.eval: the AFLW2000-3D oracle table, bad inputs, synthetic, AFLW-21, the protocol's pieces
(landmark input, dense errors from vertices), checkpoints: ``evaluate.py --checkpoint`` and the training loop's
``DevEvaluator`` give the same numbers (one protocol), workdirs of the pre-registry layout still load, and a
checkpoint that does not match its config is a one-line error.

The checkpoints are a tiny 2DASL CNN (RGB + FLM input, the :smoke config's synthetic face model) at its initial
state, written to a workdir directly (config.json + an orbax checkpoint, no training loop).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest

from jface.core import crop
from jface.eval import cli, metrics, protocol
from jface.eval.data import EvalError
from jface.train.checkpoint import CheckpointError
from tests.helpers.fakes import ROOT, initial_state, load_config, write_workdir

ORACLE = dict(bins=(2.6548, 3.3461, 4.3882), mean=3.4631, overall=3.2610, reannotated=2.9506, fan=5.4962)


def run_cli(argv):
  """main(argv) in-process -> (exit code, logged lines)."""
  lines = []
  rc = cli.main([str(a) for a in argv], log=lambda s="": lines.extend(str(s).splitlines()))
  return rc, lines


def load_json(out):
  with open(os.path.join(out, "results.json")) as f:
    return json.load(f)


def read_csv(out):
  with open(os.path.join(out, "per_image.csv")) as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def meta(dev_dir):
  with np.load(os.path.join(dev_dir, "meta.npz")) as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def released_npy(meta, tmp_path_factory):
  path = tmp_path_factory.mktemp("pred") / "released.npy"
  np.save(path, meta["released_2dasl_params"])
  return path


@pytest.fixture(scope="module")
def dev_run(dev_dir, bfm_dir, released_npy, tmp_path_factory):
  out = tmp_path_factory.mktemp("dev_released")
  rc, lines = run_cli(["--dataset", "aflw2000_3d", "--data_dir", dev_dir, "--predictions", released_npy,
                       "--bfm_dir", bfm_dir, "--out", out])
  return rc, lines, out


# ------------------------------------------------------------------------------------- the oracle

def test_help_subprocess():
  out = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--help"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "--predictions" in out.stdout and "--checkpoint" in out.stdout and "aflw2000_3d" in out.stdout


def test_dev_released_params_reproduce_the_oracle(dev_run, meta):
  rc, lines, out = dev_run
  assert rc == 0, lines
  res = load_json(out)
  s = res["nme_2d_68"]
  np.testing.assert_allclose(s["bins"], ORACLE["bins"], atol=1e-3)
  assert s["mean_of_bins"] == pytest.approx(ORACLE["mean"], abs=1e-3)
  assert s["overall"] == pytest.approx(ORACLE["overall"], abs=1e-3)
  assert s["n"] == 200 and res["n_failed"] == 0
  for k in ("nme_2d_68", "nme_3d_68", "subset", "gt", "n_failed", "command", "method", "checkpoint"):
    assert k in res, k
  assert res["subset"] == "1998" and res["gt"] == "original" and "--predictions" in res["command"]
  assert res["method"] is None and res["checkpoint"] is None
  assert res["nme_3d_68"]["n"] == 200 and res["nme_3d_68"]["mean_of_bins"] > s["mean_of_bins"]
  # the table is printed with the headline number; dense NME is skipped with a reason (no dense bases)
  assert any("NME 2D 68" in ln and "3.4631" in ln for ln in lines), lines
  assert any(ln.startswith("dense skipped:") and "dense" in ln for ln in lines), lines
  rows = read_csv(out)
  assert len(rows) == 200 and list(rows[0]) == ["name", "yaw", "nme_2d", "nme_3d", "status"]
  assert [r["name"] for r in rows] == list(meta["names"])
  e = np.array([float(r["nme_2d"]) for r in rows])
  assert np.mean(e) == pytest.approx(ORACLE["overall"], abs=1e-3)
  for png in ("ced.png", "best_worst.png"):
    img = cv2.imread(os.path.join(out, png))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 300, png


def test_dev_reannotated_gt(dev_dir, bfm_dir, released_npy, tmp_path):
  rc, lines = run_cli(["--data_dir", dev_dir, "--predictions", released_npy, "--gt", "reannotated",
                       "--bfm_dir", bfm_dir, "--out", tmp_path])
  res = load_json(tmp_path)
  assert rc == 0 and res["gt"] == "reannotated"
  assert res["nme_2d_68"]["mean_of_bins"] == pytest.approx(ORACLE["reannotated"], abs=1e-3)
  assert res["nme_3d_68"] is None and any("nme 3d 68 skipped" in ln for ln in lines)


def test_dev_fan_landmarks_npz(dev_dir, meta, tmp_path):
  pred = tmp_path / "fan.npz"
  np.savez(pred, names=meta["names"], landmarks=meta["fan_pts68_crop"])
  rc, _ = run_cli(["--data_dir", dev_dir, "--predictions", pred, "--out", tmp_path / "o"])
  res = load_json(tmp_path / "o")
  assert rc == 0
  assert res["nme_2d_68"]["mean_of_bins"] == pytest.approx(ORACLE["fan"], abs=1e-3)


# ------------------------------------------------------------------------------ original layout

def _copy_original(dev_dir, names, dst):
  folder = dst / "AFLW2000"
  folder.mkdir(parents=True)
  for n in names:
    stem = os.path.splitext(n)[0]
    for ext in (".jpg", ".mat"):
      shutil.copy(os.path.join(dev_dir, "AFLW2000", stem + ext), folder / (stem + ext))
  return folder


def test_original_layout_matches_and_corrupt_files_are_failures(dev_dir, bfm_dir, meta, dev_run, tmp_path):
  names = sorted(meta["names"][[0, 1, 2, 3]])
  folder = _copy_original(dev_dir, names, tmp_path / "data")
  idx = [list(meta["names"]).index(n) for n in names]
  pred = tmp_path / "p.npy"  # .npy rows follow the sorted image names of the original layout
  np.save(pred, meta["released_2dasl_params"][idx])
  ref = {r["name"]: float(r["nme_2d"]) for r in read_csv(dev_run[2])}

  rc, _ = run_cli(["--data_dir", tmp_path / "data", "--predictions", pred, "--bfm_dir", bfm_dir,
                   "--out", tmp_path / "o1"])
  assert rc == 0 and load_json(tmp_path / "o1")["layout"] == "original"
  got = {r["name"]: float(r["nme_2d"]) for r in read_csv(tmp_path / "o1")}
  assert set(got) == set(names)
  for n in names:  # the box from pt3d_68 and the yaw from Pose_Para give the benchmark numbers
    assert got[n] == pytest.approx(ref[n], abs=1e-4)

  mat = folder / (os.path.splitext(names[0])[0] + ".mat")
  mat.write_bytes(mat.read_bytes()[:200])
  jpg = folder / names[1]
  jpg.write_bytes(jpg.read_bytes()[:1000])
  rc, lines = run_cli(["--data_dir", tmp_path / "data", "--predictions", pred, "--bfm_dir", bfm_dir,
                       "--out", tmp_path / "o2"])
  res = load_json(tmp_path / "o2")
  assert rc == 0 and res["n_failed"] == 2 and res["nme_2d_68"]["n"] == 2
  assert res["failures"] == {"unreadable input": 2}
  rows = {r["name"]: r for r in read_csv(tmp_path / "o2")}
  assert rows[names[0]]["nme_2d"] == "" and ".mat" in rows[names[0]]["status"]
  assert "truncated JPEG" in rows[names[1]]["status"]
  assert float(rows[names[2]]["nme_2d"]) == pytest.approx(ref[names[2]], abs=1e-4)
  assert any(ln.startswith("failures: 2") for ln in lines), lines
  assert any("NME 2D 68" in ln for ln in lines)


def test_labels_are_the_converted_mat_fits(dev_dir, bfm_dir, meta, tmp_path):
  """--labels scores the .mat fits as training converts them: the same numbers as mat_to_params by hand, a small
  floor (40/10 truncation) on both 2D and 3D, and a corrupt .mat is a counted failure."""
  from jface.core import bfm as bfm_lib
  from jface.core import geometry
  from jface.data import common, mat_layout
  names = [str(n) for n in meta["names"][:6]]  # crop layout (GT from meta.npz), the .mat fits beside it
  folder = _copy_original(dev_dir, names, tmp_path / "data")
  shutil.copy(os.path.join(dev_dir, "meta.npz"), tmp_path / "data" / "meta.npz")
  (folder / (os.path.splitext(names[0])[0] + ".mat")).write_bytes(b"not a mat file")
  rc, lines = run_cli(["--data_dir", tmp_path / "data", "--labels", "--limit", 6, "--bfm_dir", bfm_dir,
                       "--out", tmp_path / "o"])
  res = load_json(tmp_path / "o")
  assert rc == 0 and res["labels"] and res["n_failed"] == 1
  assert res["failures"] == {"unreadable label (.mat)": 1}
  assert any("3DMM labels" in ln for ln in lines)
  rows = {r["name"]: r for r in read_csv(tmp_path / "o")}
  face = bfm_lib.load_3ddfa(bfm_dir)
  for n in names[1:]:
    i = list(meta["names"]).index(n)
    mat = common.read_mat(str(folder / (os.path.splitext(n)[0] + ".mat")))
    pw = mat_layout.mat_to_params(mat, meta["roi_box"][i], 450, face)
    lm = np.asarray(crop.crop_to_image(geometry.landmarks3d(face, pw[None].astype(np.float32)),
                                       meta["roi_box"][i][None]), np.float64)
    gt = meta["pts68"][i].T[None]
    assert float(rows[n]["nme_2d"]) == pytest.approx(metrics.nme_2d(lm[..., :2], gt[..., :2])[0], abs=1e-3)
    assert float(rows[n]["nme_3d"]) == pytest.approx(metrics.nme_3d(lm, gt)[0], abs=1e-3)
    assert float(rows[n]["nme_2d"]) < 3.0 and float(rows[n]["nme_3d"]) < 3.5
  assert res["nme_2d_68"]["overall"] < 1.5 and res["nme_3d_68"]["overall"] < 2.0


def test_labels_need_3dmm_labels(wild_dir, tmp_path, capsys):
  assert cli.main(["--dataset", "aflw", "--data_dir", str(wild_dir), "--labels", "--out", str(tmp_path / "o")]) == 2
  assert "no 3DMM labels" in _err_line(capsys)


# ------------------------------------------------------------------------------------- bad input

def _err_line(capsys):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


def test_wrong_shape_npy(dev_dir, bfm_dir, tmp_path, capsys):
  pred = tmp_path / "bad.npy"
  np.save(pred, np.zeros((200, 61), np.float32))
  rc, _ = run_cli(["--data_dir", dev_dir, "--predictions", pred, "--bfm_dir", bfm_dir, "--out", tmp_path])
  assert rc == 2 and "(200, 61)" in _err_line(capsys)
  np.save(pred, np.zeros((150, 62), np.float32))
  rc, _ = run_cli(["--data_dir", dev_dir, "--predictions", pred, "--bfm_dir", bfm_dir, "--out", tmp_path])
  assert rc == 2 and "150 rows" in _err_line(capsys)


def test_unknown_and_missing_names(dev_dir, bfm_dir, meta, tmp_path, capsys):
  names = list(meta["names"][:10]) + ["nope1.jpg", "nope2.jpg"]
  pred = tmp_path / "u.npz"
  np.savez(pred, names=names, params=np.zeros((12, 62), np.float32))
  rc, _ = run_cli(["--data_dir", dev_dir, "--predictions", pred, "--bfm_dir", bfm_dir, "--out", tmp_path])
  line = _err_line(capsys)
  assert rc == 2 and "nope1.jpg" in line and "nope2.jpg" in line and "2 of 12" in line

  np.savez(pred, names=meta["names"][:150], params=meta["released_2dasl_params"][:150])
  rc, lines = run_cli(["--data_dir", dev_dir, "--predictions", pred, "--bfm_dir", bfm_dir, "--out", tmp_path])
  res = load_json(tmp_path)
  assert rc == 0 and res["n_failed"] == 50 and res["nme_2d_68"]["n"] == 150
  assert res["failures"] == {"missing prediction": 50}
  assert any("50 of 200 images have no prediction" in ln for ln in lines), lines


def test_nan_rows_are_counted_failures(dev_dir, bfm_dir, meta, tmp_path):
  p = meta["released_2dasl_params"].copy()
  p[[0, 5, 7]] = np.nan
  p[9, 3] = np.inf
  pred = tmp_path / "nan.npy"
  np.save(pred, p)
  rc, lines = run_cli(["--data_dir", dev_dir, "--predictions", pred, "--bfm_dir", bfm_dir, "--out", tmp_path])
  res = load_json(tmp_path)
  assert rc == 0 and res["n_failed"] == 4 and res["nme_2d_68"]["n"] == 196
  assert res["failures"] == {"non-finite prediction": 4}
  assert any(ln.startswith("NME 2D 68") for ln in lines) and any(ln.startswith("failures: 4") for ln in lines)
  rows = read_csv(tmp_path)
  assert rows[0]["status"] == "non-finite prediction" and rows[0]["nme_2d"] == ""
  # the failures are excluded from the means: the mean of the other 196 images
  e = np.array([float(r["nme_2d"]) for r in rows if r["nme_2d"]])
  assert res["nme_2d_68"]["overall"] == pytest.approx(e.mean(), abs=1e-5)


def test_all_nan_is_nonzero_exit(dev_dir, bfm_dir, tmp_path):
  pred = tmp_path / "allnan.npy"
  np.save(pred, np.full((200, 62), np.nan, np.float32))
  rc, lines = run_cli(["--data_dir", dev_dir, "--predictions", pred, "--bfm_dir", bfm_dir, "--out", tmp_path])
  assert rc == 1 and any("nothing could be evaluated" in ln for ln in lines)
  assert load_json(tmp_path)["n_failed"] == 200


def test_missing_data_dir_and_bfm(tmp_path, released_npy, dev_dir, capsys):
  rc, _ = run_cli(["--data_dir", tmp_path / "nowhere", "--predictions", released_npy, "--out", tmp_path])
  assert rc == 2 and "missing data folder" in _err_line(capsys)
  rc, _ = run_cli(["--data_dir", dev_dir, "--predictions", released_npy, "--bfm_dir", tmp_path / "no3dmm",
                   "--out", tmp_path])
  assert rc == 2 and "no3dmm" in _err_line(capsys)
  rc, _ = run_cli(["--data_dir", dev_dir, "--predictions", tmp_path / "none.npy", "--out", tmp_path])
  assert rc == 2 and "none.npy" in _err_line(capsys)


def test_dense_and_icp_with_dense_bases(dev_dir, bfm_dir, meta, tmp_path):
  """With dense bases (zeros here: the real ones are not shipped), predictions equal to the .mat fits give
  dense and ICP NME ~ 0 through the whole AFLW2000-3D path (GT params from the .mat in the meta boxes)."""
  from jface.core import bfm as bfm_lib
  from jface.data import common, mat_layout
  face = bfm_lib.load_3ddfa(str(bfm_dir), dense=False)
  for name, k in (("w_shp_sim.npy", 40), ("w_exp_sim.npy", 10)):
    np.save(tmp_path / name, np.zeros((53215 * 3, k), np.float32))
  names = meta["names"][:3]
  gt = [mat_layout.mat_to_params(common.read_mat(os.path.join(dev_dir, "AFLW2000", n[:-4] + ".mat")),
                                 meta["roi_box"][i], 450, face) for i, n in enumerate(names)]
  pred = tmp_path / "fit.npz"
  np.savez(pred, names=names, params=np.stack(gt))
  rc, lines = run_cli(["--data_dir", dev_dir, "--predictions", pred, "--bfm_dir", bfm_dir, "--dense_bases_dir",
                       tmp_path, "--limit", 3, "--out", tmp_path / "o"])
  res = load_json(tmp_path / "o")
  assert rc == 0 and "dense_note" in res and "dense" not in res["skipped"]
  for k in ("nme_dense_2d", "nme_dense_3d", "nme_icp"):
    assert res[k]["n"] == 3 and res[k]["overall"] < 1e-3, (k, res[k])
  assert any(ln.startswith("NME ICP 3D recon") for ln in lines)


# ----------------------------------------------------------------------------- synthetic and AFLW

def test_synthetic_exact_params_give_zero_error(tmp_path):
  from jface.data.synthetic_faces import SyntheticFaces
  src = SyntheticFaces(6, seed=3)
  pred = tmp_path / "gt.npz"
  np.savez(pred, names=[f"synthetic_{i:06d}" for i in range(6)], params=np.stack([src[i]["params"] for i in range(6)]))
  rc, lines = run_cli(["--dataset", "synthetic", "--num", 6, "--seed", 3, "--predictions", pred,
                       "--out", tmp_path / "o"])
  res = load_json(tmp_path / "o")
  assert rc == 0 and res["nme_2d_68"]["n"] == 6 and res["dataset"] == "synthetic"
  for k in ("nme_2d_68", "nme_3d_68", "nme_dense_2d", "nme_dense_3d", "nme_icp"):
    assert res[k]["overall"] < 1e-3, (k, res[k])
  assert os.path.exists(tmp_path / "o" / "best_worst.png")
  rc, _ = run_cli(["--dataset", "synthetic", "--num", 6, "--seed", 3, "--labels", "--out", tmp_path / "o2"])
  res2 = load_json(tmp_path / "o2")
  assert rc == 0 and res2["labels"]
  for k in ("nme_2d_68", "nme_3d_68"):
    assert res2[k]["overall"] < 1e-3, (k, res2[k])


def test_aflw_21_points(wild_dir, tmp_path):
  with np.load(os.path.join(wild_dir, "meta.npz")) as z:
    names, boxes, pts21, yaw = z["names"][:12], z["roi_box"][:12], z["pts21"][:12], z["yaw"][:12]
  rng = np.random.default_rng(0)
  lm = rng.uniform(30, 90, (12, 68, 2))
  pred = tmp_path / "lm.npz"
  np.savez(pred, names=names, landmarks=lm)
  rc, _ = run_cli(["--dataset", "aflw", "--data_dir", wild_dir, "--predictions", pred, "--limit", 12,
                   "--out", tmp_path / "o"])
  res = load_json(tmp_path / "o")
  want = metrics.aflw_nme(lm, boxes, pts21, yaw)
  assert rc == 0 and "nme_2d_21" in res and res["nme_2d_21"]["n"] == 12
  assert res["nme_2d_21"]["mean_of_bins"] == pytest.approx(want["summary"]["mean_of_bins"], rel=1e-9)
  got = np.array([float(r["nme_2d"]) for r in read_csv(tmp_path / "o")])
  np.testing.assert_allclose(got, want["nme"], rtol=1e-6)


# ------------------------------------------------------------------- the protocol's pieces (jface.eval.protocol)

@pytest.fixture(scope="module")
def synthetic_face():
  from jface.core.load import load_model
  return load_model("synthetic")


def test_landmark_input_modes(synthetic_face):
  """auto = the data's detector landmarks when present, else for synthetic faces their exact landmarks (what the
  training loop's dev evaluation always fed), else the mean face; gt = the ground truth; mean = the mean face."""
  from jface.eval.data import load_synthetic
  data = load_synthetic(3, 7, synthetic_face)
  pts, mask, what = protocol.landmark_input(data, "auto", synthetic_face)
  np.testing.assert_array_equal(pts, data.gt[..., :2])
  assert pts.shape == (3, 68, 2) and mask.shape == (3, 68) and mask.all() and "ground-truth" in what
  gt, _, _ = protocol.landmark_input(data, "gt", synthetic_face)
  np.testing.assert_array_equal(gt, pts)
  mean, mmask, what = protocol.landmark_input(data, "mean", synthetic_face)
  want = protocol.mean_face_landmarks(synthetic_face)
  assert want.shape == (68, 2) and mmask.all() and "mean face" in what
  np.testing.assert_array_equal(mean, np.broadcast_to(want, (3, 68, 2)))
  assert not np.allclose(mean, pts, atol=0.5)  # the faces are not all the mean face
  with pytest.raises(EvalError, match="fan_pts68_crop"):
    protocol.landmark_input(data, "detector", synthetic_face)
  with pytest.raises(EvalError, match="--flm"):
    protocol.landmark_input(data, "nope", synthetic_face)
  det = pts + 1.5
  det[1, 4] = np.nan  # an undetected point is masked out
  with_det = dataclasses.replace(data, detector=det)
  got, dmask, what = protocol.landmark_input(with_det, "auto", synthetic_face)
  assert "fan_pts68_crop" in what and not dmask[1, 4] and dmask.sum() == 3 * 68 - 1
  np.testing.assert_array_equal(got, det)
  other = dataclasses.replace(data, dataset="aflw2000_3d")  # no detector, not synthetic: the mean face
  assert "mean face" in protocol.landmark_input(other, "auto", synthetic_face)[2]


def test_dense_errors_from_vertices():
  """dense_errors takes predicted and GT vertices (N, V, 3) in crop pixels plus the roi boxes: a translation by
  (3, 4, 7) crop px is 5 px of 2D and 3D dense error (z is aligned on its minimum) relative to the GT box, whatever
  the box; ICP removes it; a NaN prediction or box is a failure (NaN)."""
  rng = np.random.default_rng(0)
  gt = rng.uniform([20, 15, -30], [100, 110, 30], (4, 300, 3))
  pred = gt + np.array([3.0, 4.0, 7.0])
  boxes = np.array([[0, 0, 120, 120], [10, 20, 250, 260], [-30, 5, 30, 65], [0, 0, 120, 120]], np.float64)
  pred[3, 17] = np.nan
  d = protocol.dense_errors(pred, gt, boxes)
  assert set(d) == {"dense_2d", "dense_3d", "icp"} and all(v.shape == (4,) for v in d.values())
  want = 100 * 5 / metrics.box_size(gt[:3])
  np.testing.assert_allclose(d["dense_2d"][:3], want, rtol=1e-5)
  np.testing.assert_allclose(d["dense_3d"][:3], want, rtol=1e-5)
  assert np.all(d["icp"][:3] < 1e-3), d["icp"]
  assert all(np.isnan(v[3]) for v in d.values())
  same = protocol.dense_errors(gt, gt, boxes, icp_stride=7)
  assert all(np.allclose(v, 0, atol=1e-4) for v in same.values()), same
  bad_box = boxes.copy()
  bad_box[0, 2] = np.nan
  assert np.isnan(protocol.dense_errors(gt, gt, bad_box)["dense_2d"][0])
  # the same numbers as the metrics on the vertices in the original image (crop -> image through the boxes)
  pred2 = gt[:3] * 1.05 + 1.0
  vp, vg = crop.crop_to_image(pred2, boxes[:3]), crop.crop_to_image(gt[:3], boxes[:3])
  d2 = protocol.dense_errors(pred2, gt[:3], boxes[:3])
  np.testing.assert_allclose(d2["dense_3d"], metrics.nme_dense(vp, vg, dims=3), rtol=1e-5)
  np.testing.assert_allclose(d2["dense_2d"], metrics.nme_dense(vp, vg, dims=2), rtol=1e-5)
  np.testing.assert_allclose(d2["icp"], metrics.reconstruction_nme(vp, vg), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------ checkpoints

def tiny_config(**overrides):
  """configs/2dasl.py:smoke with a tiny CNN: RGB + FLM input, L3d only (no critic)."""
  c = load_config("smoke")
  c.use_flm, c.use_cyc, c.use_sc = True, False, False
  c.model, c.model_kwargs = "tiny_cnn", {"channels": (8, 16)}
  c.encoder_kwargs = {"channels": (8, 8, 8, 8, 8)}
  c.data.train_2d = ""
  for k, v in overrides.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A 2DASL workdir written directly (no training loop): the tiny CNN's initial state saved at step 7."""
  c = tiny_config()
  state = initial_state(c)
  return write_workdir(tmp_path_factory.mktemp("ckpt"), c, state.replace(step=np.int32(7)), 7)


def _tree_equal(a, b) -> bool:
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  return (jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
          and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)))


def test_checkpoint_synthetic_is_the_dev_evaluator_protocol(workdir, synthetic_face, tmp_path):
  """The one-protocol guarantee: ``evaluate.py --checkpoint`` on ``--dataset synthetic --num N --seed S`` gives the
  training loop's dev evaluation (``DevEvaluator`` on the spec ``synthetic:N:S``) -- same per-image errors, bins,
  mean of bins (within 1e-6). The landmark-map input of both is the faces' exact landmarks (``auto`` = ``gt`` on
  synthetic faces), and it matters: the mean face's landmarks give other numbers."""
  from jface.eval.evaluator import DevEvaluator
  from jface.methods.workdir import load_checkpoint
  num, seed = 8, 5
  argv = ["--dataset", "synthetic", "--num", num, "--seed", seed, "--checkpoint", workdir]
  rc, lines = run_cli(argv + ["--out", tmp_path / "auto"])
  res = load_json(tmp_path / "auto")
  assert rc == 0 and res["checkpoint"] == str(workdir) and res["method"] == "2dasl", lines
  assert res["nme_2d_68"]["n"] == num and res["n_failed"] == 0
  assert any("2dasl" in ln and "step 7" in ln for ln in lines), lines
  assert any(ln.startswith("landmark-map input:") and "ground-truth" in ln for ln in lines), lines

  config, method, state = load_checkpoint(str(workdir))
  ev = DevEvaluator(method, config, synthetic_face, f"synthetic:{num}:{seed}")
  assert len(ev) == num and list(ev.data.names) == [r["name"] for r in read_csv(tmp_path / "auto")]
  dev = ev(state)
  assert dev["key"] == "nme_2d_68"
  got, want = res["nme_2d_68"], dev["nme_2d_68"]
  assert np.isfinite(want["mean_of_bins"]) and sum(np.isfinite(want["bins"])) >= 2, want
  assert got["mean_of_bins"] == pytest.approx(want["mean_of_bins"], abs=1e-6)
  assert got["overall"] == pytest.approx(want["overall"], abs=1e-6)
  np.testing.assert_allclose(np.array(got["bins"], float), np.array(want["bins"], float), atol=1e-6)
  assert got["n"] == want["n"] == num and got["n_failed"] == want["n_failed"] == 0
  csv_err = np.array([float(r["nme_2d"]) for r in read_csv(tmp_path / "auto")])
  np.testing.assert_allclose(csv_err, dev["errors"], atol=2e-6)  # (the CSV has 6 decimals)

  # --flm gt (the oracle input) is what auto feeds synthetic faces
  rc, _ = run_cli(argv + ["--flm", "gt", "--out", tmp_path / "gt"])
  assert rc == 0
  assert load_json(tmp_path / "gt")["nme_2d_68"]["mean_of_bins"] == pytest.approx(got["mean_of_bins"], abs=1e-9)
  # ... and the input is not ignored: the mean face's landmarks give other numbers (so the match is not vacuous)
  rc, lines = run_cli(argv + ["--flm", "mean", "--out", tmp_path / "mean"])
  assert rc == 0 and any("mean face" in ln for ln in lines), lines
  assert abs(load_json(tmp_path / "mean")["nme_2d_68"]["mean_of_bins"] - got["mean_of_bins"]) > 1e-4


def test_checkpoint_on_dev_uses_detector_landmarks(workdir, dev_dir, tmp_path):
  rc, lines = run_cli(["--data_dir", dev_dir, "--checkpoint", workdir, "--limit", 6, "--out", tmp_path])
  res = load_json(tmp_path)
  assert rc == 0 and res["nme_2d_68"]["n"] == 6 and np.isfinite(res["nme_2d_68"]["overall"])
  assert any("fan_pts68_crop" in ln for ln in lines), lines


@pytest.mark.parametrize("use_sc", [False, True], ids=["l3d_only", "with_critic"])
def test_old_layout_workdir_loads(use_sc, tmp_path):
  """A workdir of the pre-registry layout -- state fields step/params/batch_stats/opt_state/adv_params/
  adv_opt_state ({} without the self-critic), config.json without "method" -- loads as a 2DASL TrainState with
  the critic pair in ``extra``."""
  from jface.methods.workdir import load_checkpoint
  c = tiny_config(use_sc=use_sc)
  new = initial_state(c)
  old = {"step": np.int32(3), "params": new.params, "batch_stats": new.batch_stats, "opt_state": new.opt_state,
         "adv_params": new.extra.get("adv_params", {}), "adv_opt_state": new.extra.get("adv_opt_state", {})}
  assert bool(new.extra) == use_sc
  wd = write_workdir(tmp_path / "old", c, old, 3, method_key=False)
  assert "method" not in json.load(open(wd / "config.json"))
  config, method, state = load_checkpoint(str(wd))
  assert config.method == "2dasl" and method.name == "2dasl" and int(state.step) == 3
  assert _tree_equal(state.replace(step=np.int32(3)), new.replace(step=np.int32(3)))
  assert set(state.extra) == ({"adv_params", "adv_opt_state"} if use_sc else set())


@pytest.mark.parametrize("change", ["deeper", "no_flm"])
def test_checkpoint_not_matching_its_config_is_one_line_error(workdir, change, tmp_path, capsys):
  """A saved tree that does not match the model of config.json (an extra layer; 3 input channels instead of 4)
  is a CheckpointError with one line naming the workdir; evaluate.py prints it as one error line (exit 2).
  So is a folder without config.json."""
  from jface.methods.workdir import load_checkpoint
  from jface.train import checkpoint
  wd = tmp_path / "wd"
  shutil.copytree(os.path.join(workdir, checkpoint.LATEST), wd / checkpoint.LATEST)
  c = tiny_config(model_kwargs={"channels": (8, 16, 32)}) if change == "deeper" else tiny_config(use_flm=False)
  checkpoint.write_config(str(wd), c)
  with pytest.raises(CheckpointError) as ei:
    load_checkpoint(str(wd))
  msg = str(ei.value)
  assert "\n" not in msg and str(wd) in msg and "2dasl" in msg and len(msg) < 400, msg
  rc, _ = run_cli(["--dataset", "synthetic", "--num", 2, "--checkpoint", wd, "--out", tmp_path / "o"])
  line = _err_line(capsys)
  assert rc == 2 and str(wd) in line and "does not match" in line
  os.remove(wd / "config.json")
  rc, _ = run_cli(["--dataset", "synthetic", "--num", 2, "--checkpoint", wd, "--out", tmp_path / "o"])
  assert rc == 2 and "config.json" in _err_line(capsys)
