r"""``predict`` on videos: frames from a video file or a folder of frames -> per frame and face, 68 landmarks, head
pose and a track id, with the previous frame's landmarks placing the next frame's crop (tracking)::

  python predict.py VIDEO_FILE --checkpoint WORKDIR --out OUT [--redetect N] [--no_tracking] [--video_mesh]
  python predict.py FRAMES_DIR --video --fps 25 --checkpoint WORKDIR --out OUT

A video file is any file whose extension is in ``VIDEO_EXTS`` (read with OpenCV's ``cv2.VideoCapture``), or any
file with ``--video``; a folder is a video only with ``--video`` (its image files in natural order: ``f2`` before
``f10``; ``--fps``, default 30). Frames are streamed: one frame (and its faces) is in memory at a time.

Tracking rule (``TrackRule``, ``Tracker``): the detector (``--detector`` + the 68-point ``--landmarker``, as for
photos) runs on the first frame, on the frame ``redetect`` frames after the last detection (``--redetect``, default
30; 0 = only when needed), whenever the previous frame has no face, and when a track is lost. On the other frames
each face of the previous frame is TRACKED: its predicted 68 landmarks are passed to
``Predictor.predict_images(landmarks=...)``, so they place this frame's crop and draw its landmark map (``flm``
"given"). A tracked face is LOST when its new prediction has
* non-finite landmarks, or fewer than ``min_inside`` (0.5) of them inside the frame;
* a landmark box with a side under ``min_size`` (8) px or over twice the frame's larger side;
* a box centre moved by more than ``max_jump`` (0.5) x the previous box size (sqrt of its area);
* a box size more than ``max_scale`` (1.5) x larger or smaller than at the face's last detection (the model's own
  landmarks placing its next crop can feed back: on some photos the 2DASL CPU model's boxes shrink ~10% a frame);
* a 32x32 grey crop whose normalised correlation with the previous frame's crop of that face is below
  ``min_similarity`` (0.3): a cut, a blank frame, the face gone.
If any face is lost, the frame's tracked results are dropped and the detector runs on that same frame (a lost face
it finds again keeps its id). Detected faces take the id of the previous frame's face whose landmark box overlaps
theirs most (IoU > 0.3), else a new id. ``--no_tracking``: the detector on every frame (ids still carried over by
overlap). ``--landmarks FILE``: frames named in it (a folder's frame file names, a file's 0-based frame numbers)
use those faces (``source`` "given") and are followed from there like detections.

Files in OUT: ``landmarks.csv`` (``CSV_HEADER``: one row per frame per face; ``source`` detect | track | given;
box = the bounding box of the 68 predicted landmarks; yaw, pitch, roll in degrees; image pixels, 1-based pixel
centres, y down; flushed after every frame), ``overlay.mp4`` (``mp4v``, the input's fps and size: landmarks, box,
id; green = tracked, orange = detected; black for unreadable frames) and ``video.json`` (``process``'s summary).
Unreadable frames are reported in one line each and counted (``bad_frames``); Ctrl-C keeps what was written.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import sys
import time
from typing import Callable, Iterator, List, Optional

import numpy as np

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts",
              ".mts", ".ogv")
CSV_HEADER = (["frame", "time_s", "face_id", "source", "box_x0", "box_y0", "box_x1", "box_y1", "yaw", "pitch",
               "roll"] + [f"{a}{k}" for k in range(68) for a in "xy"])
MAX_BAD_RUN = 25  # a video file's reads failing this many times in a row end it (truncated stream)


def is_video_input(path: str, flag: bool = False) -> bool:
  """A video file by extension, or anything (a folder of frames, a file) with ``--video``."""
  return bool(flag) or (os.path.isfile(path) and path.lower().endswith(VIDEO_EXTS))


# ---------------------------------------------------------------------------------------------------- frames

@dataclasses.dataclass
class Frame:
  """One input frame: ``index`` (0-based), ``time_s``, ``name`` (a frame folder's relative file name, else the
  index as text), ``image`` (H, W, 3) uint8 RGB or None with ``error`` (one line) for an unreadable frame."""
  index: int
  time_s: float
  name: str
  image: Optional[np.ndarray] = None
  error: Optional[str] = None


def _natural_key(name: str):
  return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


class FrameReader:
  """Frames of a video file (``cv2.VideoCapture``) or a folder of images, one at a time (``iter``).

  ``fps``: frames per second (a file's own unless given; folders: given or 30); ``total``: the expected frame
  count (a file's header, which may be approximate; None when unknown); ``size``: (width, height) when known before
  reading. Raises ``ValueError`` (one line) for a file OpenCV cannot open or a folder without images. A file's read
  that fails and is followed by a good one is a bad frame; ``MAX_BAD_RUN`` failures in a row (or one at the
  header's frame count) end the stream.
  """

  def __init__(self, path: str, fps: Optional[float] = None):
    import cv2
    from jface.inference.cli import IMAGE_EXTS
    self.path, self.kind, self._cap = path, "folder" if os.path.isdir(path) else "file", None
    if self.kind == "folder":
      from jface.data.wild import list_images
      self.names = sorted(list_images(path, IMAGE_EXTS), key=_natural_key)
      if not self.names:
        raise ValueError(f"no frames ({', '.join(IMAGE_EXTS)}) under {path}")
      self.total, self.size, self.fps = len(self.names), None, float(fps or 30.0)
      return
    if not os.path.isfile(path):
      raise ValueError(f"no such video or folder: {path}")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
      raise ValueError(f"{path}: not a readable video (OpenCV cannot open it)")
    self._cap = cap
    own = cap.get(cv2.CAP_PROP_FPS)
    self.fps = float(fps or (own if np.isfinite(own) and own > 0 else 30.0))
    n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    self.total = int(n) if np.isfinite(n) and n > 0 else None
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    self.size = (w, h) if w > 0 and h > 0 else None

  def __iter__(self) -> Iterator[Frame]:
    if self.kind == "folder":
      from jface.data import common
      for i, name in enumerate(self.names):
        try:
          yield Frame(i, i / self.fps, name, common.read_image(os.path.join(self.path, name)))
        except ValueError as e:
          yield Frame(i, i / self.fps, name, error=" ".join(str(e).split()))
      return
    i, failed = 0, 0
    while True:
      ok, bgr = self._cap.read()
      if not ok or bgr is None:
        failed += 1
        if failed >= MAX_BAD_RUN or (self.total is not None and i + failed > self.total):
          return
        continue
      for k in range(failed):  # failures followed by a good frame: bad frames
        yield Frame(i, i / self.fps, str(i), error=f"{self.path}: frame {i} could not be decoded")
        i += 1
      failed = 0
      yield Frame(i, i / self.fps, str(i), np.ascontiguousarray(bgr[..., ::-1]))
      i += 1

  def close(self):
    if self._cap is not None:
      self._cap.release()


# ---------------------------------------------------------------------------------------------------- tracking

@dataclasses.dataclass
class TrackRule:
  """The tracking rule's settings (module docstring)."""
  tracking: bool = True
  redetect: int = 30
  max_jump: float = 0.5
  max_scale: float = 1.5
  min_similarity: float = 0.3
  min_size: float = 8.0
  min_inside: float = 0.5


@dataclasses.dataclass
class TrackedFace:
  """One face of one frame: ``track_id``, ``source`` (detect | track | given), the ``FaceResult``, its 32x32
  normalised grey crop ``thumb`` and ``anchor``: its size at its last detection (None = its own size)."""
  track_id: int
  source: str
  face: object
  thumb: np.ndarray = dataclasses.field(repr=False, default=None)
  anchor: Optional[float] = None


def landmark_box(pts: np.ndarray) -> np.ndarray:
  """(68, 2) points -> (4,) float32 (x0, y0, x1, y1) of the finite ones."""
  p = np.asarray(pts, np.float64)
  p = p[np.all(np.isfinite(p), -1)]
  return np.r_[p.min(0), p.max(0)].astype(np.float32)


def box_size(box) -> float:
  """sqrt of the (x0, y0, x1, y1) box's area."""
  return float(np.sqrt(max(box[2] - box[0], 0) * max(box[3] - box[1], 0)))


def _thumb(image: np.ndarray, roi_box) -> np.ndarray:
  """The face's crop as a 32x32 grey image normalised to zero mean, unit std (all zeros when flat)."""
  from jface.data import common
  g = common.crop_image(image, roi_box, 32).astype(np.float32).mean(-1)
  s = g.std()
  return (g - g.mean()) / s if s > 1.0 else np.zeros_like(g)


class Tracker:
  """Frame-by-frame faces with ids by the tracking rule (module docstring) over a ``Predictor``.

  ``step(image, index, given=None) -> list[TrackedFace]``; counters: ``detect_frames``, ``track_frames``,
  ``given_frames``, ``detect_faces``, ``track_faces``, ``lost`` (tracks lost by the checks), ``lost_reasons``,
  ``ended`` (tracks a detection did not find again), ``ids`` (ids handed out).
  """

  def __init__(self, predictor, rule: TrackRule = TrackRule()):
    self.predictor, self.rule = predictor, rule
    self.tracks: List[TrackedFace] = []
    self.last_detect: Optional[int] = None
    self.detect_frames = self.track_frames = self.given_frames = self.detect_faces = self.track_faces = 0
    self.lost = self.ended = self.ids = 0
    self.lost_reasons: dict = {}

  def lost_reason(self, prev: TrackedFace, face, thumb: np.ndarray, shape) -> Optional[str]:
    """Why a tracked face's new prediction is lost (None: kept)."""
    r, lm = self.rule, np.asarray(face.landmarks, np.float64)
    if not np.all(np.isfinite(lm)):
      return "non-finite"
    h, w = shape[:2]
    inside = (lm[:, 0] >= 0.5) & (lm[:, 0] <= w + 0.5) & (lm[:, 1] >= 0.5) & (lm[:, 1] <= h + 0.5)
    if inside.mean() < r.min_inside:
      return "out of frame"
    b, pb = landmark_box(lm), landmark_box(prev.face.landmarks)
    if min(b[2:] - b[:2]) < r.min_size or max(b[2:] - b[:2]) > 2 * max(h, w):
      return "degenerate box"
    if np.hypot(*((b[:2] + b[2:]) - (pb[:2] + pb[2:])) / 2) > r.max_jump * box_size(pb):
      return "jump"
    size, ref = box_size(b), max(prev.anchor or box_size(pb), 1e-6)
    if max(size / ref, ref / size) > r.max_scale:
      return "scale"
    if float(np.mean(thumb * prev.thumb)) < r.min_similarity:
      return "appearance"
    return None

  def _predict(self, image, landmarks=None):
    return self.predictor.predict_images([image], None if landmarks is None else [landmarks])[0]

  def _assign(self, faces, source: str, image) -> List[TrackedFace]:
    """New faces (detected / given) -> ids of the previous faces they overlap most (IoU > 0.3), else new ids."""
    from jface.inference import detect
    out = [TrackedFace(-1, source, f, _thumb(image, f.roi_box), box_size(landmark_box(f.landmarks)))
           for f in faces]
    if out and self.tracks:
      m = detect.iou(np.stack([landmark_box(t.face.landmarks) for t in out]),
                     np.stack([landmark_box(t.face.landmarks) for t in self.tracks]))
      while m.size and m.max() > 0.3:
        i, j = np.unravel_index(np.argmax(m), m.shape)
        out[i].track_id = self.tracks[j].track_id
        m[i, :], m[:, j] = -1, -1
    self.ended += len(self.tracks) - sum(t.track_id >= 0 for t in out)
    for t in out:
      if t.track_id < 0:
        t.track_id, self.ids = self.ids, self.ids + 1
    return out

  def step(self, image: np.ndarray, index: int, given=None) -> List[TrackedFace]:
    """Faces of frame ``index`` (RGB): ``given`` 68-point landmarks (68, 2) | (F, 68, 2) when known, else
    tracked from the previous faces or detected (the rule). Raises ``ValueError`` (one line) for a bad frame."""
    from jface.inference.faces import as_rgb
    image = as_rgb(image, f"frame {index}")
    r = self.rule
    if given is not None:
      self.tracks = self._assign(self._predict(image, given), "given", image)
      self.given_frames, self.last_detect = self.given_frames + 1, index
      return self.tracks
    due = self.last_detect is None or (r.redetect > 0 and index - self.last_detect >= r.redetect)
    if r.tracking and self.tracks and not due:
      faces = self._predict(image, np.stack([t.face.landmarks for t in self.tracks]))
      new = [TrackedFace(t.track_id, "track", f, _thumb(image, f.roi_box), t.anchor)
             for t, f in zip(self.tracks, faces)]
      reasons = [self.lost_reason(t, n.face, n.thumb, image.shape) for t, n in zip(self.tracks, new)]
      if not any(reasons):
        self.tracks, self.track_frames, self.track_faces = new, self.track_frames + 1, self.track_faces + len(new)
        return new
      for why in filter(None, reasons):
        self.lost += 1
        self.lost_reasons[why] = self.lost_reasons.get(why, 0) + 1
    self.tracks = self._assign(self._predict(image), "detect", image)
    self.detect_frames, self.detect_faces, self.last_detect = (self.detect_frames + 1,
                                                               self.detect_faces + len(self.tracks), index)
    return self.tracks


# ---------------------------------------------------------------------------------------------------- outputs

def _row(fr: Frame, t: TrackedFace) -> list:
  f = t.face
  pose = ["", "", ""] if f.pose is None else [f"{v:.3f}" for v in np.asarray(f.pose, np.float64)]
  return ([fr.index, f"{fr.time_s:.4f}", t.track_id, t.source] + [f"{v:.2f}" for v in landmark_box(f.landmarks)]
          + pose + [f"{v:.2f}" for v in np.asarray(f.landmarks, np.float64).reshape(-1)])


def draw(image: np.ndarray, faces: List[TrackedFace], tri=None) -> np.ndarray:
  """RGB frame with each face's landmarks (and shaded mesh when it has vertices and ``tri``:
  ``jface.inference.outputs.overlay``), landmark box and id -> BGR uint8 for the video writer."""
  import cv2
  from jface.inference import outputs
  out = np.ascontiguousarray(outputs.overlay(image, [t.face for t in faces], tri)[..., ::-1])
  th = max(1, round(min(image.shape[:2]) / 300))
  for t in faces:
    b = np.round(landmark_box(t.face.landmarks) - 1).astype(int)
    color = (40, 220, 40) if t.source == "track" else (0, 140, 255)
    cv2.rectangle(out, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), color, th)
    cv2.putText(out, f"{t.track_id} {t.source[0]}", (int(b[0]), max(int(b[1]) - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                0.4 * th, color, th, cv2.LINE_AA)
  return out


def process(predictor, reader: FrameReader, out_dir: str, rule: TrackRule = TrackRule(), overlay: bool = True,
            given: Optional[dict] = None, progress_every: float = 2.0, log: Callable = print,
            extra: Optional[dict] = None) -> dict:
  """All frames of ``reader`` through a ``Tracker`` -> ``out_dir``/landmarks.csv, overlay.mp4 (``overlay``),
  video.json; returns the video.json dict. ``given``: frame name -> 68-point landmarks (those frames use them,
  source "given"). A progress line every ``progress_every`` s (fps after the first frame, which compiles);
  Ctrl-C stops and keeps what was written (``interrupted``). Unreadable frames and frames the predictor rejects are
  reported (stderr) and counted."""
  import cv2
  os.makedirs(out_dir, exist_ok=True)
  tracker, tri = Tracker(predictor, rule), (predictor.triangles if predictor.dense else None)
  given = given or {}
  faces_per_frame: List[int] = []
  bad, writer, size, black = 0, None, reader.size, 0
  csv_path, video_path = os.path.join(out_dir, "landmarks.csv"), os.path.join(out_dir, "overlay.mp4")
  t0 = last = time.perf_counter()
  t_first = None
  interrupted = False
  fcsv = open(csv_path, "w", newline="")
  rows = csv.writer(fcsv)
  rows.writerow(CSV_HEADER)
  try:
    for fr in reader:
      faces: List[TrackedFace] = []
      if fr.image is not None:
        try:
          faces = tracker.step(fr.image, fr.index, given.get(fr.name))
        except ValueError as e:
          fr.error = " ".join(str(e).split())
      if fr.error is not None:
        bad += 1
        log(f"frame {fr.index} ({fr.name}): {fr.error}", file=sys.stderr)
      faces_per_frame.append(len(faces))
      rows.writerows(_row(fr, t) for t in faces)
      fcsv.flush()
      if overlay:
        if fr.error is None and size is None:
          size = (fr.image.shape[1], fr.image.shape[0])
        if writer is None and size is not None:
          writer = cv2.VideoWriter(video_path, cv2.VideoWriter_fourcc(*"mp4v"), reader.fps, size)
        if writer is None:
          black += 1  # before the frame size is known
        else:
          for _ in range(black):
            writer.write(np.zeros((size[1], size[0], 3), np.uint8))
          black = 0
          img = np.zeros((size[1], size[0], 3), np.uint8) if fr.error else draw(fr.image, faces, tri)
          writer.write(img if img.shape[1::-1] == size else cv2.resize(img, size))
      now = time.perf_counter()
      t_first = t_first or now
      if now - last >= progress_every:
        last, n = now, len(faces_per_frame)
        rate = f"{(n - 1) / (now - t_first):.1f} fps" if n > 1 else "first frame (compiling)"
        log(f"frame {n}/{reader.total or '?'}  {rate}  "
            f"({tracker.detect_frames} detected, {tracker.track_frames} tracked, {bad} bad)", flush=True)
  except KeyboardInterrupt:
    interrupted = True
    log(f"interrupted after {len(faces_per_frame)} frames: keeping what was written", file=sys.stderr)
  finally:
    fcsv.close()
    if writer is not None:
      writer.release()
    reader.close()
  secs = time.perf_counter() - t0
  n = len(faces_per_frame)
  doc = {
      "input": os.path.abspath(reader.path), "kind": reader.kind, "frames": n, "frames_expected": reader.total,
      "bad_frames": bad, "fps_in": round(reader.fps, 3), "seconds": round(secs, 3),
      "processing_fps": round(n / secs, 3) if secs > 0 else None,
      "processing_fps_after_first": (round((n - 1) / (t0 + secs - t_first), 3)
                                     if t_first and n > 1 and t0 + secs > t_first else None),
      "faces": int(sum(faces_per_frame)), "frames_with_faces": int(sum(k > 0 for k in faces_per_frame)),
      "detect_frames": tracker.detect_frames, "track_frames": tracker.track_frames,
      "given_frames": tracker.given_frames, "detect_faces": tracker.detect_faces, "track_faces": tracker.track_faces,
      "tracks": tracker.ids, "lost_tracks": tracker.lost, "lost_reasons": tracker.lost_reasons,
      "ended_tracks": tracker.ended, "tracking_rule": dataclasses.asdict(rule),
      "interrupted": interrupted, "landmarks_csv": "landmarks.csv",
      "overlay": "overlay.mp4" if writer is not None else None,
      "coordinates": "image pixels, 1-based pixel centres, y down; box = bounding box of the 68 landmarks",
      **(extra or {}), "faces_per_frame": faces_per_frame}
  with open(os.path.join(out_dir, "video.json"), "w") as f:
    json.dump(doc, f, indent=1)
  return doc


# ---------------------------------------------------------------------------------------------------- CLI

def run_cli(args) -> int:
  """``predict`` on a video (``jface.inference.cli`` calls this with its parsed arguments) -> exit status: 0 done,
  1 no frame could be read, 2 unusable arguments, 130 interrupted (outputs kept)."""
  from jface.core.face_model import MissingAssetError
  from jface.data.wild import read_landmarks_file
  from jface.inference import detect
  from jface.inference.predictor import Predictor
  from jface.train import checkpoint

  def fail(msg) -> int:
    print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2

  if args.redetect < 0:
    return fail(f"--redetect must be >= 0, got {args.redetect}")
  if args.fps is not None and not args.fps > 0:
    return fail(f"--fps must be > 0, got {args.fps}")
  try:
    reader = FrameReader(args.input, args.fps)
  except ValueError as e:
    return fail(e)
  given = {}
  try:
    if args.landmarks:  # names: a folder's frame file names, or a file's frame numbers (0-based)
      names, pts = read_landmarks_file(args.landmarks)
      given = {(str(int(n)) if n.strip().isdigit() else os.path.normpath(n)): p for n, p in zip(names, pts)}
    checkpoint.read_config(args.checkpoint)
    detector = detect.make_detector(args.detector, args.min_face_size, args.model_dir)
    pred = Predictor(args.checkpoint, args.bfm_dir, which=args.which, flm=args.flm, iterations=args.iterations,
                     detector=detector, landmarks=args.landmarker, model_dir=args.model_dir, mesh_map=args.mesh_map,
                     dense=args.video_mesh and not args.no_overlay, dense_bases_dir=args.dense_bases_dir,
                     max_batch=args.max_batch, min_face_size=args.min_face_size, max_faces=args.max_faces,
                     dlib_predictor=args.dlib_predictor)
    source = pred.finder.source()[0]
  except (OSError, ValueError, checkpoint.CheckpointError, MissingAssetError, detect.NoDetectorError) as e:
    reader.close()
    return fail(e)
  rule = TrackRule(tracking=not args.no_tracking, redetect=args.redetect)
  if rule.tracking and pred.use_flm and pred.flm_mode == "source":
    print("warning: --flm source draws every map from the landmark source: detection on every frame", file=sys.stderr)
    rule.tracking = False
  print(f"{reader.kind} {args.input}: {reader.total or '?'} frames at {reader.fps:g} fps; detector "
        f"{getattr(detector, 'kind', type(detector).__name__)}; 68-point landmarks: {source}; "
        + (f"tracking, redetect every {rule.redetect} frames" if rule.tracking else "detection on every frame"))
  doc = process(pred, reader, args.out, rule, overlay=not args.no_overlay, given=given,
                extra={"checkpoint": os.path.abspath(args.checkpoint), "landmark_source": source})
  print(f"{doc['frames']} frames ({doc['bad_frames']} bad), {doc['faces']} faces: {doc['detect_frames']} frames "
        f"detected, {doc['track_frames']} tracked, {doc['lost_tracks']} lost tracks; {doc['processing_fps']} fps "
        f"({doc['processing_fps_after_first']} after the first frame) -> {os.path.join(args.out, 'video.json')}")
  if doc["interrupted"]:
    return 130
  return 0 if doc["frames"] > doc["bad_frames"] else 1
