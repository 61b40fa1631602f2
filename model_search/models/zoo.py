"""The model registry: ModelEntry records with the metadata strategies and pools need.

Collections (`entries(collection)`):
  tfhub        the 46 upstream models of Renggli et al. (arXiv:2010.06402), as in
               shared/reference/hub_models.md: 15 ImageNet classifiers (TF2), 15 VTAB models
               (TF1 Hub modules) and 16 experts. The paper's JFT experts are not public, so the
               experts are public BiT stand-ins, set A of the reference (semantic matching):
               15 ImageNet-21k subtree experts plus BiT-M R50x1 for "Full JFT".
  tfhub_set_b  the same 30 generalists with the reference's stand-in set B: the experts that
               kNN picked on VTAB-1k in Puigcerver et al. (App. C.6 Table 4, Full-INet column),
               less `physical_entity`, plus BiT-M R50x1. It copies how the paper's 16 seem to have
               been chosen, rather than matching them one by one.
  mini         the offline mini zoo (models/mini_zoo.py), once the 'zoo' stage has built it.

Provenance (the reference's legend), kept per entry in `ModelEntry.provenance`:
  V verified, seen in a cited source; D derived by arithmetic or a stated rule from verified
  values; E estimate or judgment. Fields not listed there are bookkeeping (name, collection,
  notes) or hold their default; None means unknown (e.g. the sizes of ImageNet-21k subtrees).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from etils import epath

HUB_FORMATS = ("tf2", "tf1")
PROVENANCE_CODES = ("V", "D", "E")


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """One pre-trained model: where to load it from plus its metadata.

  Accuracies are in [0, 1]; sizes are counts (images, parameters).

  Attributes:
    name: unique model name.
    handle: a TF-Hub URL or a local SavedModel directory.
    imagenet_accuracy: top-1 accuracy on ImageNet (for the mini zoo: held-out
      accuracy on the broad upstream task), None for experts.
    upstream_dataset: name of the pre-training data.
    upstream_size: number of pre-training images (None: unknown).
    upstream_accuracy: held-out accuracy on the model's own upstream task.
    num_params: parameter count of the feature extractor.
    feature_dim: dimension of the features (pre-logits).
    input_size: the (square) input resolution the model expects.
    value_range: the pixel range the model expects.
    architecture: architecture family name.
    expert: True for models pre-trained on a narrow upstream task.
    num_source_classes: size of the source head, if the model exposes logits.
    collection: 'tfhub', 'mini' or 'user'.
    hub_format: 'tf2' (TF2 SavedModel), 'tf1' (legacy TF1 Hub module) or None
      (unknown: the loader looks at the files).
    signature: TF1 module signature to call (None: the loader's default).
    output_key: key of the signature's output dict to use as features (None:
      the loader's default).
    fixed_input_size: True where the model page says the input size is fixed.
    paper_name: the model's name in the paper, for models the paper used as is.
    stands_in_for: for a public stand-in, the paper's model it replaces.
    notes: free-text caveats (label regime, stand-in fit, ...).
    provenance: (field, 'V' | 'D' | 'E') pairs saying how each value is known;
      a mapping is accepted and stored as a tuple of pairs.
  """
  name: str
  handle: str
  imagenet_accuracy: float | None = None
  upstream_dataset: str | None = None
  upstream_size: int | None = None
  upstream_accuracy: float | None = None
  num_params: int | None = None
  feature_dim: int | None = None
  input_size: int | None = None
  value_range: tuple[float, float] = (0.0, 1.0)
  architecture: str | None = None
  expert: bool = False
  num_source_classes: int | None = None
  collection: str = "user"
  hub_format: str | None = None
  signature: str | None = None
  output_key: str | None = None
  fixed_input_size: bool = False
  paper_name: str | None = None
  stands_in_for: str | None = None
  notes: str | None = None
  provenance: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "value_range", tuple(self.value_range))
    if self.hub_format not in (None, *HUB_FORMATS):
      raise ValueError(f"Model {self.name!r}: unknown hub_format {self.hub_format!r}; "
                       f"choices: {', '.join(HUB_FORMATS)} or None")
    prov = self.provenance
    pairs = tuple(prov.items()) if isinstance(prov, Mapping) else tuple(prov)
    pairs = tuple((str(f), str(c)) for f, c in pairs)
    known = {f.name for f in dataclasses.fields(self)}
    for field, code in pairs:
      if field not in known or code not in PROVENANCE_CODES:
        raise ValueError(f"Model {self.name!r}: bad provenance ({field!r}, {code!r}); fields "
                         f"are ModelEntry fields, codes one of {', '.join(PROVENANCE_CODES)}")
    object.__setattr__(self, "provenance", pairs)

  def provenance_of(self, field: str) -> str | None:
    """Returns 'V', 'D' or 'E' for `field`, or None where the entry does not say."""
    return dict(self.provenance).get(field)

  def to_json(self) -> dict[str, Any]:
    """The fields as a JSON-able dict.

    The hub-only fields (hub_format ... provenance) are left out while they hold their
    defaults, so that entries without them (mini zoo, user models) keep the JSON, and
    therefore the cache fingerprints, they had before those fields existed.
    """
    d = dataclasses.asdict(self)
    for f in dataclasses.fields(self):
      if f.name in _OPTIONAL_FIELDS and d[f.name] == f.default:
        del d[f.name]
    return d

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "ModelEntry":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"Unknown ModelEntry fields {sorted(unknown)}; "
                       f"valid fields: {', '.join(sorted(known))}")
    return cls(**d)


_OPTIONAL_FIELDS = ("hub_format", "signature", "output_key", "fixed_input_size", "paper_name",
                    "stands_in_for", "notes", "provenance")

# The paper's expert parameter count ([PA] Table 2, V); the stand-ins have their own count.
PAPER_EXPERT_PARAMS = 23_807_702
# The paper's Dim2048 limit on the representation dimension ([P] Sec. 4.2, V).
PAPER_MAX_FEATURE_DIM = 2048

# --- 15 ImageNet (ILSVRC-2012) classifiers, TF2 SavedModels ([PA] Table 1, [HUB], [SLIM]). ---

_IMAGENET_PREFIX = "https://tfhub.dev/google/imagenet/"
# "~1.2 million images" (V [SLIM]); the often-cited exact 1,281,167 is E, so it is not used.
_IMAGENET_SIZE = 1_200_000
_IMAGENET_PROVENANCE = (
    ("handle", "V"), ("hub_format", "V"), ("input_size", "V"), ("fixed_input_size", "V"),
    ("value_range", "V"), ("feature_dim", "V"), ("num_params", "V"),
    ("imagenet_accuracy", "V"), ("upstream_dataset", "V"), ("upstream_size", "V"),
    ("architecture", "D"), ("expert", "D"), ("paper_name", "V"))

# name (= handle path), paper name, input size, fixed size, dim, params, top-1, family.
_IMAGENET = (
    ("inception_v1", "Inception V1", 224, False, 1024, 5_592_624, 0.698, "Inception"),
    ("inception_v2", "Inception V2", 224, False, 1024, 10_153_336, 0.739, "Inception"),
    ("inception_v3", "Inception V3", 299, False, 2048, 21_768_352, 0.780, "Inception"),
    ("inception_resnet_v2", "Inception-ResNet V2", 299, False, 1536, 54_276_192, 0.804,
     "Inception-ResNet"),
    ("resnet_v1_50", "ResNet V1 50", 224, False, 2048, 23_508_032, 0.752, "ResNet v1"),
    ("resnet_v1_101", "ResNet V1 101", 224, False, 2048, 42_500_160, 0.764, "ResNet v1"),
    ("resnet_v1_152", "ResNet V1 152", 224, False, 2048, 58_143_808, 0.768, "ResNet v1"),
    ("resnet_v2_50", "ResNet V2 50", 224, False, 2048, 23_519_360, 0.756, "ResNet v2 (BN)"),
    ("resnet_v2_101", "ResNet V2 101", 224, False, 2048, 42_528_896, 0.770, "ResNet v2 (BN)"),
    ("resnet_v2_152", "ResNet V2 152", 224, False, 2048, 58_187_904, 0.778, "ResNet v2 (BN)"),
    ("mobilenet_v1_100_224", "MobileNet V1 1.0/224", 224, False, 1024, 3_206_976, 0.709,
     "MobileNet"),
    # 71.8 as in the paper and the MobileNet README; the main [SLIM] table says 71.9.
    ("mobilenet_v2_100_224", "MobileNet V2 1.0/224", 224, True, 1280, 2_223_872, 0.718,
     "MobileNet"),
    ("nasnet_mobile", "NASNet-A Mobile", 224, True, 1056, 4_232_978, 0.740, "NASNet"),
    ("nasnet_large", "NASNet-A Large", 331, True, 4032, 84_720_150, 0.827, "NASNet"),
    ("pnasnet_large", "PNASNet-5 Large", 331, True, 4320, 81_736_668, 0.829, "PNASNet"),
)


def _imagenet_entry(name, paper_name, size, fixed, dim, params, top1, family) -> ModelEntry:
  return ModelEntry(
      name, f"{_IMAGENET_PREFIX}{name}/feature_vector/4", imagenet_accuracy=top1,
      upstream_dataset="ILSVRC-2012-CLS", upstream_size=_IMAGENET_SIZE, num_params=params,
      feature_dim=dim, input_size=size, architecture=family, collection="tfhub",
      hub_format="tf2", fixed_input_size=fixed, paper_name=paper_name,
      provenance=_IMAGENET_PROVENANCE)


# --- 15 VTAB models, legacy TF1 Hub modules ([PA] Table 3, [HUB], [VTAB], [TA]). ---

_VTAB_PREFIX = "https://tfhub.dev/vtab/"
# Input sizes are E: [VTAB] App. I fine-tunes at 224, generative models at 128.
_VTAB_PROVENANCE = (
    ("handle", "V"), ("hub_format", "V"), ("signature", "V"), ("output_key", "V"),
    ("input_size", "E"), ("value_range", "V"), ("feature_dim", "V"), ("num_params", "V"),
    ("upstream_dataset", "V"), ("upstream_size", "D"), ("expert", "D"), ("paper_name", "D"))

# handle name, input size, dim, params, family, upstream labels (V [HUB]/[VTAB]).
_VTAB = (
    ("sup-100", 224, 2048, 23_500_352, "ResNet-50 v2", "100% labels"),
    ("rotation", 224, 2048, 23_500_352, "ResNet-50 v2", "no labels (self-supervised)"),
    ("exemplar", 224, 2048, 23_500_352, "ResNet-50 v2", "no labels (self-supervised)"),
    ("relative-patch-location", 224, 2048, 23_500_352, "ResNet-50 v2, stride 16",
     "no labels (self-supervised, patches)"),
    ("jigsaw", 224, 2048, 23_500_352, "ResNet-50 v2, stride 16",
     "no labels (self-supervised, patches)"),
    ("semi-rotation-10", 224, 2048, 23_500_352, "ResNet-50 v2",
     "10% labels + rotation on all images"),
    ("sup-rotation-100", 224, 2048, 23_500_352, "ResNet-50 v2", "100% labels + rotation"),
    ("semi-exemplar-10", 224, 2048, 23_500_352, "ResNet-50 v2",
     "10% labels + exemplar on all images"),
    ("sup-exemplar-100", 224, 2048, 23_500_352, "ResNet-50 v2", "100% labels + exemplar"),
    ("cond-biggan", 128, 1536, 86_444_833, "BigGAN discriminator",
     "labels (class-conditional GAN)"),
    ("uncond-biggan", 128, 1536, 86_444_833, "BigGAN discriminator",
     "no labels (+ auxiliary self-supervision)"),
    # "Encoder" is D from [VTAB] App. C: all but the BigGANs use the standard ResNet50-v2.
    ("wae-mmd", 128, 128, 23_779_136, "ResNet-50 v2 encoder", "no labels"),
    ("wae-gan", 128, 128, 23_779_136, "ResNet-50 v2 encoder", "no labels"),
    ("wae-ukl", 128, 128, 23_779_136, "ResNet-50 v2 encoder", "no labels"),
    ("vae", 128, 128, 23_779_136, "ResNet-50 v2 encoder", "no labels"),
)


def _vtab_entry(hub_name, size, dim, params, family, labels) -> ModelEntry:
  arch_code = "D" if family.endswith("encoder") else "V"
  notes = f"Upstream labels: {labels}."
  if "stride 16" in family:
    notes += (" VTAB evaluates it on a 3x3 grid of 64 px patches of a 192 px centre crop, "
              "averaged; whether the module does this itself is E.")
  return ModelEntry(
      "vtab_" + hub_name.replace("-", "_"), f"{_VTAB_PREFIX}{hub_name}/1",
      upstream_dataset="ILSVRC-2012-CLS", upstream_size=_IMAGENET_SIZE, num_params=params,
      feature_dim=dim, input_size=size, architecture=family, collection="tfhub",
      hub_format="tf1", signature="default", output_key="pre_logits", paper_name=hub_name,
      notes=notes, provenance=_VTAB_PROVENANCE + (("architecture", arch_code),))


# --- 16 experts: public BiT stand-ins for the paper's JFT experts ([HUB], [BIT], [EXP]). ---

_BIT_EXPERT_PREFIX = "https://tfhub.dev/google/experts/bit/r50x1/in21k/"
# BiT R50x1 backbone without head: 23,500,352 parameters (D, counted from [BIT] models.py); the
# paper's JFT experts have 23,807,702 (PAPER_EXPERT_PARAMS). Input 224 is E (it is flexible).
_BIT_PARAMS = 23_500_352
_BIT_ARCH = "BiT ResNet-50 v2 (GroupNorm + WS)"
_BIT_PROVENANCE = (
    ("handle", "V"), ("hub_format", "V"), ("input_size", "E"), ("value_range", "V"),
    ("feature_dim", "V"), ("num_params", "D"), ("upstream_dataset", "V"),
    ("architecture", "V"), ("expert", "D"))

# Set A: (ImageNet-21k subtree, the paper's expert it stands in for, fit); the match is E.
_SET_A = (
    ("conveyance", "Mode of transport", "strong"),
    ("natural_object", "Geographical feature", "weak"),
    ("structure", "Structure", "strong"),
    ("mammal", "Mammal", "exact"),
    ("plant", "Plant", "exact"),
    ("substance", "Material", "medium"),
    ("consumer_goods", "Home & garden", "weak"),
    ("angiosperm", "Flowering plant", "exact"),
    ("equipment", "Sports equipment", "strong"),
    ("nutriment", "Dish", "strong"),
    ("clothing", "Textile", "medium"),
    ("covering", "Shoe", "medium"),
    ("container", "Bag", "strong"),
    ("matter", "Paper", "weak"),
    ("solid", "Snow", "weak"),
)
# Set B: the Full-INet kNN picks of [EXP] App. C.6 Table 4 less physical_entity (D; the drop E).
_SET_B = ("object", "artifact", "organism", "carnivore", "structure", "implement", "food",
          "whole", "instrument", "mammal", "spermatophyte", "clothing", "matter", "plant",
          "abstraction")
_SET_A_MATCH = {subset: (paper, fit) for subset, paper, fit in _SET_A}


def _bit_expert_entry(subset: str) -> ModelEntry:
  paper_expert, fit = _SET_A_MATCH.get(subset, (None, None))
  notes = f"Set A stand-in, {fit} fit." if fit else "Set B only: no one-to-one paper expert."
  provenance = _BIT_PROVENANCE + ((("stands_in_for", "E"),) if paper_expert else ())
  # The subtree sizes are not published (E: unknown), so upstream_size stays None.
  return ModelEntry(
      f"bit_expert_{subset}", f"{_BIT_EXPERT_PREFIX}{subset}/1",
      upstream_dataset=f"ImageNet-21k subtree '{subset}'", num_params=_BIT_PARAMS,
      feature_dim=2048, input_size=224, architecture=_BIT_ARCH, expert=True,
      collection="tfhub", hub_format="tf2", stands_in_for=paper_expert,
      notes=notes + " BiT-M R50x1 fine-tuned on the subtree.", provenance=provenance)


# The full-upstream analogue of the paper's "Full JFT" expert: BiT-M R50x1 on all of
# ImageNet-21k, 14M images per the BiT page (V; [EXP] says about 13M).
_BIT_M = ModelEntry(
    "bit_m_r50x1", "https://tfhub.dev/google/bit/m-r50x1/1", upstream_dataset="ImageNet-21k",
    upstream_size=14_000_000, num_params=_BIT_PARAMS, feature_dim=2048, input_size=224,
    architecture=_BIT_ARCH, expert=True, collection="tfhub", hub_format="tf2",
    stands_in_for="Full JFT", notes="Set A and B stand-in, strong fit; 21,843 classes.",
    provenance=_BIT_PROVENANCE + (("upstream_size", "V"), ("stands_in_for", "E")))

_GENERALISTS = tuple([_imagenet_entry(*row) for row in _IMAGENET]
                     + [_vtab_entry(*row) for row in _VTAB])
_BIT_EXPERTS = {s: _bit_expert_entry(s) for s in [s for s, _, _ in _SET_A] + list(_SET_B)}
_TFHUB = _GENERALISTS + tuple(_BIT_EXPERTS[s] for s, _, _ in _SET_A) + (_BIT_M,)
_TFHUB_SET_B = _GENERALISTS + tuple(_BIT_EXPERTS[s] for s in _SET_B) + (_BIT_M,)
_BY_NAME = {e.name: e for e in _TFHUB + _TFHUB_SET_B}

# The expert names of each stand-in set, e.g. for a custom pool.
EXPERTS_SET_A = tuple(e.name for e in _TFHUB if e.expert)
EXPERTS_SET_B = tuple(e.name for e in _TFHUB_SET_B if e.expert)
COLLECTIONS = ("tfhub", "tfhub_set_b", "mini")


def default_cache_dir() -> epath.Path:
  """The cache root: $MODEL_SEARCH_CACHE, else ~/.cache/model_search (the mini zoo is in zoo/)."""
  return epath.Path(os.environ.get("MODEL_SEARCH_CACHE", "~/.cache/model_search")).expanduser()


def get(name: str) -> ModelEntry:
  """Returns the registry entry `name` of the 'tfhub' or 'tfhub_set_b' collection.

  Args:
    name: a model name such as 'resnet_v2_50', 'vtab_sup_100' or 'bit_m_r50x1'.

  Returns:
    The ModelEntry. Mini-zoo entries come from `entries('mini')`.
  """
  if name not in _BY_NAME:
    raise ValueError(f"Unknown model {name!r}; known models: {', '.join(sorted(_BY_NAME))}")
  return _BY_NAME[name]


def entries(collection: str, *, cache_dir: str | os.PathLike[str] | None = None
            ) -> list[ModelEntry]:
  """Returns the entries of a collection, in registry order.

  Args:
    collection: 'tfhub' (the paper's 46, expert stand-ins set A), 'tfhub_set_b' (the same with
      stand-in set B) or 'mini' (the mini zoo, which the 'zoo' stage must have built).
    cache_dir: for 'mini', the cache root holding zoo/ (default: `default_cache_dir()`).

  Returns:
    A new list of ModelEntry records.
  """
  if collection == "tfhub":
    return list(_TFHUB)
  if collection == "tfhub_set_b":
    return list(_TFHUB_SET_B)
  if collection == "mini":
    return _mini_entries(epath.Path(cache_dir) if cache_dir else default_cache_dir())
  raise ValueError(f"Unknown collection {collection!r}; choices: {', '.join(COLLECTIONS)}")


def _mini_entries(cache_root: epath.Path) -> list[ModelEntry]:
  # Imported here: mini_zoo imports this module (and jax, TensorFlow).
  from model_search.models import mini_zoo  # pylint: disable=import-outside-toplevel
  try:
    return mini_zoo.entries(mini_zoo.get_zoo_config(), cache_root / "zoo")
  except ValueError as err:
    raise ValueError(f"{err} The mini zoo is looked up with the default zoo config under "
                     f"{cache_root / 'zoo'} (set MODEL_SEARCH_CACHE or cache_dir to change "
                     "the cache root).") from err

