"""Video inference (jface.inference.video and the predict CLI's video hooks) on a short synthetic clip.

The clip: synthetic face 0 (``jface.data.synthetic_faces``) pasted on a grey 240 x 200 background, moving 3 px to
the right per frame, 12 frames at 10 fps; the detector is a stand-in that boxes the non-grey pixels (so it finds
the face, and nothing on a blank frame); no 68-point landmark source. The model is the tiny 2DASL CNN of
tests/test_predict.py's fixture with its head set to a constant output: params whose 68 landmarks are a fixed point
of the crop rule (the landmark crop box of the predicted landmarks is the crop they were predicted in), so a
tracked face's crop stays put (an untrained model's near-mean predictions shrink the crop by ~0.8 each frame, and
the appearance check then loses the track every few frames). The tests check plumbing and the tracking rule, not
accuracy.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import jax.numpy as jnp

from jface.core import crop as crop_lib
from jface.core import fitting, geometry
from jface.core.face_model import N_PARAMS
from jface.data import common
from jface.inference import cli, detect, video
from jface.inference import predictor as predict
from jface.inference.faces import FaceResult
from tests.helpers.fakes import initial_state, tiny_2dasl_config, write_workdir

N, W, H, FPS = 12, 240, 200, 10.0


class BoxDetector:
  """Boxes the pixels that differ from the grey background (none on a blank frame); counts its calls."""

  def __init__(self):
    self.calls = 0

  def __call__(self, image):
    self.calls += 1
    rows, cols = np.nonzero(np.abs(image.astype(int) - 128).max(-1) > 40)
    if not len(rows):
      return []
    box = np.array([cols.min() + 0.5, rows.min() + 0.5, cols.max() + 1.5, rows.max() + 1.5], np.float32)
    return [detect.FaceBox(box, 1.0, "dlib")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A 2DASL workdir (tiny_cnn) whose head outputs the fixed-point params (module docstring)."""
  from jface.core import synthetic
  c = tiny_2dasl_config()
  model = synthetic.face_model()
  mean = np.asarray(geometry.landmarks2d(model, jnp.zeros(N_PARAMS)))
  target = crop_lib.image_to_crop(mean, common.roi_box_from_landmarks(mean), model.crop_size)
  p = fitting.fit_landmarks(model, jnp.asarray(target[None]), shape_prior=1e-3, exp_prior=1e-3)[0]
  np.testing.assert_allclose(common.roi_box_from_landmarks(geometry.landmarks2d(model, p)), [0, 0, 120, 120])
  state = initial_state(c)
  head = state.params["head"]
  state = state.replace(params={**state.params, "head": {"kernel": jnp.zeros_like(head["kernel"]), "bias": p}})
  return str(write_workdir(tmp_path_factory.mktemp("ckpt"), c, state, 0))


@pytest.fixture(scope="module")
def predictor(workdir):
  return predict.Predictor(workdir, detector=BoxDetector(), landmarks="none", dense=False, max_batch=1)


@pytest.fixture(scope="module")
def clip():
  """(frames RGB list, face 0's landmarks in frame 0)."""
  from jface.data.synthetic_faces import SyntheticFaces
  ex = SyntheticFaces(1, seed=5)[0]
  frames = []
  for i in range(N):
    f = np.full((H, W, 3), 128, np.uint8)
    f[40:160, 40 + 3 * i:160 + 3 * i] = ex["image"]
    frames.append(f)
  return frames, ex["landmarks"] + np.float32(40)


def write_folder(path, frames, fmt="png"):
  import cv2
  path.mkdir()
  for i, f in enumerate(frames):
    cv2.imwrite(str(path / f"frame{i}.{fmt}"), f[..., ::-1])  # natural order: frame2 before frame10
  return path


def write_avi(path, frames):
  import cv2
  w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
  for f in frames:
    w.write(f[..., ::-1])
  w.release()
  return path


def read_csv(path):
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  return rows[0], rows[1:]


def video_info(path):
  import cv2
  cap = cv2.VideoCapture(str(path))
  n = 0
  while cap.read()[0]:
    n += 1
  info = (n, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), cap.get(cv2.CAP_PROP_FPS))
  cap.release()
  return info


def test_is_video_input(tmp_path):
  (tmp_path / "a.MP4").write_bytes(b"x")
  (tmp_path / "a.jpg").write_bytes(b"x")
  assert video.is_video_input(str(tmp_path / "a.MP4"))
  assert not video.is_video_input(str(tmp_path / "a.jpg")) and not video.is_video_input(str(tmp_path))
  assert video.is_video_input(str(tmp_path), flag=True)


