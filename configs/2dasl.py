r"""2DASL training configs: ``python train.py --config configs/2dasl.py[:VARIANT] --workdir DIR``.

Variants (``get_config(arg)``):

* (default) -- the paper's settings (Tu et al. 2019, Sec. 4.1) on real data: ResNet-50 in the 2DASL layout,
  RGB + landmark map input, L = L3d + 0.005 L2d-con + 0.005 L3d-con + 1 Lcyc + 0.005 Lsc, regressor SGD from
  5e-5 with exponential decay, critic Adam 1e-4, batch 32 + 32. Needs ``--config.data.train_3d`` (300W-LP:
  ``tfds:the300w_lp`` or ``mat:/path/300W_LP/<subset>``), ``--config.data.train_2d`` (in-the-wild images with
  68-point landmarks: ``folder:/path/images:/path/landmarks.csv``), ``--config.data.dev`` and
  ``--config.bfm_dir`` (3DDFA's train.configs). Not run here (no 300W-LP, no GPU): no measured result yet.
* ``:smoke`` -- the embedded default: synthetic faces rendered by our own face model (1024 train faces cached in
  memory, 64 fixed dev faces), ResNet-18 at width 16 with CoordConv channels, the full cyc+sc loss, batch 8 + 8,
  Adam 3e-3 falling 10x over 800 steps, no augmentation; no download.
  Command: ``python train.py --config configs/2dasl.py:smoke --workdir /tmp/jface-smoke``.
  Measured (2026-12-02, idle 2-core CPU machine): 4 min 02 s, dev 2D NME mean of bins 9.049 vs 15.757 for the mean
  face, 3D NME 14.11 vs 38.75. The recipe was chosen among six measured ones (docs/RESULTS.md, "the :smoke run").
* ``:base`` / ``:cyc`` / ``:sc`` -- the paper's ablations (Sec. 4.4) on the default's data: ``base`` = RGB only,
  L3d only; ``cyc`` = RGB + FLM with the self-supervision losses (no critic); ``sc`` = RGB only with the
  self-critic. The default is cyc+sc. Not run here either (no measured result yet).
* ``:cpu`` (cyc+sc) and ``:cpu_base`` / ``:cpu_cyc`` / ``:cpu_sc`` (+ ``:cpu_base_flm``, base with the FLM input,
  not in the paper) -- the paper's experiment at the scale of a 2-core CPU (issue 6), on ``../shared/data``: 3D
  labels from the 800 ``aflw2000_3d_train`` images (.mat fits), 2D-only stream = the 10k ``aflw_wild`` crops (21
  GT points), FAN landmarks as the FLM input, evaluation on ``aflw2000_3d_dev``. ResNet-18 at width 16 with
  CoordConv input channels, 120x120, batch 16 + 16, Adam 3e-3 falling 10x, the paper's lambdas. Each variant gets
  ~45 min of wall-clock (``CPU_STEPS``). Command (the paper's four, then the table):
  ``python tools/cpu_ablation.py --root /tmp/jface-cpu`` (``--variants cpu_base_flm`` for the fifth); one variant:
  ``python train.py --config configs/2dasl.py:cpu --workdir /tmp/jface-cpu/cpu``.
  Measured (2026-11-21/22, 2-core CPU, dev split, 2D NME mean of yaw bins; docs/RESULTS.md): ``:cpu`` 5.650 (bins
  4.014 / 5.811 / 7.124) in 42 min; ``:cpu_cyc`` 5.478 in 37 min; ``:cpu_sc`` 8.461 in 37 min; ``:cpu_base`` 7.304
  in 48 min; ``:cpu_base_flm`` 5.305 in 47 min. Anchors: FAN input 5.496, released 2DASL 3.463. 3D NME: 16.19 /
  42.65 / 16.40 / 26.16 / 24.32 (released 5.34).
  Backbone and learning rate were chosen on a hold-out of train. These runs used the 2D-form L3d weights (now
  ``--config.l3d_weights=2d``; the 3D form, the default since, keeps 2D and learns depth: docs/RESULTS.md) and the
  plain flax layers (``model_kwargs`` ``conv1x1="conv", bn="flax"``); the default fast layers compute the same
  step to 1e-7 but a rerun follows another trajectory and lands within the run-to-run spread (docs/RESULTS.md,
  "Behaviour check").

* ``:cpu_photo`` -- ``:cpu_base_flm`` for real photos (issue 12): half of the training landmark maps come from the
  test-time landmark source (MediaPipe's face mesh + the 468 -> 68 map, out-of-fold on the train photos) and a
  fifth are empty, so the model reads the maps ``predict`` draws on a user's photo and also works without one.
  Commands (after the optional photo set-up in the README)::

    python -m jface.inference.mesh68 landmarks --data ../shared/data/aflw2000_3d_train \
        --out ~/.cache/jface/mediapipe/mesh68_aflw2000_3d_train.npz
    python train.py --config configs/2dasl.py:cpu_photo --workdir /tmp/jface-cpu/cpu_photo
    python evaluate.py photos --data_dir ../shared/data/aflw2000_3d_dev --checkpoint /tmp/jface-cpu/cpu_photo --out OUT

  Measured (2026-12-02, 2-core CPU at load ~2-4, 38 min 53 s): dev 2D NME 5.817 on the benchmark crops with FAN
  maps, 6.405 for the whole pipeline on the 200 original photos (99 % of faces found); docs/RESULTS.md, "Real
  photos".

* ``:cpu_best`` = ``:cpu_fit`` -- the recipe to take on 2 CPU cores (issue 14): ``:cpu_base_flm`` (3D-form L3d)
  whose regressor starts from the 3DMM fit of its landmark-map points and learns the correction (``fit_start``,
  ``jface/methods/twodasl/fit_start.py``), 4000 steps, a 100-image hold-out of the train split that chooses the
  checkpoint (``best/``). Commands::

    python train.py --config configs/2dasl.py:cpu_best --workdir W            # ~9 min on 2 cores
    python evaluate.py --dataset aflw2000_3d --data_dir ../shared/data/aflw2000_3d_dev --checkpoint W \
        --which best --dense_bases_dir ../shared/data/3dmm_dense --out W/eval_dev

  Measured (2026-12-02, 2-core CPU, three seeds; docs/RESULTS.md "Starting the regressor from the landmark fit"):
  dev 2D NME 3.356 +- 0.018 (3.373 / 3.357 / 3.338), 3D NME 6.139 +- 0.125, dense 3D 5.559, ICP 1.891; the
  fit alone scores 3.698 (3D 6.233), the released 2DASL model 3.463 (3D 5.682). These use the benchmark's FAN
  landmark maps; on whole photos through ``predict``'s detector and face mesh it scores 7.215 (seed 0; ``evaluate.py
  photos``), worse than ``:cpu_photo`` (6.405), the variant to take for photos without given landmarks.
  Use ``--which best`` with ``predict`` and ``export`` too.
  The former ``:cpu_best`` (no fit: ``:cpu_base_flm --config.num_steps=4000 --config.data.holdout=100``) scored
  5.027 +- 0.078 over three seeds (3D 7.573 +- 0.140).

Stage 2 (fine-tuning with the vertex distance cost): ``--config.stage=2 --config.init_from=WORKDIR_OF_STAGE_1``.
Any field can be overridden on the command line, e.g. ``--config.num_steps=1000``.
"""
from __future__ import annotations

