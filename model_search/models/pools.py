"""Named model pools (Renggli et al., Sec. 4), as predicates over ModelEntry metadata.

The paper's pools, and what they mean for any collection of models:
  all       every model.
  expert    models pre-trained on a narrow upstream task (the paper's 16 ResNet-50 experts).
  imagenet  ("ImNetAccuracies") models with an ImageNet accuracy (for the mini zoo: a held-out
            accuracy on the broad upstream task), i.e. the generalists.
  resnet50  models no larger than the experts' architecture (parameter count at most the largest
            expert's; in the paper, ResNet-50 V2's).
  dim2048   models whose representation is no wider than the experts' (feature dimension at most
            the largest expert's; 2048 in the paper).
A config may add pools: a list of model names, or a predicate string over an entry `e`
(e.g. "e.architecture == 'cnn'").
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from model_search.models.zoo import ModelEntry

Predicate = Callable[[ModelEntry, Sequence[ModelEntry]], bool]


def _expert_max(entries: Sequence[ModelEntry], field: str) -> float:
  values = [getattr(e, field) for e in entries if e.expert and getattr(e, field) is not None]
  if not values:
    raise ValueError(f"Pool needs an expert with {field} to set its threshold; the entries "
                     f"({', '.join(e.name for e in entries)}) have none.")
  return max(values)


def _no_larger(field: str) -> Predicate:
  def pred(e: ModelEntry, entries: Sequence[ModelEntry]) -> bool:
    value = getattr(e, field)
    return value is not None and value <= _expert_max(entries, field)
  return pred


POOLS: dict[str, Predicate] = {
    "all": lambda e, entries: True,
    "expert": lambda e, entries: e.expert,
    "imagenet": lambda e, entries: e.imagenet_accuracy is not None,
    "resnet50": _no_larger("num_params"),
    "dim2048": _no_larger("feature_dim"),
}


def members(pool: str, entries: Sequence[ModelEntry],
            custom: Mapping[str, Sequence[str] | str] | None = None) -> list[str]:
  """Returns the names of the models of `entries` in `pool`, in the order of `entries`.

  Args:
    pool: a pool name from POOLS or from `custom`.
    entries: the model entries of the study.
    custom: user pools, name -> list of model names, or name -> predicate
      expression over an entry `e` (evaluated with no builtins).
  """
  custom = dict(custom or {})
  names = [e.name for e in entries]
  if pool in custom:
    spec = custom[pool]
    if isinstance(spec, str):
      code = compile(spec, f"<pool {pool}>", "eval")
      return [e.name for e in entries if eval(code, {"__builtins__": {}}, {"e": e})]  # pylint: disable=eval-used
    unknown = [n for n in spec if n not in names]
    if unknown:
      raise ValueError(f"Pool {pool!r} names unknown models {unknown}; "
                       f"known models: {', '.join(names)}")
    return [n for n in names if n in set(spec)]
  if pool not in POOLS:
    raise ValueError(f"Unknown pool {pool!r}; known pools: "
                     f"{', '.join(sorted(set(POOLS) | set(custom)))}")
  return [e.name for e in entries if POOLS[pool](e, entries)]
