"""Inference API / CLI (jface.predict), mesh files (jface.mesh_io), detector helpers (jface.detect).

The model is a 2-step tiny CNN (RGB + FLM, on the :smoke config's synthetic data) trained in a module fixture: its
predictions are near the mean face, so the tests check plumbing and invariants (shapes, coordinates, batching,
files), not accuracy.
"""
from __future__ import annotations

import copy
import json

import jax.numpy as jnp
import numpy as np
import pytest

from datasets import common
from datasets.wild import write_landmarks_csv
from jface import detect, geometry, mesh_io, predict
from tests.helpers.fakes import load_config


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  from jface import train_lib
  c = load_config("smoke")
  c.num_steps, c.checkpoint_every, c.data.dev, c.tensorboard = 2, 2, "", False
  c.batch_size, c.batch_size_2d, c.use_flm, c.use_cyc, c.use_sc = 2, 2, True, False, False
  c.model, c.model_kwargs = "tiny_cnn", {"channels": (8, 16)}
  c.data.num_threads, c.data.augment, c.data.train_3d, c.data.train_2d = 1, False, "synthetic:4:0", ""
  d = str(tmp_path_factory.mktemp("ckpt"))
  train_lib.train_and_evaluate(c, d)
  return d


@pytest.fixture(scope="module")
def predictor(workdir):
  return predict.Predictor(workdir, iterations=2, max_batch=2)


@pytest.fixture(scope="module")
def scene():
  """A 240 x 200 canvas (random noise) with synthetic face 0 pasted at columns 60.., rows 50.., and its 68
  landmarks in canvas coordinates (crop coords + offset: the synthetic crop's roi box is (0, 0, 120, 120))."""
  from datasets.synthetic import SyntheticFaces
  ex = SyntheticFaces(1, seed=5)[0]
  rng = np.random.default_rng(0)
  canvas = rng.integers(0, 256, (200, 240, 3), dtype=np.uint8)
  canvas[50:170, 60:180] = ex["image"]
  return canvas, ex["landmarks"] + np.array([60, 50], np.float32), ex


# --------------------------------------------------------------------------------------------- mesh_io

TETRA_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float64)
TETRA_T = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
TETRA_C = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 128, 250]], np.uint8)


@pytest.mark.parametrize("fmt", ["obj", "ply_binary", "ply_ascii"])
def test_mesh_round_trip_tetrahedron(tmp_path, fmt):
  path = str(tmp_path / ("m.obj" if fmt == "obj" else "m.ply"))
  if fmt == "obj":
    mesh_io.write_obj(path, TETRA_V, TETRA_T, TETRA_C, comments=["hello  world"])
  else:
    mesh_io.write_ply(path, TETRA_V, TETRA_T, TETRA_C, comments=["hello world"], binary=fmt == "ply_binary")
  m = mesh_io.read_mesh(path)
  np.testing.assert_allclose(m["vertices"], TETRA_V, atol=1e-6)
  np.testing.assert_array_equal(m["triangles"], TETRA_T)
  np.testing.assert_allclose(m["colors"] * 255, TETRA_C, atol=0.02)
  assert m["comments"] == ["hello world"]
  # closed form: a closed tetrahedron, every edge in exactly two faces; 4 faces of the unit corner
  edges = np.sort(np.concatenate([m["triangles"][:, [0, 1]], m["triangles"][:, [1, 2]],
                                  m["triangles"][:, [2, 0]]]), axis=1)
  _, counts = np.unique(edges, axis=0, return_counts=True)
  assert len(counts) == 6 and np.all(counts == 2)


def test_obj_text_layout(tmp_path):
  path = str(tmp_path / "m.obj")
  mesh_io.write_obj(path, TETRA_V, TETRA_T, TETRA_C)
  lines = open(path).read().splitlines()
  v = [line.split() for line in lines if line.startswith("v ")]
  f = np.array([[int(x) for x in line.split()[1:]] for line in lines if line.startswith("f ")])
  assert len(v) == 4 and all(len(x) == 7 for x in v)
  np.testing.assert_allclose(np.array([[float(x) for x in r[4:]] for r in v]), TETRA_C / 255, atol=1e-4)
  np.testing.assert_array_equal(f, TETRA_T + 1)  # 1-based


def test_mesh_writers_reject_bad_input(tmp_path):
  with pytest.raises(ValueError, match="outside"):
    mesh_io.write_obj(str(tmp_path / "a.obj"), TETRA_V, TETRA_T + 1)
  with pytest.raises(ValueError, match="colors"):
    mesh_io.write_ply(str(tmp_path / "a.ply"), TETRA_V, TETRA_T, TETRA_C.astype(float))  # 0-255 as float


