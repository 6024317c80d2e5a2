"""Inference (jface.inference: faces, predictor, mean_shape, outputs, cli; the jface.predict / predict.py
entries), mesh files (jface.core.mesh_io), detector helpers (jface.inference.detect).

The model is a tiny 2DASL CNN (RGB + FLM input, the :smoke config's synthetic face model) at its initial state,
written to a workdir by a module fixture (config.json + an orbax checkpoint, no training loop): its predictions
are near the mean face, so the tests check plumbing and invariants (shapes, coordinates, batching, files), not
accuracy.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface.core import crop, geometry, mesh_io
from jface.data import common
from jface.data.wild import write_landmarks_csv
from jface.inference import cli, detect, mean_shape, outputs
from jface.inference import predictor as predict
from jface.inference.faces import FaceResult
from tests.helpers.fakes import tiny_2dasl_workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A 2DASL workdir written directly: config.json + checkpoints/ holding the method's initial state."""
  return tiny_2dasl_workdir(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def predictor(workdir):
  return predict.Predictor(workdir, iterations=2, max_batch=2)


@pytest.fixture(scope="module")
def scene():
  """A 240 x 200 canvas (random noise) with synthetic face 0 pasted at columns 60.., rows 50.., and its 68
  landmarks in canvas coordinates (crop coords + offset: the synthetic crop's roi box is (0, 0, 120, 120))."""
  from jface.data.synthetic_faces import SyntheticFaces
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
  from jface.data.synthetic_faces import SyntheticFaces
  ex = SyntheticFaces(10, seed=999)[9]
  canvas = np.full((240, 240, 3), 128, np.uint8)
  canvas[60:180, 60:180] = ex["image"]
  lm = ex["landmarks"] + 60
  faces = detect.HaarDetector()(canvas)
  if not faces:
    pytest.skip("the Haar cascades find no face on this rendered face")
  assert detect.iou(np.stack([f.box for f in faces]), np.r_[lm.min(0), lm.max(0)]).max() > 0.3
  (res,) = _variant(predictor, finder={"detector": "haar"}).predict_images([canvas])
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
  want = crop.crop_to_image(np.asarray(geometry.landmarks2d(predictor.model, jnp.asarray(f.params))), f.roi_box)
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


def _variant(predictor, finder=None, **attrs):
  """The module predictor with other settings (no checkpoint reload, shares the compiled functions); ``finder``:
  FaceFinder fields to replace (a fresh detector)."""
  p = copy.copy(predictor)
  if finder:
    p.finder = dataclasses.replace(predictor.finder, **finder)
  for k, v in attrs.items():
    setattr(p, k, v)
  return p


def test_iterate_mode_redraws_flm(predictor, scene):
  """flm=iterate, N=2 == three forward passes: mean-face FLM, then the FLM of each prediction."""
  canvas, lm, _ = scene
  pred = _variant(predictor, finder={"flm_mode": "iterate"}, iterations=2)
  assert pred.flm_mode == "iterate"
  (faces,) = pred.predict_images([canvas], landmarks=[lm])
  img = common.crop_image(canvas, faces[0].roi_box)[None]
  out = pred.predict_crops(img, pred._mean_flm[None])
  for _ in range(2):
    out = pred.predict_crops(img, np.asarray(geometry.landmarks2d(pred.model, jnp.asarray(out.params))))
  np.testing.assert_allclose(faces[0].params, out.params[0], atol=1e-5)
  np.testing.assert_allclose(faces[0].landmarks, crop.crop_to_image(out.landmarks[0, :, :2], faces[0].roi_box),
                             atol=1e-3)
  assert faces[0].flm == "iterate:2"


def test_full_image_detector_and_bad_inputs(predictor, scene):
  _, _, ex = scene
  pred = _variant(predictor, finder={"detector": "full"}, dense=False)
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
  no_dense = full.replace(u_dense=None, w_shp_dense=None, w_exp_dense=None)
  assert [mean_shape.dense_kind(m) for m in (full, mean_only, no_dense)] == ["full", "mean", "none"]
  raw = np.asarray(full.param_mean, np.float64).copy()
  raw[12:] = 0
  pw = np.asarray(geometry.whiten(full, jnp.asarray(raw, jnp.float32)))[None]
  roi = np.array([[10, 20, 250, 260]], np.float32)

  def image_vertices(model, pw):
    v = geometry.dense_vertices(model, pw) if model.has_dense_bases else mean_shape.posed_mean_shape(model, pw)
    return crop.crop_to_image(np.asarray(v), roi)
  np.testing.assert_allclose(image_vertices(mean_only, pw), image_vertices(full, pw), atol=1e-2)
  pw2 = pw + 0.5
  assert np.abs(image_vertices(mean_only, pw2) - image_vertices(full, pw2)).max() > 1


def test_predictor_mean_shape_fallback(predictor, scene):
  """A face model with only the dense mean: the predictor's dense pass poses the mean shape with the predicted
  params (dense_shape "mean"); landmarks, pose and params are those of the full model's predictor."""
  canvas, lm, _ = scene
  mean_only = predictor.model.replace(w_shp_dense=None, w_exp_dense=None)
  pred = _variant(predictor, model=mean_only, dense_shape="mean",
                  _predict_dense=mean_shape.with_posed_mean_shape(predictor._predict))
  f = pred.predict_images([canvas], landmarks=[lm])[0][0]
  g = predictor.predict_images([canvas], landmarks=[lm])[0][0]
  assert f.dense_shape == "mean" and f.vertices.shape == g.vertices.shape
  for key in ("params", "landmarks", "pose"):
    np.testing.assert_allclose(getattr(f, key), getattr(g, key), atol=1e-4)
  want = crop.crop_to_image(np.asarray(mean_shape.posed_mean_shape(mean_only, jnp.asarray(f.params))), f.roi_box)
  np.testing.assert_allclose(f.vertices, want, atol=1e-2)


def test_method_without_params(predictor, scene, tmp_path):
  """A method whose FaceOutput has no 3DMM params (only landmarks, pose, vertices): the predictor maps its
  outputs to the image and the writers work from vertices + triangles and landmarks alone (params=None)."""
  canvas, lm, _ = scene

  def drop_params(fn):
    return jax.jit(lambda state, face, batch: fn(state, face, batch).replace(params=None))
  pred = _variant(predictor, _predict=drop_params(predictor._predict),
                  _predict_dense=drop_params(predictor._predict_dense))
  f = pred.predict_images([canvas], landmarks=[lm])[0][0]
  g = predictor.predict_images([canvas], landmarks=[lm])[0][0]
  assert f.params is None and f.dense_shape == "full"
  np.testing.assert_allclose(f.vertices, g.vertices, atol=1e-3)
  np.testing.assert_allclose(f.landmarks, g.landmarks, atol=1e-4)
  tri = predictor.triangles
  paths = outputs.save_meshes(str(tmp_path / "face"), canvas, f.vertices, tri)
  for key in ("obj", "ply"):
    m = mesh_io.read_mesh(paths[key])
    np.testing.assert_allclose(m["vertices"], outputs.viewer_frame(f.vertices, canvas.shape[0]), atol=2e-3)
    assert m["triangles"].shape == tri.shape
  assert outputs.overlay(canvas, [f], tri).shape == canvas.shape
  doc = json.loads(json.dumps(outputs.face_json(f, {"obj": "face.obj"})))
  assert doc["params"] is None and doc["flm"] == "given" and doc["dense_shape"] == "full"
  assert len(doc["landmarks"]) == 68 and set(doc["pose"]) == {"yaw", "pitch", "roll"}


def test_writers_from_vertices_and_triangles(tmp_path):
  """The writers from a hand-made FaceResult: a quad (two triangles) in image coordinates, no params, no pose."""
  img = np.zeros((20, 30, 3), np.uint8)
  img[:, :, 0] = 200
  v = np.array([[5, 5, 0], [15, 5, 0], [15, 15, 2], [5, 15, 2]], np.float32)
  res = FaceResult(roi_box=np.array([1, 1, 20, 20], np.float32), landmarks=np.full((68, 2), 10, np.float32),
                   vertices=v, dense_shape="full")
  assert res.params is None and res.pose is None
  for name, tri in (("a", np.array([[0, 1, 2], [0, 2, 3]])), ("b", np.array([[0, 2, 1], [0, 3, 2]]))):
    paths = outputs.save_meshes(str(tmp_path / name), img, res.vertices, tri, binary_ply=False)
    for key in ("obj", "ply"):
      m = mesh_io.read_mesh(paths[key])
      np.testing.assert_allclose(m["vertices"], outputs.viewer_frame(v, 20), atol=1e-4)
      np.testing.assert_allclose(m["colors"] * 255, np.tile([200, 0, 0], (4, 1)), atol=0.02)
      # either winding is written outward: +z (towards the viewer) in the viewer frame
      vv, t = m["vertices"], m["triangles"]
      assert np.cross(vv[t[:, 1]] - vv[t[:, 0]], vv[t[:, 2]] - vv[t[:, 0]])[:, 2].sum() > 0
  drawn = outputs.overlay(img, [res], tri)
  assert drawn.shape == img.shape and (drawn != img).any()
  doc = outputs.face_json(res, None)
  assert doc["params"] is None and doc["pose"] is None and doc["box"] is None and doc["mesh"] is None
  json.dumps(doc)


def test_save_meshes_parse_back(predictor, scene, tmp_path):
  canvas, lm, _ = scene
  f = predictor.predict_images([canvas], landmarks=[lm])[0][0]
  tri = predictor.triangles
  paths = outputs.save_meshes(str(tmp_path / "face"), canvas, f.vertices, tri, dense_shape=f.dense_shape)
  want_v = outputs.viewer_frame(f.vertices, canvas.shape[0])
  want_c = outputs.mesh_colors(canvas, f.vertices)
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
  outputs.save_meshes(str(tmp_path / "mean"), canvas, f.vertices, tri, dense_shape="mean")
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
  rc = cli.main([str(src), "--checkpoint", workdir, "--out", str(out), "--landmarks", str(tmp_path / "lm.csv"),
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
  from jface.core import synthetic
  model = synthetic.face_model()
  for key in ("obj", "ply"):
    m = mesh_io.read_mesh(str(out / face["mesh"][key]))
    assert len(m["vertices"]) == model.n_vertices and len(m["triangles"]) == len(model.tri)
  assert (out / by["good.png"]["overlay"]).exists()


def test_cli_missing_checkpoint(tmp_path, scene, capsys):
  import cv2
  cv2.imwrite(str(tmp_path / "a.png"), scene[0][..., ::-1])
  rc = cli.main([str(tmp_path / "a.png"), "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and "no checkpoint" in err[0]


def test_cli_no_detector(workdir, scene, tmp_path, capsys, monkeypatch):
  """No detector installed and no landmarks: one line, exit 2 (before loading the checkpoint)."""
  import cv2

  def none(*a, **k):
    raise detect.NoDetectorError("no face detector available: test")
  monkeypatch.setattr(detect, "make_detector", none)
  cv2.imwrite(str(tmp_path / "a.png"), scene[0][..., ::-1])
  rc = cli.main([str(tmp_path / "a.png"), "--checkpoint", workdir, "--out", str(tmp_path / "o")])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and err == ["error: no face detector available: test"]


def test_entry_points(tmp_path):
  """``python -m jface.predict`` and the top-level ``predict.py`` are the same command (one-line error, exit 2)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  for cmd in ([sys.executable, "-m", "jface.predict"], [sys.executable, os.path.join(ROOT, "predict.py")]):
    p = subprocess.run(cmd + [str(tmp_path), "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and err[0].startswith("error: no images"), (cmd, p.stderr)
