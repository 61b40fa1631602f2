"""The whole model-search study on the offline mini suite and mini zoo.

  python -m model_search.main --config=configs/mini.py --workdir=/tmp/mini

Needs no network: the mini suite's TFDS builders generate their data locally and the mini zoo is
pre-trained by the project itself. 8 to 13 minutes on a 2-core CPU the first time (fine-tuning
99 model-task pairs and pre-training the zoo are most of it), under 20 s when rerun on the same
workdir and cache.

Variants (`--config=configs/mini.py:ARG`):
  smoke           every stage end to end on 2 tasks and a 3-model zoo, 50 to 85 s.
  tasks=GROUP     natural | specialized | structured | all, or names joined by '+'.
  models=A+B+C    a subset of the zoo.
Arguments combine with commas: `smoke,tasks=structured`.
"""

import ml_collections

from model_search import finetune_grid
from model_search import training_time_stage
from model_search import study
from model_search.data import mini
from model_search.models import mini_zoo


def _parse(arg):
  opts = {}
  for part in filter(None, (arg or "").split(",")):
    key, _, value = part.partition("=")
    opts[key] = value if value else True
  valid = {"smoke", "tasks", "models"}
  unknown = set(opts) - valid
  if unknown:
    raise ValueError(f"Unknown config argument(s) {sorted(unknown)} for configs/mini.py; "
                     f"valid arguments: {', '.join(sorted(valid))}")
  return opts


def get_config(arg=None):
  opts = _parse(arg)
  smoke = bool(opts.get("smoke"))
  config = ml_collections.ConfigDict()

  config.stages = ("zoo", "features", "scores", "training_time", "finetune", "select",
                   "report")
  config.seed = 0
  # Where TFDS keeps the generated mini suite and where the pre-trained zoo is cached;
  # '' means ~/.cache/model_search/{tfds,zoo}. Both are reused across workdirs.
  config.data_dir = ""
  config.cache_dir = ""

  config.suite = "mini"
  if smoke:
    # One natural and one structured task; each has a different best expert.
    tasks = ("mini_digits", "mini_count")
  else:
    tasks = mini.task_names()
  config.tasks = tuple(_select_tasks(opts.get("tasks"), tasks))

  # The model collection and the mini zoo's pre-training recipe (part of the zoo's cache key).
  config.collection = "mini"
  config.zoo = mini_zoo.get_zoo_config(smoke=smoke)
  if opts.get("models"):
    config.zoo.models = tuple(opts["models"].split("+"))

  config.features = ml_collections.ConfigDict()
  config.features.batch_size = 256
  config.features.splits = ("train800", "val200")

  # Task-aware scores: result name -> options ('type' picks the module, default the name).
  config.scores = ml_collections.ConfigDict()
  config.scores.linear = {"steps": 100 if smoke else 500, "batch_size": 256}
  config.scores.knn = {"k": 1}
  if not smoke:
    # The feature-based scores of the literature (LEEP and NCE read the source head; the plain
    # H-score is left out: with n <= d it returns C-1 for any features).
    for name in ("logme", "regularized_hscore", "leep", "nce", "transrate", "gbc", "lfc"):
      config.scores[name] = {}
    # Cui et al.'s domain similarity: the mini zoo's upstream data is at hand, so each model's
    # features of its first `source_examples` upstream training images are compared with the
    # task's (earth mover's distance between class means).
    config.scores.domain_similarity = {}
    config.features.source_examples = 2000

  # Ground truth: the whole network plus a new zero-initialised linear head, SGD with momentum,
  # each learning rate trained on train800 and picked on val200; the test accuracy of the pick.
  config.finetune = ml_collections.ConfigDict()
  config.finetune.learning_rates = (0.1, 0.01)
  config.finetune.momentum = 0.9
  # The paper's 2500 steps at batch 512 (1600 epochs of train800), scaled down to 4 epochs.
  config.finetune.batch_size = 32
  config.finetune.steps = 20 if smoke else 100
  # Clip the gradient's global norm (0: no clipping, as the VTAB reference): at lr 0.1 the
  # mini zoo's CNNs, which have no normalisation layers, diverge without it.
  config.finetune.grad_clip_norm = 1.0
  # Step decay x0.1 at these fractions of training (the VTAB reference schedule).
  config.finetune.decay_at = (0.3, 0.6, 0.9)
  config.finetune.warmup_steps = 0
  config.finetune.repeats = 1
  # val200 is one batch, test five: no padded work.
  config.finetune.eval_batch_size = 200
  # How runs execute: devices, FSDP, accumulation, checkpoints, logging (finetune_grid).
  finetune_grid.add_run_options(config.finetune, checkpoint_every=25, log_every=25)

  # Each fine-tuning run's loss curve, and its steps and seconds to reach fractions of the
  # initial loss, predicted from the linearised model before training (training_time_stage).
  config.training_time = training_time_stage.default_config()
  # 100 steps at batch 32 (4 epochs) rarely take the loss below half of ln C.
  config.training_time.thresholds = (0.9, 0.75, 0.5)
  config.distributed = study.distributed_config()  # launch/*.sh set its fields.

  config.select = ml_collections.ConfigDict()
  config.select.pools = ("all", "expert", "imagenet", "resnet50", "dim2048")
  # User pools: name -> list of model names or a predicate over an entry `e`.
  config.select.custom_pools = ml_collections.ConfigDict()
  config.select.budgets = ()  # () means 1..pool size.
  return config


def _select_tasks(spec, default):
  if not spec or spec == "all":
    return default
  if spec in ("natural", "specialized", "structured"):
    return [t for t in default if mini.get_task(t).group == spec]
  return spec.split("+")
