"""tools/cpu_ablation.py (the results table it writes into docs/RESULTS.md) and tools/compare_metrics.py."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np

from tests.helpers.fakes import ROOT


def _load(name="cpu_ablation"):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_table_rows_from_results(tmp_path):
  tool = _load()
  run = tmp_path / "cpu_base"
  (run / "eval_dev").mkdir(parents=True)
  nme = {"bins": [3.0, 4.5, 6.25], "mean_of_bins": 4.583333, "overall": 4.1}
  json.dump({"nme_2d_68": nme, "nme_3d_68": {"overall": 7.126}}, open(run / "eval_dev" / "results.json", "w"))
  json.dump({"step": 16000, "elapsed_s": 2712.0}, open(run / "results.json", "w"))
  lines = tool.table(str(tmp_path)).splitlines()
  assert len(lines) == 3  # header, rule, the one finished variant (the others have no results yet)
  assert lines[2] == ("| `:cpu_base` base (RGB, L3d) | 3.000 | 4.500 | 6.250 | **4.583** | 4.100 | 7.13 | — | — | — "
                      "| 16000 | 45 min |")
  json.dump({"nme_2d_68": nme, "nme_3d_68": {"overall": 7.126, "mean_of_bins": 7.5}, "nme_dense_3d":
             {"mean_of_bins": 6.25}, "nme_icp": {"mean_of_bins": 2.0}}, open(run / "eval_dev" / "results.json", "w"))
  assert tool.table(str(tmp_path)).splitlines()[2].endswith("| 7.13 | 7.500 | 6.250 | 2.000 | 16000 | 45 min |")


def test_missing_dev_split_is_one_line(tmp_path, capsys):
  tool = _load()
  assert tool.main(["--root", str(tmp_path), "--dev_dir", str(tmp_path / "nope")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "missing dev split" in err[0]


def test_overrides_after_double_dash_reach_train(tmp_path, monkeypatch):
  tool = _load()
  calls = []
  monkeypatch.setattr(tool.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
  (tmp_path / "dev").mkdir()
  (tmp_path / "dense").mkdir()
  assert tool.main(["--root", str(tmp_path), "--variants", "cpu_sc", "--dev_dir", str(tmp_path / "dev"),
                    "--dense_bases_dir", str(tmp_path / "dense"), "--", "--config.num_steps=3"]) == 0
  train, evaluate = calls
  assert train[1:] == ["train.py", "--config=configs/2dasl.py:cpu_sc", f"--workdir={tmp_path}/cpu_sc",
                       "--config.num_steps=3"]
  assert evaluate[1] == "evaluate.py" and evaluate[evaluate.index("--out") + 1] == f"{tmp_path}/cpu_sc/eval_dev"
  assert evaluate[evaluate.index("--dense_bases_dir") + 1] == f"{tmp_path}/dense"


def test_anchor_errors_reproduce_the_oracle(dev_dir, bfm_dir):
  """The CED's anchor curves are the oracle numbers of ../shared/README.md (mean of the three |yaw| bins)."""
  from jface.eval import metrics
  tool = _load()
  errors = tool.anchor_errors(str(dev_dir), str(bfm_dir))
  yaw = np.abs(np.load(os.path.join(dev_dir, "meta.npz"))["yaw"])
  got = {k: metrics.yaw_bin_summary(v, yaw)["mean_of_bins"] for k, v in errors.items()}
  np.testing.assert_allclose(got["released 2DASL"], 3.4631, atol=1e-3)
  np.testing.assert_allclose(got["FAN input landmarks"], 5.4962, atol=1e-3)


def test_table_only_on_a_new_root(tmp_path, capsys):
  tool = _load()
  root = tmp_path / "new" / "root"
  assert tool.main(["--root", str(root), "--table_only"]) == 0
  assert (root / "table.md").read_text().splitlines()[0].startswith("| variant |")


def _write_metrics(path, rows):
  path.mkdir(parents=True, exist_ok=True)
  with open(path / "metrics.jsonl", "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
    f.write('{"step": 9, "prefix": "tr')  # a line cut short by a kill is skipped


def test_compare_metrics_exact_and_tolerance(tmp_path, capsys):
  tool = _load("compare_metrics")
  before = [{"step": 1, "prefix": "train", "loss": 2.0, "l3d": 1.0, "time": 5.0},
            {"step": 1, "prefix": "dev", "nme_mean_of_bins": 10.0}]
  after = [dict(before[0], time=99.0), dict(before[1], nme_mean_of_bins=10.000001)]
  _write_metrics(tmp_path / "a", before)
  _write_metrics(tmp_path / "b", after)
  assert tool.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0  # time ignored; train values identical
  out = capsys.readouterr().out.strip().splitlines()
  assert out[-1] == ("compared 3 values over 2 records: 1 differ, worst relative difference 1.00e-07 "
                     "(dev: 1.00e-07)")
  _write_metrics(tmp_path / "c", [dict(before[0], loss=2.0002), before[1]])
  assert tool.main([str(tmp_path / "a"), str(tmp_path / "c")]) == 1
  assert tool.main([str(tmp_path / "a"), str(tmp_path / "c"), "--rtol", "1e-3"]) == 0
  assert tool.main([str(tmp_path / "a"), str(tmp_path / "nope")]) == 2