import ml_collections

PAPER_LAMBDAS = dict(l2d_con=0.005, l3d_con=0.005, cyc=1.0, sc=0.005)
VARIANTS = ("default", "smoke", "base", "cyc", "sc", "cpu", "cpu_base", "cpu_cyc", "cpu_sc", "cpu_base_flm",
            "cpu_photo", "cpu_best", "cpu_fit")
SHARED = "../shared/data"  # the shared/ data folder beside the repository (override the data.* fields)


def _set_variant(config: ml_collections.ConfigDict, variant: str) -> None:
  """Ablation switches (paper Sec. 4.4)."""
  variant = variant.removeprefix("cpu_") if variant.startswith("cpu_") else variant
  if variant == "base":
    config.use_flm, config.use_cyc, config.use_sc = False, False, False
  elif variant in ("base_flm", "photo", "best", "fit"):  # not in the paper: base + the landmark-map input
    # (separates FLM from cyc)
    config.use_flm, config.use_cyc, config.use_sc = True, False, False
  elif variant == "cyc":
    config.use_flm, config.use_cyc, config.use_sc = True, True, False
  elif variant == "sc":
    config.use_flm, config.use_cyc, config.use_sc = False, False, True
  else:  # cyc + sc
    config.use_flm, config.use_cyc, config.use_sc = True, True, True


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/2dasl.py; choose one of {', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.method = "2dasl"  # jface.methods registry name (saved in the workdir)
  c.variant = variant
  c.seed = 0
  c.bfm_dir = ""  # 3DDFA-format folder, or "synthetic"
  c.dense_bases_dir = ""  # optional folder with w_shp_sim.npy / w_exp_sim.npy

  c.model = "resnet50"  # jface.models.build_regressor name
  c.dtype = "float32"
  c.use_flm = True
  c.use_cyc = True
  c.use_sc = True
  c.stage = 1  # 1: full loss with L3d; 2: fine-tune with the vertex distance cost (VDC)
  c.init_from = ""  # workdir whose latest checkpoint initialises the regressor (stage 2)
  c.lambdas = ml_collections.ConfigDict(PAPER_LAMBDAS)
  # Start the regressor from the 3DMM fit of its landmark-map points and learn the correction (issue 14, not in the
  # paper; jface.methods.twodasl.fit_start); fit_jaw_weight = the jaw line's weight in that fit.
  c.fit_start = False
  c.fit_jaw_weight = 0.03  # = jface.methods.twodasl.fit_start.JAW_WEIGHT
  c.l3d_weights = "3d"  # W of L3d: "3d" (3DDFA WPDC, learns depth; docs/RESULTS.md) or "2d" (the paper's sentence)

  c.data = ml_collections.ConfigDict()
  c.data.train_3d = ""
  c.data.train_2d = ""
  c.data.dev = ""
  c.data.dev_size = 0  # 0 = all
  c.data.holdout = 0  # > 0: hold out this many train_3d examples and evaluate on them instead of data.dev
  c.data.extra_3d = ""  # another 3D-labelled spec appended to train_3d (e.g. crops:DIR of jface.data.profiling)
  c.data.num_threads = 2
  c.data.augment = True
  c.data.landmark_noise_px = 0.0
  # Landmark maps from a test-time landmark source (jface.data.flm_alt): a file of its 68 points on the train_3d
  # images (python -m jface.inference.mesh68 landmarks), drawn with probability flm_alt_prob instead of the
  # stream's landmarks; flm_dropout = probability of an empty map (the model then also works without landmarks).
  c.data.flm_file = ""
  c.data.flm_alt_prob = 0.0
  c.data.flm_dropout = 0.0

  c.batch_size = 32  # 3D-labelled images per step (global)
  c.batch_size_2d = 32  # 2D-only images per step (global)
  c.num_steps = 200_000
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 5e-5
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.decay_rate = 0.5  # exponential decay: lr * decay_rate ** (step / decay_steps); decay_steps 0 = num_steps
  c.optimizer.decay_steps = 50_000
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip = 0.0  # 0 = off
  c.critic_learning_rate = 1e-4

  c.log_every = 50
  c.eval_every = 5000
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.num_devices = 0  # 0 = all local devices
  c.distributed = False  # multi-host: jax.distributed.initialize()
  c.tensorboard = True
  c.model_kwargs = {}  # extra regressor kwargs, e.g. {"num_filters": 32}
  c.encoder_kwargs = {}
  c.critic_kwargs = {}

  _set_variant(c, variant)
  if variant == "smoke":
    c.bfm_dir = "synthetic"
    # ResNet-18 at width 16 learns on CPU in minutes; a tiny_cnn with global pooling barely beats the mean
    # face, and MobileNet's depthwise-conv gradients are very slow on XLA CPU (see docs/RESULTS.md).
    # Recipe chosen by measurement (docs/RESULTS.md, "the :smoke run"): CoordConv channels, no augmentation (the
    # dev faces are not augmented) and Adam 3e-3 falling 10x learn the most in ~5 minutes.
    c.model = "resnet18"
    c.model_kwargs = {"num_filters": 16, "coord_channels": True}
    c.encoder_kwargs = {"channels": (8, 16, 32, 32, 64, 64)}
    c.data.train_3d = "synthetic:1024:0"
    c.data.train_2d = "synthetic2d:1024:1"
    c.data.dev = "synthetic:64:12345"
    c.data.augment = False
    c.batch_size = 8
    c.batch_size_2d = 8
    c.num_steps = 800
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 3e-3
    c.optimizer.decay_rate = 0.1
    c.optimizer.decay_steps = 0  # = num_steps: lr falls 10x over the run, whatever num_steps is
    c.log_every = 50
    c.eval_every = 400
    c.checkpoint_every = 100
  if variant.startswith("cpu"):
    _cpu(c)
  return c


# Steps for ~45 min each on the 2-core machine (ResNet-18/16 at 120x120, batch 16 (+ 16)). Average rates of the full
# runs, s/step: base and base+FLM 0.18, cyc 0.64, sc 0.63, cyc+sc 0.72. (80-step timings had put cyc at 0.475 and
# sc at 0.49 s/step; their first minutes of training showed ~0.73, so they got 3500 steps like cyc+sc.) The variants
# get about the same wall-clock budget, not the same number of steps: base does ~4.6x the steps of the others.
CPU_STEPS = {"cpu": 3500, "cpu_base": 16000, "cpu_cyc": 3500, "cpu_sc": 3500, "cpu_base_flm": 16000,
             "cpu_photo": 16000, "cpu_best": 4000, "cpu_fit": 4000}
# :cpu_photo's training landmark maps: the face mesh's 68 points on the train photos (out-of-fold), written by
# python -m jface.inference.mesh68 landmarks --data ../shared/data/aflw2000_3d_train --out PHOTO_FLM_FILE
PHOTO_FLM_FILE = "~/.cache/jface/mediapipe/mesh68_aflw2000_3d_train.npz"


def _cpu(c: ml_collections.ConfigDict) -> None:
  """The 2-core CPU experiment on ../shared/data (issue 6; docs/RESULTS.md). Backbone and learning rate were
  chosen on a 100-image hold-out of the train split (``--config.data.holdout=100``), never on dev."""
  c.bfm_dir = f"{SHARED}/3dmm"
  c.data.train_3d = f"crops:{SHARED}/aflw2000_3d_train"
  c.data.train_2d = f"aflw_wild:{SHARED}/aflw_wild"
  c.data.dev = f"crops:{SHARED}/aflw2000_3d_dev"
  c.model = "resnet18"
  c.model_kwargs = {"num_filters": 16, "coord_channels": True}
  c.encoder_kwargs = {"channels": (8, 16, 32, 32, 64, 64)}
  c.batch_size = 16
  c.batch_size_2d = 16
  c.num_steps = CPU_STEPS[c.variant]
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 3e-3
  c.optimizer.decay_rate = 0.1
  c.optimizer.decay_steps = 0  # = num_steps: lr falls 10x over the run, whatever num_steps is
  if c.variant == "cpu_photo":  # for photos: half the maps from the face mesh, a fifth of them empty
    import os
    c.data.flm_file = os.path.expanduser(PHOTO_FLM_FILE)
    c.data.flm_alt_prob = 0.5
    c.data.flm_dropout = 0.2
  if c.variant in ("cpu_best", "cpu_fit"):  # base+FLM, 3D-form L3d, 4000 steps, checkpoint chosen on a hold-out,
    c.data.holdout = 100                     # the regressor started from the fit of its map's points
    c.fit_start = True
  c.log_every = 50
  c.eval_every = int(round(c.num_steps / 8, -2))
  c.checkpoint_every = 250
