"""The model registry: one :class:`ModelSpec` per model, the one place that knows a model.

A spec holds the model's name (and aliases), its class, whether it is multi-scene, its config keys with
defaults and types, which of them are architectural (a checkpoint must agree on them), which keys it
accepts but ignores, which backbone types it accepts (the first is the default ``backbone_type``; none named:
any registered one, :data:`models.backbone.DEFAULT_BACKBONE` the default), the key
prefixes that identify a bare reference state_dict of it, and the names of its reference layout tables.
Config validation, the scripts' ``choices``, checkpoint checks and :func:`canonical_model_name` all read
it. Adding a model is one module plus one :func:`register` call (see "Adding a model" in the README).

Model classes are imported on demand, so one model's module never has to import another's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from models.backbone import DEFAULT_BACKBONE
from models.hypernet import HEAD_INITS, STATIC_HEAD_INITS
from util.errors import UserError
from util.schema import INT_GE1, Key, at_least, check_dropout, greater, one_of


@dataclass(frozen=True)
class SceneSetting:
    """What single-scene and multi-scene models differ in outside the models: their scripts and options, and
    the scene columns of what they write. Code that handles both reads it here instead of branching."""

    name: str  # "single-scene", "multi-scene"
    script: str  # train / test / predict
    batch_script: str  # batch evaluation
    test_dataset_option: bool  # the scripts take --test_dataset_id
    prediction_columns: tuple[str, ...]  # test mode's per-frame CSV, after the errors
    predict_columns: tuple[str, ...]  # predict mode's poses CSV, after the pose
    summary_columns: tuple[str, ...]  # per-scene summaries, after the errors
    training_metrics: tuple[str, ...]  # metrics.csv and TensorBoard, besides the pose metrics
    export_outputs: tuple[str, ...]  # an exported graph's outputs after position and quaternion


SINGLE_SCENE = SceneSetting(
    name="single-scene",
    script="main_single_scene.py",
    batch_script="main_batch_eval_model.py",
    test_dataset_option=False,
    prediction_columns=(),
    predict_columns=(),
    summary_columns=(),
    training_metrics=(),
    export_outputs=(),
)
MULTI_SCENE = SceneSetting(
    name="multi-scene",
    script="main_multi_scene.py",
    batch_script="main_batch_ms_eval.py",
    test_dataset_option=True,
    prediction_columns=("scene_pred",),
    predict_columns=("scene_pred", "scene_prob"),
    summary_columns=("scene_acc",),
    training_metrics=("scene_acc", "scene_nll"),
    export_outputs=("scene_logp",),
)


def scene_setting(multi_scene: bool) -> SceneSetting:
    return MULTI_SCENE if multi_scene else SINGLE_SCENE


@dataclass(frozen=True)
class ModelSpec:
    """Everything the toolkit knows about one model, outside its module."""

    name: str
    target: str | type  # "module:Class" (imported on demand), or the class itself
    multi_scene: bool
    summary: str
    keys: Mapping[str, Key] = field(default_factory=dict)  # model-specific config keys
    training_defaults: Mapping[str, Any] = field(default_factory=dict)  # other defaults than the shared ones
    arch_keys: tuple[str, ...] = ()  # besides backbone_type, which is always architectural
    ignored_keys: Mapping[str, str] = field(default_factory=dict)  # key -> why it changes nothing
    backbones: tuple[str, ...] | None = None  # registered backbone names ("timm": every timm:<name>); None: any
    reference_keys: tuple[str, ...] = ()  # key prefixes that all appear in a reference state_dict of it
    reference_tables: tuple[str, ...] = ()  # "<model>_<dataset>" layout tables (tests/data/reference_checkpoints)
    aliases: tuple[str, ...] = ()
    check: Callable[[dict], tuple[str, str] | None] | None = None  # (key, problem) between keys

    @property
    def cls(self) -> type[nn.Module]:
        if isinstance(self.target, type):
            return self.target
        module_name, class_name = self.target.split(":")
        return getattr(importlib.import_module(module_name), class_name)

    @property
    def setting(self) -> SceneSetting:
        return scene_setting(self.multi_scene)

    @property
    def default_backbone(self) -> str:
        return self.backbones[0] if self.backbones else DEFAULT_BACKBONE

    def accepts_backbone(self, backbone_type: str) -> bool:
        """Whether the model takes a backbone of this (valid) type; a family member by its family."""
        return self.backbones is None or backbone_type.partition(":")[0] in self.backbones


class UnknownModelError(UserError, ValueError):
    """A model name the registry does not know."""


_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model; its name and aliases must be new."""
    for name in (spec.name, *spec.aliases):
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[spec.name] = spec
    _ALIASES.update({alias: spec.name for alias in spec.aliases})
    return spec


