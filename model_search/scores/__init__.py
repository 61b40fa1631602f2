"""The score registry: a score is found by its module name, `scores/NAME.py`.

A score module defines
`score(inputs: ScoreInputs, **options) -> dict[str, float]` with a 'score' key
(higher = model predicted better) plus optional diagnostics.
Configs name scores by module, with options as keyword arguments:

  config.scores = {'linear': {}, 'knn': {'k': 1},
                   'knn_cos': {'type': 'knn', 'metric': 'cosine'}}

A score that needs more than features (the model and its images, for gradient scores such as
LGC) says so with a module constant `REQUIRES = ('apply_fn', 'params', 'train_images')`; the
scores stage then loads the model and the images for it, and only then.

Adding a score is adding a file; there is no table to edit. A score outside the
package is named by its dotted module path ('my_lab.scores.fancy'), which must
be importable (on sys.path).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import types
from typing import Any, Mapping

from model_search.scores.common import check_result
from model_search.scores.common import ScoreInputs

__all__ = ["ScoreInputs", "available", "compute", "get", "required_fields"]

# Modules in this package that are not scores.
_NOT_SCORES = frozenset({"common"})


def _defines_score(path: str | None) -> bool:
  """Whether the source file at `path` has a top-level `score` function.

  Parsed rather than imported, so listing scores stays cheap and one broken
  or heavy score module does not break the list.
  """
  if not path or not path.endswith(".py"):
    return False
  try:
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), filename=path)
  except (OSError, SyntaxError, ValueError):
    return False
  return any(
      isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and
      node.name == "score" for node in tree.body)


def available() -> list[str]:
  """The names of the score modules in this package, sorted."""
  names = []
  for info in pkgutil.iter_modules(__path__):
    if info.ispkg or info.name.startswith("_") or info.name in _NOT_SCORES:
      continue
    spec = info.module_finder.find_spec(info.name)
    if spec is not None and _defines_score(spec.origin):
      names.append(info.name)
  return sorted(names)


def _unknown(type_name: str, why: str) -> ValueError:
  return ValueError(
      f"Unknown score {type_name!r} ({why}); available scores: "
      f"{', '.join(available())}. A score outside model_search is named by its "
      "dotted module path (e.g. 'my_package.my_score'), importable from "
      "sys.path.")


def get(type_name: str) -> types.ModuleType:
  """Returns the score module named `type_name`.

  Args:
    type_name: a module name in model_search/scores ('knn'), or a dotted module
      path ('my_package.my_score') for scores that live elsewhere.

  Returns:
    The module; it has a callable `score(inputs, **options)`.

  Raises:
    ValueError: if no such module exists or it defines no `score` function.
  """
  if not isinstance(type_name, str) or not type_name:
    raise _unknown(repr(type_name), "score names are non-empty strings")
  if "." in type_name:
    module_name = type_name
  else:
    if not type_name.isidentifier() or type_name in _NOT_SCORES:
      raise _unknown(type_name, "not a score module name")
    module_name = f"{__name__}.{type_name}"
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    # Only a missing score module is "unknown"; a score whose own imports fail
    # should show that error, not a misleading one.
    missing = e.name or ""
    if module_name == missing or module_name.startswith(missing + "."):
      raise _unknown(type_name, f"no module {module_name!r}") from e
    raise
  if not callable(getattr(module, "score", None)):
    raise _unknown(type_name, f"module {module_name!r} has no "
                   "score(inputs, **options) function")
  return module


def _options(name: str, options: Any) -> tuple[str, dict[str, Any]]:
  """Splits one config entry into (module name, keyword options)."""
  if options is None:
    options = {}
  if hasattr(options, "to_dict"):  # ml_collections.ConfigDict
    options = options.to_dict()
  if not isinstance(options, Mapping):
    raise ValueError(f"Options of score {name!r} must be a mapping of keyword "
                     f"options, got {type(options).__name__}")
  options = dict(options)
  type_name = options.pop("type", name)
  return type_name, options


def _check_options(name: str, type_name: str, fn: Any,
                   options: Mapping[str, Any]) -> None:
  """Raises a ValueError naming the valid options if `fn` can't take them."""
  sig = inspect.signature(fn)
  params = list(sig.parameters.values())
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
    return
  valid = [p.name for p in params[1:]
           if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                         inspect.Parameter.POSITIONAL_OR_KEYWORD)]
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(
        f"Score {name!r} (type {type_name!r}): unknown option(s) "
        f"{', '.join(map(repr, unknown))}; valid options: "
        f"{', '.join(valid) if valid else '(none)'}")
  required = [p.name for p in params[1:]
              if p.default is inspect.Parameter.empty and
              p.kind is not inspect.Parameter.VAR_POSITIONAL and
              p.name not in options]
  if required:
    raise ValueError(f"Score {name!r} (type {type_name!r}): missing required "
                     f"option(s) {', '.join(map(repr, required))}")


def validate(score_configs: Mapping[str, Any]) -> list[tuple[str, str, Any, dict[str, Any]]]:
  """Resolves every configured score and checks its options, before any work is done.

  Returns:
    [(result name, module name, module, options)] in config order.
  """
  plan = []
  for name, options in score_configs.items():
    type_name, options = _options(name, options)
    module = get(type_name)
    _check_options(name, type_name, module.score, options)
    plan.append((name, type_name, module, options))
  return plan


def compute(score_configs: Mapping[str, Any],
            inputs: ScoreInputs) -> dict[str, dict[str, float]]:
  """Computes every configured score on one (model, task) pair.

  Args:
    score_configs: maps a result name to its options, e.g.
      `{'linear': {}, 'knn': {'k': 1},
        'knn_cos': {'type': 'knn', 'metric': 'cosine'}}`. The optional 'type'
      option picks the score module (default: the result name); the other
      options are passed to its `score` as keyword arguments.
    inputs: the features, labels (and optional extras) of the pair.

  Returns:
    {result name: {metric: float}}, each with a 'score' key.

  Raises:
    ValueError: for an unknown score, an unknown option or a result that breaks
      the contract. Errors raised inside a score get a note naming the score,
      model and task.
  """
  results = {}
  for name, type_name, module, options in validate(score_configs):
    try:
      raw = module.score(inputs, **options)
    except Exception as e:
      e.add_note(f"while computing score {name!r} (type {type_name!r}) for "
                 f"model {inputs.model_name!r} on task {inputs.task_name!r}")
      raise
    results[name] = check_result(raw, score=name, inputs=inputs)
  return results


def required_fields(score_configs: Mapping[str, Any]) -> set[str]:
  """The optional ScoreInputs fields (common.OPTIONAL_FIELDS) the configured scores need,
  from each module's `REQUIRES` constant."""
  from model_search.scores import common  # pylint: disable=g-import-not-at-top
  needed = set()
  for name, type_name, module, _ in validate(score_configs):
    fields = tuple(getattr(module, "REQUIRES", ()))
    unknown = [f for f in fields if f not in common.OPTIONAL_FIELDS]
    if unknown:
      raise ValueError(f"Score {name!r} (type {type_name!r}) REQUIRES unknown field(s) "
                       f"{unknown}; valid fields: {', '.join(common.OPTIONAL_FIELDS)}")
    needed.update(fields)
  return needed
