"""A tiny fine-tuning grid for tests: two Flax CNNs x two tasks of synthetic images.

`make_study` builds it in-process; run as a script it runs the finetune stage once, optionally
as one process of a jax.distributed job (localhost coordinator, CPU collectives) and optionally
slowed down so that a test can kill it mid-run:

  python tests/grid_driver.py --workdir=DIR [--process_id=I --num_processes=N --port=P]
      [--sleep_per_step=0.05]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types

import numpy as np


def _net(width):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      return nn.relu(nn.Conv(2 * width, (3, 3), strides=2)(x)).mean(axis=(1, 2))

  return Net()


def register_models():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from model_search.models import hub  # pylint: disable=g-import-not-at-top
  for name, width in (("net_a", 4), ("net_b", 6)):
    net = _net(width)
    params = net.init(jax.random.key(width), jnp.zeros((1, 8, 8, 3)))
    hub.register(f"test:{name}", lambda net=net, params=params, name=name: hub.from_flax(
        net.apply, params, name=name, input_size=8))


def fake_splits(task_name: str):
  """Deterministic images whose class shifts the mean colour (learnable in a few steps)."""
  rng = np.random.RandomState(sum(map(ord, task_name)))
  out = {}
  for split, n in (("train800", 96), ("val200", 32), ("test", 40)):
    y = rng.randint(0, 3, n)
    x = rng.rand(n, 8, 8, 3).astype(np.float32) * 0.5
    x[..., 0] += 0.25 * y[:, None, None]
    out[split] = (x, y)
  return out


def make_study(workdir, *, steps=12, checkpoint_every=4, repeats=2,
               tasks=("mini_digits", "mini_count"), models=("net_a", "net_b")):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  from model_search import finetune_grid  # pylint: disable=g-import-not-at-top
  from model_search.data import mini  # pylint: disable=g-import-not-at-top
  from model_search.models.zoo import ModelEntry  # pylint: disable=g-import-not-at-top
  register_models()
  config = ml_collections.ConfigDict()
  config.seed = 0
  ft = config.finetune = ml_collections.ConfigDict()
  ft.learning_rates = (0.1, 0.01)
  ft.momentum = 0.9
  ft.batch_size = 16
  ft.steps = steps
  ft.grad_clip_norm = 1.0
  ft.decay_at = (0.3, 0.6, 0.9)
  ft.warmup_steps = 0
  ft.repeats = repeats
  ft.eval_batch_size = 16
  finetune_grid.add_run_options(ft, checkpoint_every=checkpoint_every, log_every=2)
  entries = [ModelEntry(name=n, handle=f"test:{n}", input_size=8, collection="user")
             for n in models]
  return types.SimpleNamespace(config=config, workdir=epath.Path(workdir), data_dir="unused",
                               entries=entries, model_names=[e.name for e in entries],
                               tasks=[mini.get_task(t) for t in tasks])


def patch_data(finetune_grid):
  """Serves `fake_splits` in place of TFDS (this process only: the driver's)."""
  finetune_grid._load_splits = (  # pylint: disable=protected-access
      lambda study, entry, model, task, raw: fake_splits(task.name))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--process_id", type=int, default=-1)
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--sleep_per_step", type=float, default=0.0)
  parser.add_argument("--steps", type=int, default=12)
  args = parser.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  if args.process_id >= 0:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{args.port}",
                               num_processes=args.num_processes, process_id=args.process_id)
  from model_search import finetune  # pylint: disable=g-import-not-at-top
  from model_search import finetune_grid  # pylint: disable=g-import-not-at-top
  patch_data(finetune_grid)
  if args.sleep_per_step:
    step = finetune.Finetuner.train

    def slow_train(self, *a, callback=None, **kw):
      def slow(step_, state, losses):
        time.sleep(args.sleep_per_step * kw.get("every", 1))
        if callback is not None:
          callback(step_, state, losses)
      return step(self, *a, callback=slow, **kw)

    finetune.Finetuner.train = slow_train
  finetune_grid.run_stage(make_study(args.workdir, steps=args.steps))
  print("grid_driver: done", jax.process_index(), flush=True)


if __name__ == "__main__":
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  main()
