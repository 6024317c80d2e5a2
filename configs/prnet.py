r"""PRNet training configs: ``python train.py --config configs/prnet.py[:VARIANT] --workdir DIR``.

PRNet (Feng et al. 2018): ResFCN (``jface.models.resfcn``) regresses the UV position map of the face in the input
crop; loss = Eq. 1 with the 16:4:3:0 weight mask; targets are built in the train step from the examples' 3DMM
params (``jface.methods.prnet``). Evaluation, ``evaluate.py --checkpoint`` and ``predict`` read the map at the
68 keypoint pixels (landmarks), at every vertex's UV pixel (dense vertices) and fit the pose to the landmarks.

Variants (``get_config(arg)``):

* (default) -- the paper's settings (Sec. 3.3) on real data: ResFCN at full width, 256 x 256 input and map,
  Adam from 1e-4 halved every 5 epochs (a staircase; 5 epochs of TFDS ``the300w_lp``'s 61,225 non-flipped
  images at batch 16 = 19,132 steps; 30 epochs in all: our choice, the paper gives none), batch 16, the paper's
  augmentation (rotation +-45 degrees, scale 0.9-1.2, shift 10 %, colour 0.6-1.4, occlusion; ``jface.data.augment``),
  Eq. 1 as printed (weighted Euclidean distance). Data: ``tfds:the300w_lp`` (or
  ``--config.data.train_3d=mat:/path/300W_LP/<subset>``), the BFM with its UV layout and dense bases and PRNet's
  uv-data from ``../shared/data``, dev = ``aflw2000_3d_dev``. Differences from the paper, on purpose: the crop is
  jface's 120 px 3DDFA crop resized to 256 (not face3d's 1.5x landmark box), no flipped copies, no L2
  regulariser on the kernels (PRNet's 2e-4). Not run here (no 300W-LP, no GPU): no measured result.
* ``:smoke`` -- the embedded default: synthetic faces (1024 train faces cached in memory, 64 fixed dev faces;
  the synthetic model's own UV layout, ``uv_layout.synthetic_uv``), ResFCN at width 1/4 on a 64 x 64 input
  (map 64 x 64), batch 16, 1000 steps, Adam 2e-3 falling 10x over the run, batch-norm momentum 0.9 (the paper's
  0.999 does not settle in 1000 steps), no augmentation (the dev faces are not augmented); no download.
  Command: ``python train.py --config configs/prnet.py:smoke --workdir /tmp/jface-prnet-smoke``.
  Measured (2026-12-02, 2-core CPU shared with another job, ``nice -n 19``, load ~2): 3 min 25 s; dev 2D NME
  mean of bins 10.719 (bins 9.072 / 9.408 / 13.677) vs 15.757 for the mean face, 3D NME 19.29 vs 38.75 (dev @ 500:
  13.889). ``evaluate.py --checkpoint`` gives the same 10.719; its dense metrics (all 4886 vertices, including
  the back of the head that the map does not hold) are worse than the mean face's: dense 2D 21.56 vs 16.53,
  dense 3D 35.27 vs 25.09, ICP 11.08 vs 7.96 (``--icp_stride 10``).
  How the recipe was chosen (short probes, same data): the map stays at per-channel constants (loss ~15.5 map px,
  the weighted mean of a constant map is 15.6, the mean map's 9.4) for ~130 steps before the decoder learns the
  spatial layout; with Adam 1e-3 over 150 steps dev NME was 34.0, with 2e-3 over 400 steps 15.42; width 1/2 learned
  faster per step (loss 13.8 at step 100 against 15.6) at twice the time per step; the squared loss ("mse", 1e-3,
  100 steps) stayed on the same plateau.
* ``:cpu`` -- the 2-core-CPU scale on ``../shared/data``, the run users should take: 3D labels from 700 of the 800
  ``aflw2000_3d_train`` crops (``.mat`` fits; 100 held out to choose checkpoints, never dev) plus the 9,284
  pseudo-labelled wild crops (``WILD_FITS``, made once by the two commands above it; fits over 3 px residual left
  out), the BFM layout at 128 x 128 (PRNet's 256 x 256 weights and keypoints resampled), ResFCN width 1/4, batch 16,
  Adam 3e-3 falling 10x over 10,000 steps, augmentation on. Command: ``python train.py --config
  configs/prnet.py:cpu --workdir W``, then ``python evaluate.py --dataset aflw2000_3d --data_dir
  ../shared/data/aflw2000_3d_dev --checkpoint W --dense_bases_dir ../shared/data/3dmm_dense --out W/eval_dev``.
  Measured (2026-12-02, 2-core machine shared with other jobs the whole time, load 4-8: 2 h 06 min wall, ~1 h
  alone): dev 2D NME mean of bins **5.978** (4.166 / 5.987 / 7.781), 3D 9.565, dense 2D 8.794, dense 3D 12.776,
  ICP 3.220; below 2DASL's RGB-only ``:cpu_base`` (7.304), not below the FAN landmarks (5.496).
  How it was found (docs/RESULTS.md, "PRNet"): the first ``:cpu`` (Adam 1e-3, 4000 steps, 800 crops) scored
  11.194 and underfit; probes on a train hold-out (1000 steps, 64 x 64) chose Adam 3e-3; 4000 steps with the
  profiled crops scored 10.559, with the wild pseudo-labels 8.074, and the same for 10,000 steps 5.978.

Options not in the paper: ``--config.head=template`` (``TemplateResFCN``: the mean face's map turned by a predicted
affine map plus the decoder's bounded residual; it starts at the mean face but learned no faster in a 1000-step
probe on a train hold-out, docs/RESULTS.md "PRNet"), ``--config.model_kwargs.coord_channels=True`` (CoordConv
input), ``--config.data.extra_3d=crops:DIR`` (more 3D-labelled crops, e.g. ``python -m jface.data.profiling``'s).

Any field can be overridden on the command line, e.g. ``--config.num_steps=1000``.
"""
from __future__ import annotations

