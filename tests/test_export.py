"""``jface.export``: a workdir's predict function as a ``jax.export`` artifact (and ONNX), reloaded with
``jface.export.load`` and compared with ``Predictor.predict_crops`` on the same crops.

Tiny models at their initial state (written by ``tests.helpers.fakes``): a 2DASL CNN with the landmark map, a
2DASL CNN on RGB only and a width-1/8 PRNet on a 32 x 32 input; all on the synthetic face model (dense vertices
included). ONNX (when the onnx extra is installed): both 2DASL models; PRNet does not convert (jax2onnx has no
``transpose_kernel`` transposed conv nor a batched SVD).
"""
from __future__ import annotations

import contextlib
import io
import json
import os

import jax
import numpy as np
import pytest

from jface import configs, export
from jface.inference.predictor import Predictor
from tests.helpers.fakes import initial_state, tiny_2dasl_config, write_workdir

S = 120  # the synthetic face model's crop size


def _tiny_prnet():
  c = configs.load("prnet:smoke")
  c.image_size = 32
  c.model_kwargs = {"width_mult": 0.125, "bn_momentum": 0.9}
  return c


@pytest.fixture(scope="module")
def twodasl(tmp_path_factory):
  """(workdir, Predictor, export dir) of the landmark-map 2DASL model, exported with export_predictor."""
  root = tmp_path_factory.mktemp("export_2dasl")
  c = tiny_2dasl_config(True)
  wd = str(write_workdir(root / "wd", c, initial_state(c), 7))
  pred = Predictor(wd, max_batch=4, detector="haar", landmarks="none")
  export.export_predictor(pred, str(root / "out"), dense=True, source={"checkpoint": wd, "which": "latest"})
  return wd, pred, str(root / "out")


@pytest.fixture(scope="module")
def prnet(tmp_path_factory):
  """(workdir, Predictor, export dir) of the tiny PRNet (no dense vertices: their compile is the slow part, and
  2DASL covers them)."""
  root = tmp_path_factory.mktemp("export_prnet")
  c = _tiny_prnet()
  wd = str(write_workdir(root / "wd", c, initial_state(c), 3))
  pred = Predictor(wd, max_batch=4, detector="haar", landmarks="none")
  export.export_predictor(pred, str(root / "out"), source={"checkpoint": wd, "which": "latest"})
  return wd, pred, str(root / "out")


@pytest.fixture(scope="module")
def rgb_cli(tmp_path_factory):
  """(workdir, export dir, exit status, stdout) of the RGB-only 2DASL model exported by the CLI for cpu, with
  --onnx when the onnx extra is installed."""
  root = tmp_path_factory.mktemp("export_rgb")
  c = tiny_2dasl_config(False)
  wd = str(write_workdir(root / "wd", c, initial_state(c), 0))
  argv = ["--checkpoint", wd, "--out", str(root / "out"), "--platforms", "cpu", "--which", "latest"]
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    rc = export.main(argv + (["--onnx"] if export.onnx_available() is None else []))
  return wd, str(root / "out"), rc, buf.getvalue()


def _crops(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, S, S, 3), dtype=np.uint8)


def _assert_outputs(got, want, names):
  assert list(got) == names
  for k in names:
    ref = np.asarray(getattr(want, k))
    assert got[k].shape == ref.shape and got[k].dtype == np.float32, k
    tol = 1e-4 * S if k in ("landmarks", "vertices") else 1e-4 * (1 + np.abs(ref).max())
    np.testing.assert_allclose(got[k], ref, rtol=0, atol=tol, err_msg=k)


@pytest.mark.parametrize("which", ["twodasl", "prnet"])
def test_export_matches_predictor(which, request):
  """The reloaded artifact on batch sizes 3 and 1 (one symbolic-batch export) equals predict_crops (2DASL with
  dense vertices); for 2DASL with given map points (NaN and masked-out points not drawn) and with the default
  mean-face map."""
  _, pred, out = request.getfixturevalue(which)
  run = export.load(out)
  dense = which == "twodasl"
  names = ["landmarks", "pose", "params", "vertices"] if dense else ["landmarks", "pose"]
  crops = _crops(3)
  feeds = [()]
  if pred.use_flm:
    rng = np.random.default_rng(1)
    pts = rng.uniform(1, S, (3, 68, 2)).astype(np.float32)
    pts[0, :5] = np.nan
    feeds.append((pts, rng.uniform(size=(3, 68)) > 0.2))
  for feed in feeds:
    want = pred.predict_crops(crops, *feed, dense=dense)
    _assert_outputs(run(crops, *feed), want, names)
    first = jax.tree_util.tree_map(lambda a: a[:1], want)  # rows are independent (eval-mode batch norm)
    _assert_outputs(run(crops[:1], *[a[:1] for a in feed]), first, names)


