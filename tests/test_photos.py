"""Real photos: BlazeFace decoding (jface.inference.blazeface), face-mesh regions (facemesh), the 468 -> 68 map
(mesh68), model files (tflite), the finder with a landmark source (faces), training landmark maps from another
source (jface.data.flm_alt + the loader), and the whole pipeline on dev photos (jface.eval.photos).

The pure functions are checked against numpy references / closed forms and always run. The tests that run the
MediaPipe models need the optional install (``pip install -e '.[photos]'``, ``python -m jface.inference.tflite
fetch``) and skip with that reason without it; the pipeline test also needs ../shared/data.
"""
from __future__ import annotations

import hashlib
import os
import zipfile

import numpy as np
import pytest

from jface.core.face_model import MissingAssetError
from jface.inference import blazeface, facemesh, mesh68, tflite
from jface.inference.detect import FaceBox


# ------------------------------------------------------------------------------------------ BlazeFace

def test_ssd_anchors_counts_and_centres():
  a = blazeface.ssd_anchors(128, (8, 16, 16, 16), 2)
  assert a.shape == (896, 2)  # 16x16 cells x 2 + 8x8 cells x 6
  assert np.allclose(a[0], [0.5 / 16, 0.5 / 16]) and np.allclose(a[1], a[0])
  assert np.allclose(a[2], [1.5 / 16, 0.5 / 16])
  assert np.allclose(a[512:518], [0.5 / 8, 0.5 / 8])  # first 8x8 cell, 6 anchors
  assert np.allclose(a[-1], [7.5 / 8, 7.5 / 8])
  full = blazeface.ssd_anchors(192, (4,), 1)
  assert full.shape == (2304, 2) and np.allclose(full[48], [0.5 / 48, 1.5 / 48])


def test_decode_closed_form():
  anchors = np.array([[0.25, 0.5], [0.75, 0.75]])
  raw = np.zeros((2, 16))
  raw[0, :4] = [12.8, -6.4, 32, 64]  # centre +0.1, -0.05; size 0.25 x 0.5 (input 128)
  raw[0, 4:6] = [-12.8, 0]
  logits = np.array([0.0, 200.0])
  boxes, kps, scores = blazeface.decode(raw, logits, anchors, 128)
  np.testing.assert_allclose(boxes[0], [0.35 - 0.125, 0.45 - 0.25, 0.35 + 0.125, 0.45 + 0.25])
  np.testing.assert_allclose(kps[0, 0], [0.15, 0.5])
  np.testing.assert_allclose(kps[1], np.tile(anchors[1], (6, 1)))
  np.testing.assert_allclose(scores, [0.5, 1 / (1 + np.exp(-100))])  # logits clipped to +-100


def test_weighted_nms_reference():
  boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [0, 0, 10, 10.0]])
  kps = np.repeat(boxes[:, None, :2], 6, 1)
  scores = np.array([0.9, 0.6, 0.8, 0.3])
  out = blazeface.weighted_nms(boxes, kps, scores, min_score=0.5)
  assert len(out) == 2  # the 0.3 box is below the threshold; the first two merge
  box, kp, score = out[0]
  np.testing.assert_allclose(box, (0.9 * boxes[0] + 0.6 * boxes[1]) / 1.5)
  np.testing.assert_allclose(kp[0], box[:2])
  assert score == 0.9 and out[1][2] == 0.8
  np.testing.assert_allclose(out[1][0], boxes[2])


def test_letterbox_and_back():
  img = np.zeros((100, 200, 3), np.uint8)
  img[40, 150] = 255  # array pixel [r=40, c=150] -> 1-based (151, 41)
  sq, scale, pad = blazeface.letterbox(img, 128)
  assert sq.shape == (128, 128, 3) and sq.dtype == np.float32
  assert pad == (0, 32) and np.allclose(scale, (0.64, 0.64))
  assert sq[0, 0, 0] == 0.0 and sq.min() >= -1 and sq.max() <= 1
  # a point's square coordinate maps back to where it was in the image
  x_sq = (150 + 0.5) * 0.64 + 0  # edge coordinate of the pixel centre in the square
  y_sq = (40 + 0.5) * 0.64 + 32
  back = blazeface.to_image(np.array([x_sq, y_sq]) / 128, 128, scale, pad)
  np.testing.assert_allclose(back, [151, 41], atol=1e-9)


