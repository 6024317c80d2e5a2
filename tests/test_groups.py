"""Grouped sources for multi-frame methods (PGN): Loader group ordering, synthetic_groups, groups:K:SPEC, clips:DIR."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from jface.core import crop
from jface.data import common, groups, registry
from jface.data import pipeline as pl
from jface.data.common import BadExample
from jface.data.synthetic_faces import SyntheticGroups

S = 120


def check_contract(ex, crop_size=S):
  for k in common.EXAMPLE_KEYS:
    assert k in ex, k
  assert ex["image"].shape == (crop_size, crop_size, 3) and ex["image"].dtype == np.uint8
  assert ex["params"].shape == (62,) and ex["params"].dtype == np.float32
  assert ex["landmarks"].shape == (68, 2) and ex["landmarks"].dtype == np.float32
  assert ex["landmarks_mask"].shape == (68,) and ex["landmarks_mask"].dtype == bool
  assert ex["roi_box"].shape == (4,) and isinstance(ex["yaw"], np.float32)
  assert isinstance(ex["group"], int)
  pl.check_example(ex)


def assert_whole_groups(batch, k):
  """Every batch row b*k..b*k+k-1 is one group (same ``group`` id), frames in order when none was replaced."""
  g = batch["group"].reshape(-1, k)
  assert batch["group"].dtype == np.int32
  assert (g == g[:, :1]).all(), g


# ------------------------------------------------------------------------------------------ Loader

class FakeGroups:
  """n_groups x k tiny examples; example g*k + j is frame j of group g (name ``gG_fJ``)."""

  def __init__(self, n_groups=6, k=3, bad=(), n=None, group_size="k"):
    self.k, self.n, self.bad = k, n_groups * k if n is None else n, set(bad)
    if group_size == "k":
      self.group_size = k
    elif group_size is not None:
      self.group_size = group_size

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if i in self.bad:
      raise common.bad(f"f{i}.jpg", "cannot decode image")
    g, j = divmod(i, self.k)
    return dict(image=np.full((8, 8, 3), i, np.uint8), params=np.zeros(62, np.float32), has_params=False,
                landmarks=np.zeros((68, 2), np.float32), landmarks_mask=np.zeros(68, bool),
                roi_box=np.array([0, 0, 8, 8], np.float32), yaw=np.float32(0), source="fake", name=f"g{g}_f{j}",
                group=g)


def test_loader_batches_whole_groups_in_a_fresh_order_per_epoch():
  loader = pl.Loader(FakeGroups(), 6, seed=3)
  assert loader.group_size == 3 and loader.steps_per_epoch == 3
  epochs = []
  for e in range(2):
    order = []
    for s in range(e * 3, e * 3 + 3):
      b = loader.batch(s)
      assert_whole_groups(b, 3)
      assert [n.split("_")[1] for n in b["name"]] == ["f0", "f1", "f2"] * 2
      order += list(b["group"][::3])
    assert sorted(order) == list(range(6))
    epochs.append(order)
  assert epochs[0] != epochs[1]
  for s, b in enumerate(loader.iter_from(0, num_steps=4)):  # threaded path = batch()
    np.testing.assert_array_equal(b["name"], loader.batch(s)["name"])
  ordered = pl.Loader(FakeGroups(), 6, seed=3, shuffle=False)
  assert list(ordered.batch(1)["group"]) == [2, 2, 2, 3, 3, 3]
  short = pl.Loader(FakeGroups(n_groups=5), 6, seed=0, drop_remainder=False)  # short last batch: one group
  assert [len(short.batch(s)["name"]) for s in range(3)] == [6, 6, 3]


def test_loader_group_errors():
  with pytest.raises(ValueError, match="multiples of the source's group_size 3"):
    pl.Loader(FakeGroups(n=17), 6, 0)
  with pytest.raises(ValueError, match="multiples of the source's group_size 3"):
    pl.Loader(FakeGroups(), 4, 0)
  for bad in (0, "3", True):
    with pytest.raises(ValueError, match="group_size must be an int"):
      pl.Loader(FakeGroups(group_size=bad), 6, 0)
  # group_size 1, or none: the plain example order (a 'group' key is just batched)
  plain = pl.Loader(FakeGroups(group_size=None), 4, 0)
  assert plain.group_size == 1 and plain.batch(0)["group"].dtype == np.int32
  np.testing.assert_array_equal(plain.batch(2)["name"], pl.Loader(FakeGroups(group_size=1), 4, 0).batch(2)["name"])
  with pytest.raises(ValueError, match="group must be an integer"):
    pl.check_example(dict(FakeGroups()[0], group=1.5))


def test_bad_frames_are_replaced_within_their_group():
  src = FakeGroups(bad={4} | {6, 7, 8})  # frame 1 of group 1; all of group 2
  loader = pl.Loader(src, 6, seed=1)
  names = []
  for s in range(3 * loader.steps_per_epoch):
    b = loader.batch(s)
    assert_whole_groups(b, 3)
    names += list(b["name"])
  assert not {"g1_f1", "g2_f0", "g2_f1", "g2_f2"} & set(names)
  rows = [names[i:i + 3] for i in range(0, len(names), 3)]
  assert ["g1_f0", "g1_f2", "g1_f2"] in rows  # frame 1 of group 1 -> frame 2 of group 1
  assert loader.stats["bad"] == 4
  with pytest.raises(RuntimeError, match="unreadable"):
    pl.Loader(FakeGroups(n_groups=2, bad=range(6)), 3, 0).batch(0)


# --------------------------------------------------------------------------------- synthetic_groups

def test_synthetic_groups_share_identity_and_vary_the_rest():
  src = SyntheticGroups(2, 3, seed=5)
  assert len(src) == 6 and src.group_size == 3
  seen = []
  render = src._render
  src._render = lambda rng, p, tex, name, source: seen.append((p.copy(), tex)) or render(rng, p, tex, name, source)
  exs = [src[i] for i in range(6)]
  for i, ex in enumerate(exs):
    check_contract(ex)
    assert ex["group"] == i // 3 and ex["has_params"] and ex["source"] == "synthetic_groups"
    assert ex["name"] == f"synthetic_groups_{i // 3:06d}_{i % 3:02d}"
  for a in range(6):
    for b in range(a + 1, 6):
      same = a // 3 == b // 3
      assert np.array_equal(exs[a]["params"][12:52], exs[b]["params"][12:52]) == same
      assert np.array_equal(seen[a][1], seen[b][1]) == same  # albedo (skin, hair, eye colours)
      assert not np.array_equal(exs[a]["params"][:12], exs[b]["params"][:12])  # own pose
      assert not np.array_equal(exs[a]["params"][52:], exs[b]["params"][52:])  # own expression
      assert not np.array_equal(exs[a]["image"], exs[b]["image"])
  assert len({round(float(ex["yaw"]), 3) for ex in exs}) == 6
  again = SyntheticGroups(2, 3, seed=5)[4]
  for k in again:
    np.testing.assert_array_equal(again[k], exs[4][k], err_msg=k)
  assert not np.array_equal(SyntheticGroups(2, 3, seed=6)[4]["params"], exs[4]["params"])
  with pytest.raises(IndexError):
    src[6]


def test_synthetic_groups_spec_and_loader():
  src = registry.build_source("synthetic_groups:3:2:5")
  assert len(src) == 6 and src.group_size == 2
  np.testing.assert_array_equal(src[3]["image"], SyntheticGroups(3, 2, seed=5)[3]["image"])
  assert registry.build_source("synthetic_groups:1:2").group_size == 2
  b = pl.Loader(src, 4, seed=0).batch(1)
  assert_whole_groups(b, 2)
  for spec in ("synthetic_groups:3", "synthetic_groups:3:0", "synthetic_groups:a:2", "synthetic_groups:1:2:3:4"):
    with pytest.raises(ValueError, match="expected synthetic_groups:N_IDS:K"):
      registry.build_source(spec)


# ----------------------------------------------------------------------------------- groups:K:SPEC

def _crops_folder(root, origins):
  rng = np.random.default_rng(0)
  (root / "crops").mkdir(parents=True)
  names = [f"x{i}.jpg" for i in range(len(origins))]
  for n in names:
    cv2.imwrite(str(root / "crops" / n), rng.integers(0, 256, (S, S, 3), dtype=np.uint8))
  meta = dict(names=np.array(names), roi_box=np.tile(np.float32([0, 0, S, S]), (len(names), 1)),
              fan_pts68_crop=rng.uniform(20, 100, (len(names), 68, 2)).astype(np.float32),
              yaw=np.zeros(len(names), np.float32))
  if origins[0] is not None:
    meta["source_name"] = np.array(origins)
  np.savez(root / "meta.npz", **meta)
  return str(root)


def test_groups_of_a_profiled_crops_folder(tmp_path):
  d = _crops_folder(tmp_path / "prof", ["a.jpg", "b.jpg", "a.jpg", "c.jpg", "b.jpg", "a.jpg", "b.jpg", "b.jpg"])
  src = registry.build_source(f"groups:2:crops:{d}")
  # a: 0 2 (5 dropped), b: 1 4, 6 7, c: too few
  assert len(src) == 6 and src.group_size == 2 and src.origins == ["a.jpg", "b.jpg", "c.jpg"]
  assert [src[i]["name"] for i in range(6)] == ["x0.jpg", "x2.jpg", "x1.jpg", "x4.jpg", "x6.jpg", "x7.jpg"]
  assert [src[i]["group"] for i in range(6)] == [0, 0, 1, 1, 1, 1]
  check_contract(src[0])
  b = pl.Loader(src, 4, seed=2).batch(0)
  assert_whole_groups(b, 2)
  with pytest.raises(ValueError, match="no origin has >= 5 examples"):
    registry.build_source(f"groups:5:crops:{d}")
  plain = _crops_folder(tmp_path / "plain", [None, None])
  with pytest.raises(ValueError, match="groups need a crops folder with meta.npz source_name") as e:
    registry.build_source(f"groups:2:crops:{plain}")
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="source_name"):
    registry.build_source("groups:2:synthetic:4")
  with pytest.raises(ValueError, match="expected groups:K:SPEC"):
    registry.build_source(f"groups:crops:{d}")


# ------------------------------------------------------------------------------------- clips:DIR

def _write_pts(path, pts):
  with open(path, "w") as f:
    f.write("version: 1\nn_points:  68\n{\n" + "".join(f"{x:.3f} {y:.3f}\n" for x, y in pts) + "}\n")


def _clips_folder(root):
  rng = np.random.default_rng(1)
  frames = {"clipB": ["f2.png", "f10.png"], "clipA": ["0001.jpg", "0002.jpg", "0003.jpg", "0004.jpg", "0005.jpg"]}
  truth = {}
  for clip, names in frames.items():
    (root / clip).mkdir(parents=True)
    for n in names:
      pts = np.stack([rng.uniform(50, 110, 68), rng.uniform(40, 100, 68)], 1)
      cv2.imwrite(str(root / clip / n), rng.integers(0, 256, (140, 160, 3), dtype=np.uint8))
      _write_pts(root / clip / (os.path.splitext(n)[0] + ".pts"), pts)
      truth[f"{clip}/{n}"] = pts
  (root / "empty").mkdir()
  (root / "notes.txt").write_text("not a clip")
  return str(root), truth


def test_clips_source(tmp_path):
  d, truth = _clips_folder(tmp_path / "clips")
  src = registry.build_source(f"clips:{d}")
  assert src.group_size == 2 and src.clips == ["clipA", "clipB"]
  assert src.names == ["clipA/0001.jpg", "clipA/0002.jpg", "clipA/0003.jpg", "clipA/0004.jpg",
                       "clipB/f2.png", "clipB/f10.png"]
  for i in (0, 5):
    ex = src[i]
    check_contract(ex)
    pts = truth[ex["name"]]
    assert ex["group"] == (0 if i < 4 else 1) and not ex["has_params"] and not ex["params"].any()
    assert ex["landmarks_mask"].all() and ex["source"] == "clips"
    np.testing.assert_array_equal(ex["roi_box"], common.roi_box_from_landmarks(pts, image_shape=(140, 160)))
    np.testing.assert_allclose(crop.crop_to_image(ex["landmarks"], ex["roi_box"]), pts, atol=1e-3)
  assert len(registry.build_source(f"clips:{d}:3")) == 3
  # corrupt and missing .pts: one-line BadExample naming the file; the Loader keeps groups whole
  with open(tmp_path / "clips" / "clipA" / "0002.pts", "w") as f:
    f.write("version: 1\nn_points: 68\n{\n1 2\n}\n")
  os.remove(tmp_path / "clips" / "clipB" / "f10.pts")
  with pytest.raises(BadExample, match=r"0002\.pts: expected 68 lines") as e:
    src[1]
  assert "\n" not in str(e.value)
  with pytest.raises(BadExample, match=r"f10\.pts: cannot read file"):
    src[5]
  loader = pl.Loader(src, 2, seed=0)
  rows = set()
  for s in range(loader.steps_per_epoch):
    b = loader.batch(s)
    assert_whole_groups(b, 2)
    rows.add(tuple(b["name"]))
  assert rows == {("clipA/0001.jpg", "clipA/0001.jpg"), ("clipA/0003.jpg", "clipA/0004.jpg"),
                  ("clipB/f2.png", "clipB/f2.png")}  # a bad frame -> the other frame of its clip's group
  assert sorted(loader.bad_indices) == [1, 5]
  # bad folders
  (tmp_path / "none" / "sub").mkdir(parents=True)
  with pytest.raises(ValueError, match="no clips"):
    registry.build_source(f"clips:{tmp_path / 'none'}")
  with pytest.raises(ValueError, match="no clip has >= 9 frames"):
    registry.build_source(f"clips:{d}:9")
  with pytest.raises(ValueError, match="expected clips:DIR"):
    registry.build_source(f"clips:{d}:x")


def test_read_pts_errors(tmp_path):
  p = tmp_path / "a.pts"
  p.write_text("version: 1\nn_points: 5\n{\n1 2\n}\n")
  with pytest.raises(BadExample, match="expected n_points: 68"):
    groups.read_pts(str(p))
  p.write_text("garbage")
  with pytest.raises(BadExample, match=r"a\.pts: not an iBUG \.pts file"):
    groups.read_pts(str(p))
  p.write_text("version: 1\nn_points: 68\n{\n" + "1 x\n" * 68 + "}\n")
  with pytest.raises(BadExample, match="bad coordinate"):
    groups.read_pts(str(p))
