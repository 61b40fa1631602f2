"""Model selection on VTAB-1k with the published fine-tune accuracies as ground truth.

  python -m model_search.main --config=configs/vtab_published.py --workdir=/tmp/vtab_published

Runs only the 'select' and 'report' stages, on the 15 VTAB TF-Hub models (registry names
`vtab_*`) and all 19 VTAB-1k tasks, with ground truth from the VTAB reference's results table
(model_search/published.py, shipped as package data). No network, no TFDS data, no hub model
loading, no feature extraction, no training: about 10 s on a laptop CPU, most of it imports
and the report's figures. Strategies: task-agnostic, oracle and random (exact expectation); with
`:scores`, also task-aware and hybrid for the scores found in the workdir.

The From-Scratch row of the table is not a pre-trained model, so it is never in a pool; it is
shown as a reference row (`from_scratch`) of the report's accuracy table
(`--config.published.include_from_scratch=False` leaves it out).

Variants (`--config=configs/vtab_published.py:ARG`, combined with commas):
  tasks=GROUP          natural | specialized | structured | all (default), or names joined by
                       '+' (`tasks=cifar100+dtd`).
  pool=NAME            all (the 15) and resnet50 (the 13 ResNet-50 v2 models: all but the two
                       BigGAN discriminators), or one of them (default: both). The 'expert' and
                       'imagenet' pools are empty for these models (no experts, no ImageNet
                       accuracies) and 'dim2048' is the same as 'all'.
  only=A+B             only these of the 15 models (`only=vtab_sup_100+vtab_rotation`).
  train_examples=N     1000 (VTAB-1k, default) or full (the published full-data accuracies).
  scores               read task-aware scores from WORKDIR/scores/: the options of
                       configs/vtab.py's scores, so the files its 'scores' stage wrote for these
                       models and tasks in the same workdir are found (run it first, e.g. with
                       `configs/vtab.py:only=vtab_sup_100+...` and stages features, scores).
  smoke                3 tasks (one per group), budgets 1 and 2: a few seconds.
"""

import ml_collections

from model_search import published
from model_search.data import vtab


def _parse(arg):
  opts = {}
  for part in filter(None, (arg or "").split(",")):
    key, _, value = part.partition("=")
    opts[key] = value if value else True
  valid = {"tasks", "pool", "only", "train_examples", "scores", "smoke"}
  unknown = set(opts) - valid
  if unknown:
    raise ValueError(f"Unknown config argument(s) {sorted(unknown)} for "
                     f"configs/vtab_published.py; valid arguments: {', '.join(sorted(valid))}")
  train = str(opts.get("train_examples", "1000"))
  if train not in published.TRAIN_EXAMPLES:
    raise ValueError(f"Unknown train_examples {train!r} for configs/vtab_published.py; valid "
                     f"values: {', '.join(published.TRAIN_EXAMPLES)}")
  return opts


def _vtab_scores():
  """configs/vtab.py's config.scores, option for option (the scores' fingerprint needs it)."""
  scores = ml_collections.ConfigDict()
  scores.linear = {"steps": 2500, "batch_size": 512}
  scores.knn = {"k": 1}
  for name in ("logme", "regularized_hscore", "leep", "nce", "transrate", "gbc", "lfc", "msc"):
    scores[name] = {}
  return scores


def get_config(arg=None):
  opts = _parse(arg)
  smoke = bool(opts.get("smoke"))
  config = ml_collections.ConfigDict()

  # Selection and reporting only: the ground truth is published, the scores (if any) are files.
  config.stages = ("select", "report")
  config.seed = 0
  # Unused by these stages (nothing is loaded), kept so the study resolves as configs/vtab.py's.
  config.data_dir = ""
  config.cache_dir = ""

  config.suite = "vtab"
  if smoke and not opts.get("tasks"):
    config.tasks = ("caltech101", "eurosat", "clevr_count")
  else:
    config.tasks = tuple(vtab.select_tasks(opts.get("tasks")))

  # The registry's entries of the 15 VTAB hub models (the published table's pre-trained models).
  config.collection = "tfhub"
  names = tuple(e.name for e in published.entries())
  config.hub_models = tuple(opts["only"].split("+")) if opts.get("only") else names

  # Ground truth from the published table instead of the finetune stage's results.
  config.ground_truth = "published"
  config.published = ml_collections.ConfigDict()
  # '1000' (VTAB-1k) or 'full'; a string so that --config.published.train_examples=full works.
  config.published.train_examples = str(opts.get("train_examples", "1000"))
  # From-Scratch as a reference row of the report's accuracy table (never a pool member).
  config.published.include_from_scratch = True

  # No scores by default: only task-agnostic, oracle and random selections, and the workdir's
  # scores/ files are not read. `scores`: configs/vtab.py's, to read what its scores stage wrote.
  config.scores = _vtab_scores() if opts.get("scores") else ml_collections.ConfigDict()

  config.select = ml_collections.ConfigDict()
  pools = ("all", "resnet50")
  config.select.pools = tuple(opts["pool"].split("+")) if opts.get("pool") else pools
  config.select.custom_pools = ml_collections.ConfigDict()
  config.select.budgets = (1, 2) if smoke else ()  # () means 1..pool size.
  return config