# ------------------------------------------------------------------------------------------ face mesh

def test_roi_transforms_round_trip_and_warp():
  roi = facemesh.Roi(np.array([230.0, 140.0]), 150.0, 0.5)
  pts = np.random.default_rng(0).uniform(0, 192, (20, 3))
  np.testing.assert_allclose(facemesh.from_image(facemesh.to_image(pts, roi), roi), pts, atol=1e-9)
  # input centre -> region centre; +x of the input runs along the angle
  np.testing.assert_allclose(facemesh.to_image(np.array([96.0, 96.0]), roi), roi.centre)
  d = facemesh.to_image(np.array([192.0, 96.0]), roi) - roi.centre
  np.testing.assert_allclose(d, 75 * np.array([np.cos(0.5), np.sin(0.5)]))
  # warp samples the image where to_image says
  img = np.zeros((300, 400, 3), np.uint8)
  img[119:122, 249:252] = 255  # a blob centred on array pixel [120, 250] = 1-based (251, 121)
  w = facemesh.warp(img, roi)
  assert w.shape == (192, 192, 3) and w.dtype == np.float32 and w.max() <= 1
  ii, jj = np.nonzero(w[..., 0] > 0.3)
  wt = w[ii, jj, 0]
  centre = np.array([(jj * wt).sum() / wt.sum() + 0.5, (ii * wt).sum() / wt.sum() + 0.5])
  np.testing.assert_allclose(facemesh.to_image(centre, roi), [251, 121], atol=0.15)


def test_roi_from_detection_and_mesh():
  box = np.array([100, 50, 180, 150.0])
  kps = np.array([[120, 80], [160, 100], [0, 0], [0, 0], [0, 0], [0, 0.0]])
  r = facemesh.roi_from_detection(box, kps)
  np.testing.assert_allclose(r.centre, [140, 100])
  assert r.side == pytest.approx(150) and r.angle == pytest.approx(np.arctan2(20, 40))
  # points on a rotated square: the mesh region recovers it (1.5 x its side)
  rng = np.random.default_rng(1)
  square = facemesh.Roi(np.array([200.0, 210.0]), 100.0, -0.3)
  local = rng.uniform(0, 192, (facemesh.NUM_POINTS, 2))
  local[[0, 1]] = [[0, 0], [192, 192]]  # the extent is the whole square
  local[facemesh.RIGHT_EYE], local[facemesh.LEFT_EYE] = [50, 80], [140, 80]  # eye line along the x axis
  r2 = facemesh.roi_from_mesh(facemesh.to_image(local, square))
  assert r2.angle == pytest.approx(-0.3) and r2.side == pytest.approx(150)
  np.testing.assert_allclose(r2.centre, square.centre, atol=1e-9)


# ------------------------------------------------------------------------------------------ 468 -> 68

def _synthetic_map_data(n=120, seed=0):
  """Mesh points in the region frame and 68 targets that are an exact map of them (known weights)."""
  rng = np.random.default_rng(seed)
  mesh = rng.normal(0, 0.2, (n, facemesh.NUM_POINTS, 2))
  w = np.zeros((facemesh.NUM_POINTS + 2, 68))
  idx = rng.choice(facemesh.NUM_POINTS, (68, 2))
  for k in range(68):
    w[idx[k], k] = [0.3, 0.7]
  w[-2:] = rng.normal(0, 0.01, (2, 68))
  return mesh, mesh68.predict_frame(w, mesh), w


def test_mesh68_solve_recovers_an_exact_map():
  mesh, target, w = _synthetic_map_data()
  got = mesh68.solve(mesh, target, 1e-9)
  np.testing.assert_allclose(mesh68.predict_frame(got, mesh), target, atol=1e-6)
  assert got.shape == (470, 68)
  # the design: x rows then y rows, offsets in the last two columns
  a = mesh68._design(mesh[:2])
  np.testing.assert_array_equal(a[0, :468], mesh[0, :, 0])
  np.testing.assert_array_equal(a[2, :468], mesh[0, :, 1])
  assert a[0, 468] == 1 and a[0, 469] == 0 and a[2, 468] == 0 and a[2, 469] == 1