def _bilinear_reference(img, pts):
  h, w = img.shape[:2]
  out = []
  for x, y in pts:
    x, y = min(max(x - 1, 0), w - 1), min(max(y - 1, 0), h - 1)
    c0, r0 = int(np.floor(x)), int(np.floor(y))
    c1, r1 = min(c0 + 1, w - 1), min(r0 + 1, h - 1)
    a, b = x - c0, y - r0
    out.append((1 - a) * (1 - b) * img[r0, c0] + a * (1 - b) * img[r0, c1] + (1 - a) * b * img[r1, c0]
               + a * b * img[r1, c1])
  return np.array(out, np.float64)


def test_sample_colors_bilinear():
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (7, 9, 3)).astype(np.uint8)
  pts = np.concatenate([rng.uniform(-1, 11, (50, 2)), [[1, 1], [9, 7], [5.5, 3.25]]])
  got = mesh_io.sample_colors(img, pts)
  np.testing.assert_allclose(got, _bilinear_reference(img.astype(np.float64), pts), atol=1e-9)
  np.testing.assert_array_equal(got[-3], img[0, 0])  # pixel centre (1, 1) = array [0, 0]
  # a linear ramp is reproduced exactly inside the image
  ramp = (np.arange(9)[None, :, None] * 3.0 + np.arange(7)[:, None, None] * 5.0).repeat(3, -1)
  p = rng.uniform([1, 1], [9, 7], (20, 2))
  np.testing.assert_allclose(mesh_io.sample_colors(ramp, p)[:, 0], (p[:, 0] - 1) * 3 + (p[:, 1] - 1) * 5,
                             atol=1e-9)


# --------------------------------------------------------------------------------------------- detect

def test_roi_box_from_bbox_closed_form():
  # 3DDFA: size 100 (mean of w, h), centre (150, 150 + 14), side 158
  np.testing.assert_array_equal(detect.roi_box_from_bbox([100, 100, 200, 200], "3ddfa"), [71, 85, 229, 243])
  box = detect.roi_box_from_bbox([10, 20, 50, 80], "3ddfa")  # w 40, h 60 -> size 50
  assert box[2] - box[0] == box[3] - box[1] == 79
  with pytest.raises(ValueError):
    detect.roi_box_from_bbox([10, 10, 5, 20])


def test_nms_and_select():
  boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 4, 4]], np.float32)
  np.testing.assert_array_equal(detect.nms(boxes, [1, 2, 0.5, 0.1]), [1, 2, 3])
  faces = [detect.FaceBox(b, 1.0, "x") for b in boxes]
  assert [f.size for f in detect.select_faces(faces, min_size=5)] == [10, 10, 10]
  assert len(detect.select_faces(faces, max_faces=2)) == 2
  # a box mostly inside a larger one (a Haar hit on the nose) is dropped; IoU alone would keep it
  big, nose = detect.FaceBox(np.array([0, 0, 100, 100], np.float32), 2, "haar"), \
      detect.FaceBox(np.array([40, 40, 60, 60], np.float32), 2, "haar")
  assert detect.iou(big.box, nose.box)[0, 0] < 0.3
  other = detect.FaceBox(np.array([95, 10, 125, 40], np.float32), 1, "haar")  # 1/6 of it inside `big`
  kept = detect.drop_contained([nose, big, other])
  assert [f.box.tolist() for f in kept] == [big.box.tolist(), other.box.tolist()]


def test_haar_on_synthetic_face(predictor):
  """Only where OpenCV ships the Haar cascades (OpenCV 4.x). A near-frontal rendered face (yaw -1 deg) that
  OpenCV 4.14's frontal cascade finds (it finds ~1 in 4 rendered near-frontal faces): the box must overlap the
  face, and the API must crop it with the Haar box mapping. Finding nothing (another OpenCV) skips."""
  if detect.haar_cascade_dir() is None:
    pytest.skip("OpenCV here has no Haar cascades (OpenCV >= 5)")
  from datasets.synthetic import SyntheticFaces
  ex = SyntheticFaces(10, seed=999)[9]
  canvas = np.full((240, 240, 3), 128, np.uint8)
  canvas[60:180, 60:180] = ex["image"]
  lm = ex["landmarks"] + 60
  faces = detect.HaarDetector()(canvas)
  if not faces:
    pytest.skip("the Haar cascades find no face on this rendered face")
  assert detect.iou(np.stack([f.box for f in faces]), np.r_[lm.min(0), lm.max(0)]).max() > 0.3
  (res,) = _variant(predictor, detector_name="haar", _detector=None).predict_images([canvas])
  assert len(res) == len(faces) and res[0].flm == "iterate:2"
  np.testing.assert_array_equal(res[0].roi_box, detect.roi_box_from_bbox(faces[0].box, faces[0].kind))