def test_export_json_and_platforms(twodasl, prnet):
  for (wd, pred, out), method in ((twodasl, "2dasl"), (prnet, "prnet")):
    meta = json.load(open(os.path.join(out, export.META)))
    assert meta["method"] == method and meta["crop_size"] == S and meta["step"] == int(pred.state.step)
    assert meta["platforms"] == ["cpu", "cuda"] and meta["jax_version"] == jax.__version__
    assert meta["checkpoint"] == os.path.abspath(wd) and meta["which"] == "latest"
    assert meta["variant"] == "smoke" and meta["dense"] == (method == "2dasl")
    assert meta["topology"] == ("synthetic" if method == "2dasl" else None)
    inputs = [(i["name"], i["shape"], i["dtype"]) for i in meta["inputs"]]
    want = [("image", ["B", S, S, 3], "uint8")]
    if method == "2dasl":
      want += [("flm_landmarks", ["B", 68, 2], "float32"), ("landmarks_mask", ["B", 68], "bool")]
      np.testing.assert_array_equal(np.asarray(meta["mean_flm_landmarks"], np.float32), pred._mean_flm)
      assert meta["empty_map"] is pred.empty_map
    assert inputs == want
    assert meta["outputs"][0] == {"name": "landmarks", "shape": ["B", 68, 3], "dtype": "float32"}
    assert meta["files"] == {"jax": "predict.jax"}
    exp = export.load(out).exported
    assert exp.platforms == ("cpu", "cuda")
    assert str(exp.in_avals[0].shape[0]) == "B" and len(exp.in_avals) == len(want)  # weights are baked in
  # only the arrays predict reads: PRNet without vertices holds its weights, not the face model's dense arrays
  weights = sum(np.size(a) for a in jax.tree_util.tree_leaves((prnet[1].state.params, prnet[1].state.batch_stats)))
  dense = sum(np.size(a) for a in (prnet[1].model.w_shp_dense, prnet[1].model.w_exp_dense))
  assert 4 * weights < os.path.getsize(os.path.join(prnet[2], "predict.jax")) < 4 * weights + 2 * dense // 3


def test_cli_errors(twodasl, tmp_path, capsys, monkeypatch):
  wd = twodasl[0]
  cases = [(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "no checkpoint at"),
           (["--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")], "config.json")]
  (tmp_path / "file").write_text("x")
  cases += [(["--checkpoint", wd, "--out", str(tmp_path / "file")], "is not a folder"),
            (["--checkpoint", wd, "--out", str(tmp_path / "o"), "--platforms", "cpu,gpu"], "unknown platforms gpu"),
            (["--checkpoint", wd, "--out", str(tmp_path / "o"), "--which", "best"], "no checkpoints in")]
  for argv, text in cases:
    assert export.main(argv) == 2
    err = capsys.readouterr().err
    assert text in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
  monkeypatch.setattr(export, "onnx_available", lambda: "jax2onnx not installed: pip install -e '.[onnx]'")
  assert export.main(["--checkpoint", wd, "--out", str(tmp_path / "o"), "--onnx"]) == 2
  err = capsys.readouterr().err
  assert "pip install -e '.[onnx]'" in err and err.count("\n") == 1
  assert not os.path.exists(tmp_path / "o")
  with pytest.raises(export.ExportError, match="no predict.jax and export.json in"):
    export.load(str(tmp_path))