def unregister(name: str) -> None:
    """Remove a model (for tests that register a toy model)."""
    spec = _REGISTRY.pop(name)
    for alias in spec.aliases:
        _ALIASES.pop(alias, None)


def model_names(multi_scene: bool | None = None) -> tuple[str, ...]:
    """Registered model names in registration order, optionally only single- or multi-scene ones."""
    return tuple(n for n, s in _REGISTRY.items() if multi_scene is None or s.multi_scene == multi_scene)


def cli_choices(multi_scene: bool) -> tuple[str, ...]:
    """What the scripts accept as model_name: the names and aliases of single- or multi-scene models."""
    names = model_names(multi_scene)
    return names + tuple(a for a, n in _ALIASES.items() if n in names)


def canonical_model_name(name: str) -> str:
    """The canonical name (``mstransformer`` -> ``ems-transposenet``); UserError listing the valid names."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        alias_text = ", ".join(f"{a} = {t}" for a, t in _ALIASES.items())
        raise UnknownModelError(
            f"unknown model '{name}'; valid models: {', '.join(_REGISTRY)}"
            + (f" (aliases: {alias_text})" if alias_text else "")
        )
    return key


def get_spec(name: str) -> ModelSpec:
    """The spec of a model (aliases accepted)."""
    return _REGISTRY[canonical_model_name(name)]


def build_model(name: str, config: dict, backbone: nn.Module) -> nn.Module:
    """Construct the named model around ``backbone`` with the effective ``config``."""
    spec = get_spec(name)
    backbone_type = getattr(backbone, "type_name", spec.default_backbone)
    if not spec.accepts_backbone(backbone_type):
        raise UserError(
            f"model '{spec.name}' does not accept backbone '{backbone_type}'; it accepts: {', '.join(spec.backbones)}"
        )
    return spec.cls(config, backbone)


def guess_reference_model(state_dict: Mapping[str, Any]) -> str:
    """Which model a bare reference state_dict belongs to, from its keys ("unknown" if none fits).

    A spec fits when every one of its ``reference_keys`` prefixes starts some key; the most specific
    fitting spec wins (hyperatloc over atloc)."""
    keys = list(state_dict)
    fitting = [
        s
        for s in _REGISTRY.values()
        if s.reference_keys and all(any(k.startswith(p) for k in keys) for p in s.reference_keys)
    ]
    return max(fitting, key=lambda s: len(s.reference_keys)).name if fitting else "unknown"


# ---------------------------------------------------------------------------------------------------
# Key tables shared by several entries

_INIT_DOC = "how the regression head starts: 'reference' as the reference code drew it, 'torch' PyTorch's default"
# Models without a hypernetwork: the reference's init or PyTorch's.
_STATIC_INIT = {"head_init": Key("reference", "str", one_of(*STATIC_HEAD_INITS), doc=_INIT_DOC)}
# Hyper models: also hyperfan-in generators, or generated layers that start at zero (models/hypernet.py).
_HYPER_INIT = {
    "head_init": Key(
        "reference",
        "str",
        one_of(*HEAD_INITS),
        doc=_INIT_DOC + ", 'hyperfan' generators scaled so the generated weights have "
        "kaiming's variance, 'zero' generated layers that start at zero",
    )
}
_HYPER_KEYS = {
    "hyper_dim_t": Key(256, **INT_GE1, doc="width of the position hypernetwork (generated layer input)"),
    "hyper_dim_rot": Key(512, **INT_GE1, doc="width of the orientation hypernetwork"),
}
_NO_HYPERNETWORK = "it has no hypernetwork"
_HYPER_IGNORED = {
    "hyper_dim_t": _NO_HYPERNETWORK,
    "hyper_dim_rot": _NO_HYPERNETWORK,
    "hyper_t_hidden_scale": _NO_HYPERNETWORK,
}
_UNUSED_SCALE = "it scales a hidden layer that only mshyperpose's generated position regressor has"
# What the single-scene hyper models (hyperpose, hyperatloc) share: their keys, all architectural.
_SINGLE_HYPER = dict(
    keys={**_HYPER_KEYS, **_HYPER_INIT},
    arch_keys=tuple(_HYPER_KEYS),
    ignored_keys={"hyper_t_hidden_scale": _UNUSED_SCALE},
)

# Endpoint names are uniform across backbones: reduction_k has stride 2**k.
_REDUCTIONS = ("reduction_1", "reduction_2", "reduction_3", "reduction_4", "reduction_5")


def _check_reduction(v: list) -> str | None:
    if len(v) != 2:
        return "must list two endpoints: [position branch, orientation branch]"
    bad = [r for r in v if r not in _REDUCTIONS]
    return f"has unknown endpoint(s) {bad}; valid: {', '.join(_REDUCTIONS)} (stride 2**k)" if bad else None


def _check_transformer(config: dict) -> tuple[str, str] | None:
    from models.ms_transposenet import MAX_POSITIONS

    d, heads = config["hidden_dim"], config["nheads"]
    if d % 2:
        return "hidden_dim", (
            f"'hidden_dim' ({d}) must be even: the 2D position embedding gives half of it to rows and half to columns"
        )
    if d % heads:
        return "hidden_dim", f"'hidden_dim' ({d}) must be divisible by 'nheads' ({heads})"
    for endpoint in config["reduction"]:
        stride = 2 ** int(endpoint.rsplit("_", 1)[1])
        cells = config["image_crop"] // stride
        if cells > MAX_POSITIONS:
            return "image_crop", (
                f"'image_crop' {config['image_crop']} gives {cells}x{cells} cells at {endpoint}, "
                f"more than the {MAX_POSITIONS} rows of the learned position tables; use "
                f"image_crop <= {(MAX_POSITIONS + 1) * stride - 1}"
            )
    return None


def _check_mshyperpose(config: dict) -> tuple[str, str] | None:
    problem = _check_transformer(config)
    if problem is None and int(config["hyper_dim_t"] * config["hyper_t_hidden_scale"]) < 1:
        return "hyper_t_hidden_scale", (
            "'hyper_t_hidden_scale' * 'hyper_dim_t' must be >= 1 (the width of a generated layer)"
        )
    return problem


_TRANSFORMER_KEYS = {
    "equalize_scenes": Key(False, "bool", doc="sample every scene as often as the largest has frames, per epoch"),
    "freeze_mode": Key(
        "reference",
        "str",
        one_of("reference", "train_listed"),
        doc="with freeze: 'reference' runs backbone and transformers frozen in eval mode and "
        "trains the listed head parameters; 'train_listed' trains every listed parameter, "
        "all in train mode",
    ),
    "num_scenes": Key(
        None, "int", at_least(1), nullable=True, doc="number of scenes; null: taken from the training CSV"
    ),
    "num_t_encoder_layers": Key(4, **INT_GE1, doc="encoder layers of the position transformer"),
    "num_t_decoder_layers": Key(4, **INT_GE1, doc="decoder layers of the position transformer"),
    "num_rot_encoder_layers": Key(4, **INT_GE1, doc="encoder layers of the orientation transformer"),
    "num_rot_decoder_layers": Key(4, **INT_GE1, doc="decoder layers of the orientation transformer"),
    "dim_feedforward": Key(256, **INT_GE1, doc="feed-forward width of the transformer layers"),
    "hidden_dim": Key(256, "int", at_least(2), doc="transformer width d"),
    "reg_hidden_dim": Key(1024, **INT_GE1, doc="hidden width of the MLP regressor heads"),
    "dropout": Key(0.1, "float", check_dropout, doc="transformer dropout"),
    "nheads": Key(8, **INT_GE1, doc="attention heads (the reference ran 8 whatever its config said)"),
    "reduction": Key(
        ["reduction_4", "reduction_3"],
        "str_list",
        _check_reduction,
        doc="backbone endpoints of the position and orientation branches",
    ),
}
_TRANSFORMER_ARCH = (
    "hidden_dim",
    "dim_feedforward",
    "reg_hidden_dim",
    "num_t_encoder_layers",
    "num_t_decoder_layers",
    "num_rot_encoder_layers",
    "num_rot_decoder_layers",
    "nheads",
    "reduction",
    "num_scenes",
)
_MULTI_SCENE_SCHEDULE = {"lr_scheduler_step_size": 10, "n_epochs": 50}
_DATASETS = ("7Scenes", "CambridgeLandmarks")


# ---------------------------------------------------------------------------------------------------
# The models

register(
    ModelSpec(
        name="posenet",
        target="models.posenet:PoseNet",
        multi_scene=False,
        summary="PoseNet (Kendall et al. 2015) as in the reference: GoogLeNet -> fc 1024 -> t, q",
        keys=_STATIC_INIT,
        ignored_keys=_HYPER_IGNORED,
        backbones=("googlenet",),
        reference_keys=("backbone.inception3a.", "fc1."),
        reference_tables=("posenet_CambridgeLandmarks",),
    )
)

register(
    ModelSpec(
        name="effposenet",
        target="models.effposenet:EffPoseNet",
        multi_scene=False,
        summary="the PoseNet head on EfficientNet-B0 (the static baseline of hyperpose)",
        keys=_STATIC_INIT,
        ignored_keys=_HYPER_IGNORED,
        reference_keys=("backbone._conv_stem.", "fc1."),
        reference_tables=tuple(f"effposenet_{d}" for d in _DATASETS),
    )
)

register(
    ModelSpec(
        name="hyperpose",
        target="models.hyperpose:HyperPose",
        multi_scene=False,
        summary="HyperPose: the effposenet head plus per-image generated output layers",
        **_SINGLE_HYPER,
        reference_keys=("_backbone.", "hypernet_t_fc_h2."),
        reference_tables=tuple(f"hyperpose_{d}" for d in _DATASETS),
    )
)

register(
    ModelSpec(
        name="atloc",
        target="models.atloc:AtLoc",
        multi_scene=False,
        summary="AtLoc (Wang et al. 2020) as in the reference: ResNet34 -> fc 2048 -> self-attention -> t, q",
        keys=_STATIC_INIT,
        ignored_keys=_HYPER_IGNORED,
        backbones=("resnet34",),
        reference_keys=("feature_extractor.", "att.g."),
        reference_tables=("atloc_CambridgeLandmarks",),
    )
)

register(
    ModelSpec(
        name="hyperatloc",
        target="models.hyperatloc:HyperAtLoc",
        multi_scene=False,
        summary="HyperAtLoc: AtLoc plus per-image generated output layers",
        **_SINGLE_HYPER,
        backbones=("resnet34",),
        reference_keys=("feature_extractor.", "att.g.", "hypernet_t_fc_h2."),
        reference_tables=("hyperatloc_CambridgeLandmarks",),
    )
)

register(
    ModelSpec(
        name="ems-transposenet",
        target="models.ms_transposenet:MSTransPoseNet",
        multi_scene=True,
        summary="MS-Transformer (Shavit et al. 2021): two transformers, one query and one MLP head per scene",
        keys={**_TRANSFORMER_KEYS, **_STATIC_INIT},
        training_defaults=_MULTI_SCENE_SCHEDULE,
        arch_keys=_TRANSFORMER_ARCH,
        ignored_keys=_HYPER_IGNORED,
        check=_check_transformer,
        aliases=("mstransformer",),
        reference_keys=("backbone.0.body.", "regressor_head_t.0."),
        reference_tables=tuple(f"ems-transposenet_{d}" for d in _DATASETS),
    )
)

register(
    ModelSpec(
        name="mshyperpose",
        target="models.mshyperpose:MSHyperPose",
        multi_scene=True,
        summary="MS-HyperPose: MS-Transformer with a shared head plus per-image generated MLPs",
        keys={
            **_TRANSFORMER_KEYS,
            **_HYPER_KEYS,
            **_HYPER_INIT,
            "hyper_t_hidden_scale": Key(
                0.5, "float", greater(0), doc="width of the second generated position layer, times hyper_dim_t"
            ),
        },
        training_defaults=_MULTI_SCENE_SCHEDULE,
        arch_keys=_TRANSFORMER_ARCH + tuple(_HYPER_KEYS) + ("hyper_t_hidden_scale",),
        check=_check_mshyperpose,
        reference_keys=("backbone.0.body.", "hypernet_t_fc_h0."),
        reference_tables=tuple(f"mshyperpose_{d}" for d in _DATASETS),
    )
)