# --------------------------------------------------------------------------------------------- API

def test_predict_images_with_landmarks(predictor, scene):
  canvas, lm, _ = scene
  (faces,) = predictor.predict_images([canvas], landmarks=[lm])
  assert len(faces) == 1
  f = faces[0]
  np.testing.assert_array_equal(f.roi_box, common.roi_box_from_landmarks(lm, image_shape=canvas.shape))
  assert f.params.shape == (62,) and f.landmarks.shape == (68, 2) and f.pose.shape == (3,)
  assert np.all(np.isfinite(f.params)) and np.all(np.isfinite(f.pose)) and np.all(np.abs(f.pose) <= 180)
  assert np.all(f.landmarks >= 0.5) and np.all(f.landmarks <= np.array([240.5, 200.5]))
  # plumbing: landmarks are H(params) mapped through the crop box (numpy twin)
  want = common.crop_to_image(np.asarray(geometry.landmarks2d(predictor.model, jnp.asarray(f.params))), f.roi_box)
  np.testing.assert_allclose(f.landmarks, want, atol=1e-3)
  n = predictor.model.n_vertices
  assert f.dense_shape == "full" and f.vertices.shape == (n, 3) and np.all(np.isfinite(f.vertices))
  assert f.flm == "given" and f.box is None


def test_batching_matches_single_images(predictor, scene):
  """3 faces over 2 images with max_batch 2 (a padded chunk) give the same params as one face per call."""
  canvas, lm, _ = scene
  lm2 = lm * 0.8 + 10
  together = predictor.predict_images([canvas, canvas[:, ::-1].copy()], landmarks=[np.stack([lm, lm2]), lm])
  assert [len(r) for r in together] == [2, 1]
  singles = [predictor.predict_images([canvas], landmarks=[lm])[0][0],
             predictor.predict_images([canvas], landmarks=[lm2])[0][0],
             predictor.predict_images([canvas[:, ::-1].copy()], landmarks=[lm])[0][0]]
  for a, b in zip(together[0] + together[1], singles):
    np.testing.assert_allclose(a.params, b.params, atol=1e-5)


def _variant(predictor, **attrs):
  """The module predictor with other settings (no checkpoint reload, shares the compiled functions)."""
  p = copy.copy(predictor)
  for k, v in attrs.items():
    setattr(p, k, v)
  return p


def test_iterate_mode_redraws_flm(predictor, scene):
  """flm=iterate, N=2 == three forward passes: mean-face FLM, then the FLM of each prediction."""
  canvas, lm, _ = scene
  pred = _variant(predictor, flm_mode="iterate", iterations=2)
  (faces,) = pred.predict_images([canvas], landmarks=[lm])
  crop = common.crop_image(canvas, faces[0].roi_box)[None]
  pw = pred.predict_crops(crop, pred._mean_flm[None])
  for _ in range(2):
    pw = pred.predict_crops(crop, np.asarray(geometry.landmarks2d(pred.model, jnp.asarray(pw))))
  np.testing.assert_allclose(faces[0].params, pw[0], atol=1e-5)
  assert faces[0].flm == "iterate:2"


def test_full_image_detector_and_bad_inputs(predictor, scene):
  _, _, ex = scene
  pred = _variant(predictor, detector_name="full", _detector=None, dense=False)
  errors = []
  res = pred.predict_images([ex["image"], np.zeros((5, 5), np.float32)], errors=errors)
  assert len(res[0]) == 1 and res[1] == []
  np.testing.assert_array_equal(res[0][0].roi_box, [1, 1, 120, 120])
  assert res[0][0].vertices is None and res[0][0].flm == "iterate:2"
  assert errors[0] is None and "uint8" in errors[1]
  with pytest.raises(ValueError, match="uint8"):
    pred.predict_images([np.zeros((5, 5, 3), np.float32)])