def test_tracking_redetect_interval(predictor, clip, tmp_path):
  """Frame folder (natural order), redetect 5: detection on frames 0, 5, 10, tracking in between (one id); the
  tracked crop is the box of the previous frame's predicted landmarks; CSV, overlay and video.json agree."""
  frames, _ = clip
  det = predictor.finder.get_detector()
  calls = det.calls
  reader = video.FrameReader(str(write_folder(tmp_path / "frames", frames)), fps=FPS)
  assert reader.names[:3] == ["frame0.png", "frame1.png", "frame2.png"]
  doc = video.process(predictor, reader, str(tmp_path / "out"), video.TrackRule(redetect=5))
  header, rows = read_csv(tmp_path / "out" / "landmarks.csv")
  assert header == video.CSV_HEADER and len(header) == 11 + 136
  assert len(rows) == N * 1 and [int(r[0]) for r in rows] == list(range(N))
  src = [r[3] for r in rows]
  assert [i for i, s in enumerate(src) if s == "detect"] == [0, 5, 10] and src.count("track") == 9
  assert {r[2] for r in rows} == {"0"} and det.calls - calls == 3
  np.testing.assert_allclose([float(r[1]) for r in rows], np.arange(N) / FPS, atol=1e-4)
  assert all(np.isfinite([float(v) for v in r[4:]]).all() for r in rows)
  assert (doc["frames"], doc["detect_frames"], doc["track_frames"], doc["lost_tracks"], doc["bad_frames"]) == \
      (N, 3, 9, 0, 0)
  assert doc["faces_per_frame"] == [1] * N and doc["tracking_rule"]["redetect"] == 5 and doc["fps_in"] == FPS
  assert json.loads((tmp_path / "out" / "video.json").read_text())["faces"] == N
  assert video_info(tmp_path / "out" / "overlay.mp4") == (N, W, H, FPS)
  # tracking plumbing: frame 1's crop is the landmark box of the previous frame's landmarks (here moved by
  # (6, 4) px), which also draw its map
  tr = video.Tracker(predictor, video.TrackRule(redetect=5))
  (f0,) = tr.step(frames[0], 0)
  seed = f0.face.landmarks + np.float32([6, 4])
  f0.face.landmarks = seed
  (f1,) = tr.step(frames[1], 1)
  assert (f0.source, f1.source, f1.face.flm) == ("detect", "track", "given")
  want = common.roi_box_from_landmarks(seed, image_shape=frames[1].shape)
  assert np.abs(want - f0.face.roi_box).max() >= 4
  np.testing.assert_array_equal(f1.face.roi_box, want)
  np.testing.assert_allclose(f1.face.landmarks, seed, atol=1.5)  # the fixed point follows the seed


def test_blank_frame_loses_the_track(predictor, clip, tmp_path):
  """redetect 0 (detect only when needed), frame 0's landmarks given: a blank frame 6 fails the appearance check
  -> detection on frame 6 (no face), then on frame 7 (a new id), tracking again from frame 8."""
  frames, lm0 = clip
  frames = list(frames)
  frames[6] = np.full_like(frames[6], 128)
  path = write_avi(tmp_path / "blank.avi", frames)
  doc = video.process(predictor, video.FrameReader(str(path)), str(tmp_path / "out"), video.TrackRule(redetect=0),
                      given={"0": lm0})
  _, rows = read_csv(tmp_path / "out" / "landmarks.csv")
  by = {int(r[0]): r for r in rows}
  assert sorted(by) == [i for i in range(N) if i != 6]
  assert by[0][3] == "given" and all(by[i][3] == "track" for i in (1, 2, 3, 4, 5, 8, 9, 10, 11))
  assert by[7][3] == "detect" and {by[i][2] for i in range(6)} == {"0"} and by[7][2] == by[11][2] == "1"
  assert doc["lost_tracks"] == 1 and doc["lost_reasons"] == {"appearance": 1} and doc["ended_tracks"] == 1
  assert (doc["given_frames"], doc["detect_frames"], doc["track_frames"]) == (1, 2, 9)
  assert doc["faces_per_frame"][6] == 0 and doc["fps_in"] == FPS


def _face(pts):
  return FaceResult(roi_box=np.array([1, 1, 100, 100], np.float32), landmarks=np.asarray(pts, np.float32))


def test_lost_reasons():
  """The checks on hand-made faces (no model): kept, out of frame, degenerate box, jump, scale (against the size
  at the last detection: a slow drift too), appearance, non-finite."""
  rng = np.random.default_rng(0)
  pts = rng.uniform(50, 100, (68, 2))
  thumb = rng.normal(size=(32, 32)).astype(np.float32)
  prev = video.TrackedFace(0, "detect", _face(pts), thumb)
  tr = video.Tracker(None)
  why = lambda p, t=thumb: tr.lost_reason(prev, _face(p), t, (200, 240, 3))  # noqa: E731
  assert why(pts + 5) is None
  assert why(pts + 150) == "out of frame"
  assert why(np.c_[pts[:, 0], np.full(68, 70.0)]) == "degenerate box"
  assert why(pts + [40, 0]) == "jump"
  assert why((pts - 75) * 1.8 + 75) == "scale"
  small = (pts - 75) * 0.8 + 75  # 0.8 x the previous face: kept, unless the last detection saw it at 1 / 0.6 x
  assert why(small) is None
  prev.anchor = video.box_size(video.landmark_box(pts)) / 0.6
  assert why(small) == "scale"
  prev.anchor = None
  assert why(pts, np.zeros_like(thumb)) == "appearance"
  assert why(np.full((68, 2), np.nan)) == "non-finite"