import ml_collections

VARIANTS = ("default", "smoke", "cpu")
# :cpu's extra 3D labels: the wild crops' pseudo-3D fits, made once by (README, "pseudo-3D labels"; ~1 h on 2 cores)
#   python -m jface.data.fit_labels mesh --data aflw_wild:../shared/data/aflw_wild --out WILD_FITS/wild_mesh68.npz
#   python -m jface.data.fit_labels --data aflw_wild:../shared/data/aflw_wild --out WILD_FITS \
#       --landmarks WILD_FITS/wild_mesh68.npz
WILD_FITS = "~/.cache/jface/wild_fits"
SHARED = "../shared/data"  # the shared/ data folder beside the repository (override the data.* fields)
TFDS_300W_LP_IMAGES = 61_225  # TFDS the300w_lp "train" (300W-LP without its flipped copies)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of configs/prnet.py; choose one of {', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.method = "prnet"  # jface.methods registry name (saved in the workdir)
  c.variant = variant
  c.seed = 0
  c.bfm_dir = f"{SHARED}/3dmm"  # 3DDFA-format folder with BFM_UV.mat, or "synthetic"
  c.dense_bases_dir = f"{SHARED}/3dmm_dense"  # w_shp_sim.npy / w_exp_sim.npy (the targets need dense vertices)
  c.prnet_uv_dir = f"{SHARED}/prnet_uv"  # PRNet's uv-data: uv_kpt_ind.txt and the weight masks (BFM only)
  c.init_from = ""  # workdir whose latest checkpoint initialises the network

  c.model = "resfcn"  # the network (jface.models.resfcn.ResFCN; the only one PRNet uses)
  c.image_size = 256  # network input side = position-map side (a multiple of 32)
  c.dtype = "float32"
  c.model_kwargs = {"width_mult": 1.0}  # jface.models.resfcn.ResFCN fields (width_mult, bn_momentum, ...)
  c.loss = "distance"  # "distance": Eq. 1 as printed (weighted Euclidean distance); "mse": squared
  c.head = "sigmoid"  # "sigmoid": the paper's map; "template": mean-face map, affine + residual (TemplateResFCN)

  c.data = ml_collections.ConfigDict()
  c.data.train_3d = "tfds:the300w_lp"
  c.data.dev = f"crops:{SHARED}/aflw2000_3d_dev"
  c.data.dev_size = 0  # 0 = all
  c.data.holdout = 0  # > 0: hold out this many train_3d examples and evaluate on them instead of data.dev
  c.data.extra_3d = ""  # another 3D-labelled spec appended to train_3d (e.g. crops:DIR of jface.data.profiling)
  c.data.num_threads = 2
  c.data.augment = True
  c.data.landmark_noise_px = 0.0

  c.batch_size = 16
  steps_per_epoch = TFDS_300W_LP_IMAGES // 16
  c.num_steps = 30 * steps_per_epoch
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.momentum = 0.9  # (sgd only)
  c.optimizer.nesterov = False
  c.optimizer.decay_rate = 0.5
  c.optimizer.decay_steps = 5 * steps_per_epoch
  c.optimizer.staircase = True
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip = 0.0

  c.log_every = 100
  c.eval_every = 5000
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.num_devices = 0  # 0 = all local devices
  c.distributed = False
  c.tensorboard = True

  if variant == "smoke":
    c.bfm_dir = "synthetic"
    c.dense_bases_dir = ""
    c.prnet_uv_dir = ""
    c.image_size = 64
    c.model_kwargs = {"width_mult": 0.25, "bn_momentum": 0.9}
    c.data.train_3d = "synthetic:1024:0"
    c.data.dev = "synthetic:64:12345"
    c.data.augment = False
    c.batch_size = 16
    c.num_steps = 1000
    c.optimizer.learning_rate = 2e-3
    c.optimizer.decay_rate = 0.1
    c.optimizer.decay_steps = 0  # = num_steps: lr falls 10x over the run, whatever num_steps is
    c.optimizer.staircase = False
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 100
  if variant == "cpu":
    import os
    c.data.train_3d = f"crops:{SHARED}/aflw2000_3d_train"
    c.data.extra_3d = f"fitted:{os.path.expanduser(WILD_FITS)}:3"  # fits with residual > 3 px stay out
    c.data.holdout = 100  # checkpoints chosen on 100 train images, never on dev
    c.data.dev = f"crops:{SHARED}/aflw2000_3d_dev"
    c.image_size = 128
    c.model_kwargs = {"width_mult": 0.25, "bn_momentum": 0.9}
    c.batch_size = 16
    c.num_steps = 10000
    c.optimizer.learning_rate = 3e-3
    c.optimizer.decay_rate = 0.1
    c.optimizer.decay_steps = 0
    c.optimizer.staircase = False
    c.log_every = 50
    c.eval_every = 1000
    c.checkpoint_every = 250
  return c