def test_mesh68_fit_save_load_and_apply(tmp_path):
  mesh, target, _ = _synthetic_map_data(200)
  data = dict(mesh=mesh, target=target, found=np.ones(200, bool), score=np.r_[np.ones(190), np.zeros(10)])
  m = mesh68.fit(data, lambdas=(1e-6, 1.0))
  assert m.info["lambda_"] == 1e-6 and m.info["faces"] == 190
  assert m.info["cv_nme"][1e-6] < m.info["cv_nme"][1.0]
  p = str(tmp_path / "map.npz")
  m.save(p)
  back = mesh68.Mesh68Map.load(p)
  np.testing.assert_array_equal(back.weights, m.weights)
  # applied in the image: the map is equivariant to the region's position, size and angle
  roi = facemesh.Roi(np.array([300.0, 200.0]), 180.0, 0.4)
  img_pts = mesh68.from_frame(mesh[0], roi)
  np.testing.assert_allclose(back(img_pts, roi), mesh68.from_frame(target[0], roi), atol=1e-4)
  with pytest.raises(ValueError, match="usable faces"):
    mesh68.fit(dict(data, score=np.zeros(200)))


def test_mesh68_out_of_fold():
  mesh, target, _ = _synthetic_map_data(400)  # 320 training faces per fold: 640 equations for 470 unknowns
  roi = np.tile([100.0, 100.0, 200.0, 0.0], (400, 1))
  data = dict(mesh=mesh, target=target, found=np.ones(400, bool), score=np.ones(400), roi=roi)
  data["score"][3] = 0.1
  pts = mesh68.out_of_fold(data, 1e-9)
  assert np.isnan(pts[3]).all() and np.isfinite(np.delete(pts, 3, 0)).all()
  r = facemesh.Roi(np.array([100.0, 100.0]), 200.0, 0.0)
  np.testing.assert_allclose(pts[5], mesh68.from_frame(target[5], r), atol=1e-4)