def test_onnx_conversion_failure_keeps_jax_export(twodasl, tmp_path, monkeypatch):
  """An op jax2onnx cannot convert (here: simulated) gives one line; predict.jax and export.json are written."""
  j2o = pytest.importorskip("jax2onnx", reason="the ONNX export needs the onnx extra: pip install -e '.[onnx]'")
  pytest.importorskip("onnxruntime", reason="the ONNX export needs the onnx extra: pip install -e '.[onnx]'")

  def fail(*a, **k):
    raise NotImplementedError("scatter pattern\nnot supported")
  monkeypatch.setattr(j2o, "to_onnx", fail)
  with pytest.raises(export.OnnxConversionError, match="NotImplementedError: scatter pattern not supported"):
    export.export_predictor(twodasl[1], str(tmp_path), platforms=("cpu",), onnx=True)
  assert sorted(os.listdir(tmp_path)) == ["export.json", "predict.jax"]
  assert json.load(open(tmp_path / "export.json"))["platforms"] == ["cpu"]


def test_cli(rgb_cli):
  _, out, rc, stdout = rgb_cli
  assert rc == 0 and stdout.count("\n") == 1 and stdout.startswith("exported 2dasl (smoke, step 0) for cpu to ")
  meta = json.load(open(os.path.join(out, export.META)))
  assert meta["platforms"] == ["cpu"] and [i["name"] for i in meta["inputs"]] == ["image"]
  assert [o["name"] for o in meta["outputs"]] == ["landmarks", "pose", "params"]
  assert "mean_flm_landmarks" not in meta
  got = export.load(out)(_crops(2))
  assert got["landmarks"].shape == (2, 68, 3) and np.all(np.isfinite(got["landmarks"]))


def test_onnx_matches_jax_export(rgb_cli):
  """The RGB-only 2DASL model through jax2onnx (fixed batch 1) in onnxruntime equals the jax export (which equals
  predict_crops: test_export_matches_predictor)."""
  pytest.importorskip("jax2onnx", reason="the ONNX export needs the onnx extra: pip install -e '.[onnx]'")
  ort = pytest.importorskip("onnxruntime", reason="the ONNX export needs the onnx extra: pip install -e '.[onnx]'")
  _, out, _, _ = rgb_cli
  meta = json.load(open(os.path.join(out, export.META)))
  assert meta["files"]["onnx"] == "predict.onnx" and meta["onnx_batch"] == 1
  sess = ort.InferenceSession(os.path.join(out, "predict.onnx"), providers=["CPUExecutionProvider"])
  assert [i.name for i in sess.get_inputs()] == ["image"]
  names = [o.name for o in sess.get_outputs()]
  assert names == ["landmarks", "pose", "params"]
  crops = _crops(1, 5)
  got = dict(zip(names, sess.run(None, {"image": crops})))
  want = export.load(out)(crops)
  for k in names:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4 * S, err_msg=k)


def test_onnx_landmark_map_model_matches_jax_export(twodasl, tmp_path):
  """The 2DASL model with the landmark-map input (drawn in the graph: one-hot rows x columns, no scatter) through
  jax2onnx in onnxruntime equals its jax export, with NaN / masked points."""
  pytest.importorskip("jax2onnx", reason="the ONNX export needs the onnx extra: pip install -e '.[onnx]'")
  ort = pytest.importorskip("onnxruntime", reason="the ONNX export needs the onnx extra: pip install -e '.[onnx]'")
  _, pred, _ = twodasl
  out = str(tmp_path / "onnx")
  export.export_predictor(pred, out, platforms=("cpu",), onnx=True)
  sess = ort.InferenceSession(os.path.join(out, "predict.onnx"), providers=["CPUExecutionProvider"])
  assert [i.name for i in sess.get_inputs()] == ["image", "flm_landmarks", "landmarks_mask"]
  rng = np.random.default_rng(3)
  pts = rng.uniform(1, S, (1, 68, 2)).astype(np.float32)
  mask = rng.uniform(size=(1, 68)) > 0.2
  pts[0, 5] = np.nan
  feed = {"image": _crops(1, 9), "flm_landmarks": np.nan_to_num(pts), "landmarks_mask": mask & np.isfinite(pts).all(-1)}
  names = [o.name for o in sess.get_outputs()]
  got = dict(zip(names, sess.run(None, feed)))
  want = export.load(out)(**feed)
  for k in names:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4 * S, err_msg=k)