def test_corrupt_frames(predictor, clip, tmp_path, capsys):
  """A corrupt image in a frame folder and a corrupt JPEG in an MJPG file: one line each, counted, the other
  frames go on; the overlay keeps one (black) frame per input frame."""
  frames, _ = clip
  folder = write_folder(tmp_path / "frames", frames, "jpg")
  (folder / "frame3.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
  data = bytearray(write_avi(tmp_path / "a.avi", frames).read_bytes())
  soi = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
  assert len(soi) == N
  data[soi[5]:soi[5] + 400] = bytes(400)
  (tmp_path / "bad.avi").write_bytes(bytes(data))
  for src, bad in ((str(folder), 3), (str(tmp_path / "bad.avi"), 5)):
    out = tmp_path / f"out{bad}"
    doc = video.process(predictor, video.FrameReader(src, fps=FPS), str(out), video.TrackRule(redetect=5))
    _, rows = read_csv(out / "landmarks.csv")
    assert doc["bad_frames"] == 1 and doc["frames"] == N and len(rows) == N - 1
    assert bad not in {int(r[0]) for r in rows} and doc["faces_per_frame"][bad] == 0
    assert video_info(out / "overlay.mp4")[:3] == (N, W, H)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("frame ")]
    assert len(err) == 1 and err[0].startswith(f"frame {bad} ")


def test_interrupt_keeps_outputs(predictor, clip, tmp_path):
  """Ctrl-C after 4 frames: the CSV and overlay hold those 4 frames, video.json says interrupted."""
  frames, _ = clip
  reader = video.FrameReader(str(write_folder(tmp_path / "frames", frames)), fps=FPS)
  inner = reader.__iter__

  def stop_after_4():
    for fr in inner():
      if fr.index == 4:
        raise KeyboardInterrupt
      yield fr
  doc = video.process(predictor, _Iter(reader, stop_after_4), str(tmp_path / "out"))
  _, rows = read_csv(tmp_path / "out" / "landmarks.csv")
  assert doc["interrupted"] and doc["frames"] == 4 and len(rows) == 4
  assert video_info(tmp_path / "out" / "overlay.mp4")[0] == 4


class _Iter:
  """A FrameReader whose iteration is replaced."""

  def __init__(self, reader, it):
    self._r, self._it = reader, it

  def __iter__(self):
    return self._it()

  def __getattr__(self, k):
    return getattr(self._r, k)


def test_cli_file_and_folder_give_the_same_csv(workdir, clip, tmp_path, monkeypatch, capsys):
  """``predict.py CLIP.avi`` and ``predict.py FRAMES --video --fps 10`` on the same decoded frames, frame 0's
  landmarks given (named by frame number / file name): the same landmarks.csv; overlay.mp4 of the input's frame
  count, size and fps; a folder without --video stays photos."""
  import cv2
  from jface.data.wild import write_landmarks_csv
  monkeypatch.setattr(detect, "make_detector", lambda *a, **k: BoxDetector())
  frames, lm0 = clip
  write_landmarks_csv(str(tmp_path / "lm.csv"), ["0", "frame0.png"], np.stack([lm0, lm0]))
  path = write_avi(tmp_path / "clip.avi", frames)
  cap = cv2.VideoCapture(str(path))
  decoded = [cap.read()[1][..., ::-1] for _ in range(N)]
  folder = write_folder(tmp_path / "frames", decoded)
  common_args = ["--checkpoint", workdir, "--landmarker", "none", "--redetect", "5", "--max_batch", "1"]
  given = ["--landmarks", str(tmp_path / "lm.csv")]
  assert cli.main([str(path), "--out", str(tmp_path / "o1")] + common_args + given) == 0
  assert cli.main([str(folder), "--video", "--fps", "10", "--out", str(tmp_path / "o2")] + common_args + given) == 0
  a, b = (tmp_path / "o1" / "landmarks.csv").read_text(), (tmp_path / "o2" / "landmarks.csv").read_text()
  assert a == b and len(a.splitlines()) == N + 1
  assert [r[3] for r in read_csv(tmp_path / "o1" / "landmarks.csv")[1]][:6] == ["given"] + ["track"] * 4 + ["detect"]
  for o in ("o1", "o2"):
    doc = json.loads((tmp_path / o / "video.json").read_text())
    assert (doc["frames"], doc["given_frames"], doc["detect_frames"], doc["track_frames"], doc["fps_in"]) == \
        (N, 1, 2, 9, FPS)
    assert video_info(tmp_path / o / "overlay.mp4") == (N, W, H, FPS)
  # a missing / unreadable video: one line, exit 2
  (tmp_path / "junk.mp4").write_bytes(b"not a video" * 10)
  capsys.readouterr()
  assert cli.main([str(tmp_path / "junk.mp4"), "--out", str(tmp_path / "o3")] + common_args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "junk.mp4" in err[0]
  # without --video a folder of frames is a folder of photos (results.json, no video outputs)
  assert cli.main([str(folder), "--out", str(tmp_path / "o4"), "--no_mesh", "--no_overlay"] + common_args) == 0
  assert (tmp_path / "o4" / "results.json").exists() and not (tmp_path / "o4" / "video.json").exists()