def test_mean_shape_mesh_without_dense_bases(predictor):
  """Without dense bases the mesh is the posed dense mean: equal to the full mesh when the raw shape and
  expression coefficients are 0."""
  full = predictor.model
  mean_only = full.replace(w_shp_dense=None, w_exp_dense=None)
  raw = np.asarray(full.param_mean, np.float64).copy()
  raw[12:] = 0
  pw = np.asarray(geometry.whiten(full, jnp.asarray(raw, jnp.float32)))[None]
  roi = np.array([[10, 20, 250, 260]], np.float32)
  v_full, k_full = predict.dense_vertices(full, pw, roi)
  v_mean, k_mean = predict.dense_vertices(mean_only, pw, roi)
  assert (k_full, k_mean) == ("full", "mean")
  np.testing.assert_allclose(v_mean, v_full, atol=1e-2)
  pw2 = pw + 0.5
  assert np.abs(predict.dense_vertices(mean_only, pw2, roi)[0] - predict.dense_vertices(full, pw2, roi)[0]).max() > 1


def test_save_meshes_parse_back(predictor, scene, tmp_path):
  canvas, lm, _ = scene
  f = predictor.predict_images([canvas], landmarks=[lm])[0][0]
  tri = predictor.triangles
  paths = predict.save_meshes(str(tmp_path / "face"), canvas, f, tri)
  want_v = predict.viewer_frame(f.vertices, canvas.shape[0])
  want_c = predict.mesh_colors(canvas, f.vertices)
  for key in ("obj", "ply"):
    m = mesh_io.read_mesh(paths[key])
    assert m["vertices"].shape == f.vertices.shape and m["triangles"].shape == tri.shape
    assert m["triangles"].min() >= 0 and m["triangles"].max() < len(f.vertices)
    np.testing.assert_allclose(m["vertices"], want_v, atol=2e-3)
    c = m["colors"] * 255
    assert c.min() >= 0 and c.max() <= 255
    np.testing.assert_allclose(c, want_c, atol=0.02)
    assert any("dense_shape=full" in line for line in m["comments"])
  # the mean-shape note is written when identity/expression are not applied
  import dataclasses
  predict.save_meshes(str(tmp_path / "mean"), canvas, dataclasses.replace(f, dense_shape="mean"), tri)
  assert any("POSED MEAN SHAPE" in line for line in mesh_io.read_obj(str(tmp_path / "mean.obj"))["comments"])


# --------------------------------------------------------------------------------------------- CLI

def test_cli_folder_good_and_corrupt(workdir, scene, tmp_path, capsys):
  canvas, lm, _ = scene
  src = tmp_path / "in"
  src.mkdir()
  import cv2
  cv2.imwrite(str(src / "good.png"), canvas[..., ::-1])
  (src / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
  write_landmarks_csv(str(tmp_path / "lm.csv"), ["good.png"], lm[None])
  out = tmp_path / "out"
  rc = predict.main([str(src), "--checkpoint", workdir, "--out", str(out), "--landmarks", str(tmp_path / "lm.csv"),
                     "--detector", "full"])
  assert rc == 0
  err = capsys.readouterr().err
  assert "bad.jpg" in err
  doc = json.loads((out / "results.json").read_text())
  by = {r["image"]: r for r in doc["images"]}
  assert by["bad.jpg"]["status"] == "error" and by["good.png"]["status"] == "ok"
  assert doc["summary"] == {**doc["summary"], "images": 2, "faces": 1, "errors": 1}
  face = by["good.png"]["faces"][0]
  assert face["flm"] == "given" and len(face["landmarks"]) == 68 and set(face["pose"]) == {"yaw", "pitch", "roll"}
  from jface import synthetic
  model = synthetic.face_model()
  for key in ("obj", "ply"):
    m = mesh_io.read_mesh(str(out / face["mesh"][key]))
    assert len(m["vertices"]) == model.n_vertices and len(m["triangles"]) == len(model.tri)
  assert (out / by["good.png"]["overlay"]).exists()


def test_cli_missing_checkpoint(tmp_path, scene, capsys):
  import cv2
  cv2.imwrite(str(tmp_path / "a.png"), scene[0][..., ::-1])
  rc = predict.main([str(tmp_path / "a.png"), "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and "no checkpoint" in err[0]


def test_cli_no_detector(workdir, scene, tmp_path, capsys, monkeypatch):
  """No detector installed and no landmarks: one line, exit 2 (before loading the checkpoint)."""
  import cv2

  def none(*a, **k):
    raise detect.NoDetectorError("no face detector available: test")
  monkeypatch.setattr(detect, "make_detector", none)
  cv2.imwrite(str(tmp_path / "a.png"), scene[0][..., ::-1])
  rc = predict.main([str(tmp_path / "a.png"), "--checkpoint", workdir, "--out", str(tmp_path / "o")])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and err == ["error: no face detector available: test"]