def test_missing_files_say_where_they_come_from(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.delenv("JFACE_MODELS", raising=False)
  monkeypatch.setattr(tflite, "_mediapipe_dirs", lambda: [])
  with pytest.raises(MissingAssetError, match="jface.inference.tflite fetch"):
    tflite.find_model("face_landmark.tflite")
  with pytest.raises(MissingAssetError, match="mesh68 fit"):
    mesh68.Mesh68Map.load()
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip")
  with pytest.raises(MissingAssetError, match="unreadable"):
    mesh68.Mesh68Map.load(str(bad))
  assert not tflite.models_available(["face_landmark.tflite"])


def test_extract_models_checks_hashes(tmp_path, monkeypatch):
  payload = b"tflite bytes"
  digest = hashlib.sha256(payload).hexdigest()
  monkeypatch.setattr(tflite, "MODELS", {"m.tflite": ("mediapipe/modules/x/m.tflite", digest)})
  wheel = tmp_path / "mp.whl"
  with zipfile.ZipFile(wheel, "w") as z:
    z.writestr("mediapipe/modules/x/m.tflite", payload)
    z.writestr("mediapipe-0.10.21.dist-info/LICENSE", "Apache")
  out = tflite.extract_models(str(wheel), str(tmp_path / "models"))
  assert open(out[0], "rb").read() == payload
  assert os.path.exists(tmp_path / "models" / "LICENSE.mediapipe")
  monkeypatch.setattr(tflite, "MODELS", {"m.tflite": ("mediapipe/modules/x/m.tflite", "0" * 64)})
  with pytest.raises(ValueError, match="SHA-256"):
    tflite.extract_models(str(wheel), str(tmp_path / "models2"))
  assert not os.path.exists(tmp_path / "models2" / "m.tflite")
  (tmp_path / "junk.whl").write_bytes(b"junk")
  with pytest.raises(ValueError, match="not a readable wheel"):
    tflite.extract_models(str(tmp_path / "junk.whl"), str(tmp_path / "models3"))


# ------------------------------------------------------------------------------- finder + landmark source

def _scene():
  from jface.data.synthetic_faces import SyntheticFaces
  ex = SyntheticFaces(1, seed=5)[0]
  canvas = np.random.default_rng(0).integers(0, 256, (200, 240, 3), dtype=np.uint8)
  canvas[50:170, 60:180] = ex["image"]
  return canvas, ex["landmarks"] + np.array([60, 50], np.float32)


def test_finder_uses_the_source_points_for_crop_and_map():
  from jface.data import common
  from jface.inference.faces import FaceFinder
  image, lm = _scene()
  box = FaceBox(np.array([70, 60, 170, 170], np.float32), 0.9, "blazeface_short", None)
  calls = []

  def source(img, faces):
    calls.append(len(faces))
    return [(lm, 0.9), (lm + 3, 0.2)]  # the second face's mesh "failed"

  finder = FaceFinder(use_flm=True, detector=lambda img: [box, box], landmarks=source, mesh_min_score=0.5)
  faces = finder.find(image)
  assert calls == [2] and len(faces) == 2
  ok, failed = faces
  np.testing.assert_array_equal(ok.roi_box, common.roi_box_from_landmarks(lm, image_shape=image.shape))
  assert ok.flm == "custom" and ok.landmarks_from == "custom" and ok.source_score == 0.9
  from jface.core import crop
  np.testing.assert_allclose(ok.flm_pts, crop.image_to_crop(lm, ok.roi_box, 120), atol=1e-4)
  # a named mesh source below min_score would fall back; a custom source's points are always used
  assert failed.landmarks_from == "custom"
  finder_mesh = FaceFinder(use_flm=True, detector=lambda img: [box], landmarks=source)
  finder_mesh._source_name, finder_mesh._source = "mesh", lambda img, faces: [(lm, 0.05)]
  (f,) = finder_mesh.find(image)
  assert f.flm == "iterate" and f.landmarks_from == "detector" and f.flm_pts is None
  np.testing.assert_array_equal(f.source_landmarks, lm)
  # an RGB-only model still gets its crop from the source's points
  rgb = FaceFinder(use_flm=False, detector=lambda img: [box], landmarks=lambda img, faces: [(lm, 1.0)])
  (g,) = rgb.find(image)
  assert g.flm == "none" and g.flm_pts is None and g.landmarks_from == "custom"


def test_finder_without_source_and_bad_names():
  from jface.inference.faces import FaceFinder
  image, _ = _scene()
  box = FaceBox(np.array([70, 60, 170, 170], np.float32), 1.0, "haar")
  f = FaceFinder(use_flm=True, detector=lambda img: [box], landmarks="none")
  (face,) = f.find(image)
  assert face.flm == "iterate" and face.landmarks_from == "detector"
  with pytest.raises(ValueError, match="no 68-point landmark source"):
    FaceFinder(use_flm=True, flm_mode="source", detector=lambda img: [box], landmarks="none").find(image)
  with pytest.raises(ValueError, match="landmarks must be one of"):
    FaceFinder(landmarks="nope")


# ---------------------------------------------------------------------------- training landmark maps

class _Src:
  """Two synthetic examples with names (a tiny source)."""

  def __init__(self):
    from jface.data.synthetic_faces import SyntheticFaces
    self.faces = SyntheticFaces(2, seed=3)

  def __len__(self):
    return 2

  def __getitem__(self, i):
    ex = dict(self.faces[i])
    ex["name"] = f"img{i}.jpg"
    ex["roi_box"] = np.array([10, 20, 250, 260], np.float32)  # a crop of side 240 in the "photo"
    return ex


def test_alt_landmarks_source_and_loader(tmp_path):
  from jface.core import crop
  from jface.data.flm_alt import WithAltLandmarks
  from jface.data.pipeline import Loader
  src = _Src()
  alt_img = np.random.default_rng(0).uniform(50, 200, (1, 68, 2))
  np.savez(tmp_path / "alt.npz", names=np.array(["img0.jpg"]), pts68=alt_img)
  wrapped = WithAltLandmarks(src, str(tmp_path / "alt.npz"))
  ex0, ex1 = wrapped[0], wrapped[1]
  np.testing.assert_allclose(ex0["flm_alt"], crop.image_to_crop(alt_img[0], src[0]["roi_box"], 120), atol=1e-4)
  assert np.isnan(ex1["flm_alt"]).all()
  plain = Loader(src, 2, seed=1, augment_cfg=None, num_threads=1).batch(0)
  same = Loader(wrapped, 2, seed=1, augment_cfg=None, num_threads=1).batch(0)  # options off: file unused
  assert "flm_alt" not in same
  np.testing.assert_array_equal(plain["flm_landmarks"], same["flm_landmarks"])
  always = Loader(wrapped, 2, seed=1, augment_cfg=None, num_threads=1, flm_alt_prob=1.0).batch(0)
  k0 = list(always["name"]).index("img0.jpg")
  np.testing.assert_allclose(always["flm_landmarks"][k0], ex0["flm_alt"], atol=1e-5)
  np.testing.assert_array_equal(always["flm_landmarks"][1 - k0], always["landmarks"][1 - k0])  # no alt: kept
  np.testing.assert_array_equal(always["landmarks"], plain["landmarks"])  # losses keep their landmarks
  empty = Loader(wrapped, 2, seed=1, augment_cfg=None, num_threads=1, flm_dropout=1.0).batch(0)
  assert np.isnan(empty["flm_landmarks"]).all()
  with pytest.raises(ValueError, match="flm_alt_prob"):
    Loader(src, 2, seed=1, flm_dropout=2.0)


def test_alt_landmarks_follow_augmentation():
  from jface.data import augment
  ex = _Src()[0]
  ex["flm_alt"] = ex["landmarks"] + 2.0
  ex["has_params"] = False
  out = augment.augment(ex, np.random.default_rng(0), None, augment.AugmentConfig(enabled=True))
  # the same affine moves both: their difference is the affine's linear part applied to (2, 2)
  d = out["flm_alt"] - out["landmarks"]
  np.testing.assert_allclose(d, np.broadcast_to(d[0], d.shape), atol=1e-4)


def test_alt_file_errors(tmp_path):
  from jface.data.flm_alt import read_alt_file
  with pytest.raises(MissingAssetError, match="mesh68"):
    read_alt_file(str(tmp_path / "none.npz"))
  np.savez(tmp_path / "bad.npz", names=np.array(["a"]), pts68=np.zeros((1, 5, 2)))
  with pytest.raises(ValueError, match="expected"):
    read_alt_file(str(tmp_path / "bad.npz"))


# ------------------------------------------------------------------------------- with the real models

def test_blazeface_and_mesh_on_dev_photos(dev_dir, photo_models):
  """Real photos: BlazeFace finds the labelled face and the mesh lands on it."""
  from jface.data import common
  meta = common.load_meta(str(dev_dir / "meta.npz"))
  det = blazeface.BlazeFaceDetector("short", photo_models)
  mesh = facemesh.FaceMesh(photo_models)
  for i in range(3):
    img = common.read_image(str(dev_dir / "AFLW2000" / str(meta["names"][i])))
    gt = meta["pts68"][i][:2].T
    faces = [f for f in det(img) if f.box[0] < gt[:, 0].mean() < f.box[2] and f.box[1] < gt[:, 1].mean() < f.box[3]]
    assert faces, f"no face on {meta['names'][i]}"
    (m,) = mesh(img, [facemesh.roi_from_detection(faces[0].box, faces[0].keypoints)])
    if m.score > 0.5:  # the mesh's nose tip (point 1) near the labelled one (iBUG 30)
      assert np.linalg.norm(m.points[1, :2] - gt[30]) < 0.15 * np.ptp(gt[:, 0])


def test_pipeline_lands_on_dev_faces(dev_dir, train_dir, photo_models, tmp_path_factory):
  """detect -> mesh -> 68 points -> crop on 8 dev photos with a map fitted on the train split: the points land on
  the face (an NME bound that a displaced mesh fails: the mean face placed in the detector box scores ~25)."""
  from jface.eval import metrics
  from jface.inference.faces import FaceFinder
  path = mesh68.find_map(model_dir=photo_models)
  if path is None or os.path.dirname(path) != photo_models:
    out = tmp_path_factory.mktemp("map") / mesh68.FILE
    data = mesh68.collect(str(train_dir), photo_models, log=lambda *a: None)
    mesh68.fit(data).save(str(out))
    path = str(out)
  from jface.data import common
  meta = common.load_meta(str(dev_dir / "meta.npz"))
  finder = FaceFinder(use_flm=True, detector="blazeface", landmarks="mesh", mesh_map=path, model_dir=photo_models)
  errs = []
  for i in range(8):
    img = common.read_image(str(dev_dir / "AFLW2000" / str(meta["names"][i])))
    gt = meta["pts68"][i][:2].T
    faces = finder.find(img)
    assert faces
    best = min(faces, key=lambda f: np.linalg.norm(np.nanmean(f.source_landmarks, 0) - gt.mean(0)))
    errs.append(float(metrics.nme_2d(best.source_landmarks, gt)))
    if best.landmarks_from == "mesh":  # the crop is the training crop of those points, and holds the face
      np.testing.assert_array_equal(best.roi_box, common.roi_box_from_landmarks(best.source_landmarks,
                                                                                image_shape=img.shape))
      assert best.flm == "mesh" and np.all((best.flm_pts > 0) & (best.flm_pts < 121))
      c = gt.mean(0)
      assert best.roi_box[0] < c[0] < best.roi_box[2] and best.roi_box[1] < c[1] < best.roi_box[3]
  assert np.median(errs) < 8.0, errs


def test_mesh_retry_keeps_the_best_scoring_region():
  """A failed mesh is retried on the RETRY regions; the best-scoring one replaces it, good meshes stay."""
  seen = []

  class FakeMesh:
    def __call__(self, image, rois):
      seen.append(list(rois))
      # score: high only for upright, enlarged regions
      return [facemesh.MeshResult(np.zeros((468, 3), np.float32) + r.side,
                                  0.9 if (r.angle == 0.0 and r.side > 160) else 0.1 + 0.001 * r.side, r)
              for r in rois]

  marks = mesh68.MeshLandmarks.__new__(mesh68.MeshLandmarks)
  marks.mesh, marks.min_score, marks.retry = FakeMesh(), 0.5, True
  kp = np.array([[0, 0], [10, 5], [0, 0], [0, 0], [0, 0], [0, 0.0]])
  faces = [FaceBox(np.array([0, 0, 100, 100], np.float32), 1.0, "b", kp),
           FaceBox(np.array([0, 0, 120, 120], np.float32), 1.0, "b", np.zeros((6, 2)))]  # passes at once
  out = marks.meshes(np.zeros((10, 10, 3), np.uint8), faces)
  assert len(seen) == 2 and len(seen[1]) == len(mesh68.MeshLandmarks.RETRY)  # only the failed face again
  assert out[0].score == 0.9 and out[0].roi.angle == 0.0 and out[0].roi.side == pytest.approx(180)
  assert out[1].score == 0.9 and out[1].roi.side == pytest.approx(180)
  marks.retry = False
  seen.clear()
  assert marks.meshes(np.zeros((10, 10, 3), np.uint8), faces)[0].score < 0.5 and len(seen) == 1


def test_many_faces_in_one_photo(dev_dir, photo_models):
  """Two dev photos side by side: BlazeFace finds both faces, and the mesh gives each its own points (batched)."""
  from jface.data import common
  meta = common.load_meta(str(dev_dir / "meta.npz"))
  idx = np.nonzero(np.abs(meta["yaw"]) < 20)[0][:2]
  imgs = [common.read_image(str(dev_dir / "AFLW2000" / str(meta["names"][i]))) for i in idx]
  canvas = np.concatenate(imgs, 1)
  centres = [meta["pts68"][i][:2].T.mean(0) + [k * imgs[0].shape[1], 0] for k, i in enumerate(idx)]
  det = blazeface.BlazeFaceDetector("short", photo_models)
  faces = det(canvas)
  assert len(faces) >= 2
  for c in centres:
    hit = [f for f in faces if f.box[0] < c[0] < f.box[2] and f.box[1] < c[1] < f.box[3]]
    assert len(hit) == 1, (c, [f.box for f in faces])
  path = mesh68.find_map(model_dir=photo_models)  # the fitted map, when this machine has one
  if path is not None:
    pts = mesh68.MeshLandmarks(photo_models, path)(canvas, faces[:2])
    assert len(pts) == 2 and abs(pts[0][0][:, 0].mean() - pts[1][0][:, 0].mean()) > 200
