"""Config loading: shipped and reference files, every promised error, override semantics, warnings."""

import copy
import json
import logging
from pathlib import Path

import pytest

from models.config import all_keys, defaults, load_config, main, validate_config
from models.registry import canonical_model_name, get_spec, model_names
from util.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHIPPED = ["7Scenes_config.json", "CambridgeLandmarks_config.json", "synthetic_config.json"]

GENERAL_REF = {"n_freq_print": 5, "n_freq_checkpoint": 5, "n_workers": 4, "device_id": "cuda:0"}
# The published reference configs, value for value (shared/docs/reference_configs.md).
REF_7SCENES = {
    "general": GENERAL_REF,
    "hyperpose": {
        "batch_size": 8,
        "learnable": True,
        "s_x": 0.0,
        "s_q": 0.0,
        "norm": 2,
        "lr": 0.0001,
        "weight_decay": 0.0001,
        "eps": 1e-10,
        "lr_scheduler_step_size": 5,
        "lr_scheduler_gamma": 0.75,
        "n_epochs": 10,
        "hyper_dim_t": 256,
        "hyper_dim_rot": 512,
        "backbone_type": "efficientnet",
        "freeze": False,
        "freeze_exclude_phrase": ["hyper_in_t_proj", "hyper_in_t", "hyper_in_t_fc_2", "hypernet_t_fc_h2"],
        "no_augment": False,
    },
    "mshyperpose": {
        "batch_size": 8,
        "equalize_scenes": False,
        "num_scenes": 7,
        "learnable": True,
        "s_x": 0.0,
        "s_q": 0.0,
        "lr": 0.0001,
        "norm": 2,
        "weight_decay": 0.0001,
        "eps": 1e-10,
        "lr_scheduler_gamma": 0.75,
        "lr_scheduler_step_size": 10,
        "n_epochs": 50,
        "num_t_encoder_layers": 4,
        "num_t_decoder_layers": 4,
        "num_rot_encoder_layers": 4,
        "num_rot_decoder_layers": 4,
        "dim_feedforward": 256,
        "hidden_dim": 256,
        "reg_hidden_dim": 1024,
        "hyper_dim_t": 256,
        "hyper_dim_rot": 512,
        "hyper_t_hidden_scale": 0.5,
        "dropout": 0.1,
        "nheads": 4,
        "reduction": ["reduction_4", "reduction_3"],
        "freeze": False,
        "freeze_exclude_phrase": [
            "hyper_in_rot_proj",
            "hyper_in_rot_fc_0",
            "hyper_in_rot_fc_1",
            "hyper_in_rot_fc_2",
            "regressor_hyper_rot",
            "regressor_head_rot",
            "transformer_rot",
            "input_proj_rot",
        ],
        "no_augment": False,
    },
}
_CAMBRIDGE_BASELINE = {
    "batch_size": 32,
    "learnable": True,
    "s_x": -3.0,
    "s_q": -6.5,
    "norm": 2,
    "lr": 0.001,
    "weight_decay": 0.0001,
    "eps": 1e-10,
    "lr_scheduler_step_size": 200,
    "lr_scheduler_gamma": 0.5,
    "n_epochs": 600,
}
REF_CAMBRIDGE = {
    "general": GENERAL_REF,
    "posenet": _CAMBRIDGE_BASELINE,
    "effposenet": _CAMBRIDGE_BASELINE,
    "hyperpose": {
        "batch_size": 8,
        "learnable": True,
        "s_x": -3.0,
        "s_q": -6.5,
        "norm": 2,
        "lr": 0.0001,
        "weight_decay": 0.0001,
        "eps": 1e-10,
        "lr_scheduler_step_size": 10,
        "lr_scheduler_gamma": 0.75,
        "n_epochs": 100,
        "hyper_dim_t": 256,
        "hyper_dim_rot": 512,
        "backbone_type": "efficientnet",
        "freeze": False,
        "freeze_exclude_phrase": [
            "hyper_in_rot_proj",
            "hyper_in_rot",
            "hyper_in_rot_fc_2",
            "hypernet_rot_fc_h2",
            "fc3",
        ],
    },
    "atloc": _CAMBRIDGE_BASELINE,
    "hyperatloc": {
        "batch_size": 8,
        "learnable": True,
        "s_x": -3.0,
        "s_q": -6.5,
        "norm": 2,
        "lr": 0.0001,
        "weight_decay": 0.0001,
        "eps": 1e-10,
        "lr_scheduler_step_size": 200,
        "lr_scheduler_gamma": 0.75,
        "n_epochs": 600,
        "hyper_dim_t": 256,
        "hyper_dim_rot": 512,
    },
    "mshyperpose": {
        **REF_7SCENES["mshyperpose"],
        "equalize_scenes": True,
        "num_scenes": 4,
        "s_x": -3.0,
        "s_q": -6.5,
        "lr_scheduler_step_size": 200,
        "n_epochs": 600,
        "no_augment": True,
        "freeze_exclude_phrase": [
            "hyper_in_t_proj",
            "hyper_in_t_fc_0",
            "hyper_in_t_fc_1",
            "hyper_in_t_fc_2",
            "regressor_hyper_t",
            "regressor_head_t",
            "transformer_t",
            "input_proj_t",
        ],
    },
}
# Where the shipped files knowingly differ from the reference (docs/configs.md says why).
SHIPPED_DEVIATIONS = {"nheads": 8, "num_scenes": None}


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


@pytest.fixture
def ref7(tmp_path):
    return write_json(tmp_path / "7Scenes_config.json", REF_7SCENES)


@pytest.fixture
def refcam(tmp_path):
    return write_json(tmp_path / "CambridgeLandmarks_config.json", REF_CAMBRIDGE)


def section_config(tmp_path, model="hyperpose", general=None, **keys) -> Path:
    """A config file with the given keys in one model section."""
    data = {"general": dict(general or {}), model: keys}
    return write_json(tmp_path / "cfg.json", data)


def load_error(*args) -> str:
    with pytest.raises(UserError) as info:
        load_config(*args)
    message = str(info.value)
    assert "\n" not in message, "user errors are one line"
    return message


# ------------------------------------------------------------------ shipped and reference files


@pytest.mark.parametrize("file_name", SHIPPED)
@pytest.mark.parametrize("model", model_names())
def test_shipped_configs_load_for_every_model(file_name, model):
    config = load_config(CONFIGS / file_name, model)
    assert config["model_name"] == model
    assert set(config) == {"model_name"} | set(defaults(model))
    # Passing the same file again as the override (the documented command does) changes nothing.
    assert load_config(CONFIGS / file_name, model, CONFIGS / file_name) == config


@pytest.mark.parametrize("file_name", SHIPPED)
def test_shipped_configs_set_every_key_of_the_models_they_configure(file_name):
    sections = json.loads((CONFIGS / file_name).read_text())
    assert "general" in sections and set(sections) <= {"general", *model_names()}
    assert set(sections["general"]) == {
        "n_freq_print",
        "n_freq_checkpoint",
        "keep_optimizer_state",
        "n_workers",
        "device_id",
    }
    for model in set(sections) - {"general"}:
        # num_scenes comes from the data and cache_dir is a folder of the machine: neither is a recipe setting.
        expected = set(defaults(model)) - set(sections["general"]) - {"num_scenes", "cache_dir"}
        assert set(sections[model]) == expected, model


def test_synthetic_config_is_small_and_fast():
    for model in model_names():
        config = load_config(CONFIGS / "synthetic_config.json", model)
        assert config["image_crop"] <= config["image_resize"] <= 96  # small, fast images
        assert config["bn_momentum"] is not None  # short runs: running BN statistics must keep up
        assert config["n_workers"] in (0, 2)
        assert 10 <= config["n_epochs"] <= 100


@pytest.mark.parametrize(
    "file_name, reference", [("7Scenes_config.json", REF_7SCENES), ("CambridgeLandmarks_config.json", REF_CAMBRIDGE)]
)
def test_shipped_configs_keep_the_reference_values(file_name, reference):
    for model in ("effposenet", "hyperpose", "mshyperpose"):
        if model not in reference:
            continue
        config = load_config(CONFIGS / file_name, model)
        for key, value in {**reference[model], **reference["general"]}.items():
            expected = SHIPPED_DEVIATIONS.get(key, value)
            assert config[key] == expected, (model, key)


def test_reference_7scenes_file_loads_as_published(ref7, caplog):
    with caplog.at_level(logging.WARNING):
        hyper = load_config(ref7, "hyperpose")
        ms = load_config(ref7, "mshyperpose")
    assert not caplog.records
    assert hyper["lr"] == 1e-4 and hyper["lr_scheduler_step_size"] == 5 and hyper["n_epochs"] == 10
    assert hyper["freeze_exclude_phrase"] == REF_7SCENES["hyperpose"]["freeze_exclude_phrase"]
    assert hyper["device_id"] == "cuda:0" and hyper["n_workers"] == 4
    # nheads is honoured as written (the reference ignored it and ran 8); num_scenes comes through.
    assert ms["nheads"] == 4 and ms["num_scenes"] == 7 and ms["hyper_t_hidden_scale"] == 0.5
    assert ms["reduction"] == ["reduction_4", "reduction_3"]
    # Defaults fill the keys the reference did not have.
    assert (ms["seed"], ms["image_resize"], ms["image_crop"]) == (0, 256, 224)


def test_reference_cambridge_file_loads_and_skips_unimplemented_sections(refcam):
    eff = load_config(refcam, "effposenet")
    assert (eff["batch_size"], eff["lr"], eff["n_epochs"], eff["s_x"], eff["s_q"]) == (32, 1e-3, 600, -3.0, -6.5)
    assert load_config(refcam, "mshyperpose")["num_scenes"] == 4
    assert load_config(refcam, "hyperpose")["freeze_exclude_phrase"][-1] == "fc3"


def test_ems_transposenet_is_missing_from_the_reference_file(ref7, caplog):
    with caplog.at_level(logging.WARNING, logger="models.config"):
        config = load_config(ref7, "ems-transposenet")
    assert config["nheads"] == defaults("ems-transposenet")["nheads"]
    assert "no 'ems-transposenet' section" in caplog.text and "general, hyperpose, mshyperpose" in caplog.text


def test_unread_sections_are_not_validated(tmp_path):
    path = write_json(tmp_path / "c.json", {"posenet": {"anything": "goes"}, "hyperpose": {}})
    assert load_config(path, "hyperpose")["lr"] == defaults("hyperpose")["lr"]


# ------------------------------------------------------------------ names and aliases


def test_model_name_alias_and_case():
    assert canonical_model_name("mstransformer") == "ems-transposenet"
    assert canonical_model_name(" HyperPose ") == "hyperpose"
    with pytest.raises(UserError, match="valid models: posenet, effposenet, hyperpose, atloc, hyperatloc"):
        canonical_model_name("posnet")


def test_alias_reads_either_section_name(tmp_path):
    shipped = load_config(CONFIGS / "7Scenes_config.json", "mstransformer")
    assert shipped["model_name"] == "ems-transposenet"
    path = write_json(tmp_path / "c.json", {"mstransformer": {"nheads": 4}})
    assert load_config(path, "ems-transposenet")["nheads"] == 4
    both = write_json(tmp_path / "both.json", {"mstransformer": {}, "ems-transposenet": {}})
    assert "same model" in load_error(both, "ems-transposenet")


# ------------------------------------------------------------------ unknown keys


@pytest.mark.parametrize(
    "typo, model, closest",
    [
        ("nhead", "mshyperpose", "nheads"),
        ("lerning_rate", "hyperpose", "lr"),
        ("learning_rate", "effposenet", "lr"),
        ("batchsize", "hyperpose", "batch_size"),
        ("hyper_dim_tt", "hyperpose", "hyper_dim_t"),
        ("num_epochs", "ems-transposenet", "n_epochs"),
    ],
)
def test_typo_names_the_closest_key_and_the_section(tmp_path, typo, model, closest):
    message = load_error(section_config(tmp_path, model, **{typo: 1}), model)
    assert f"unknown key '{typo}'" in message
    assert f"did you mean '{closest}'?" in message
    assert f"section '{model}' of" in message and "cfg.json" in message


def test_typo_in_general_names_general(tmp_path):
    message = load_error(section_config(tmp_path, general={"n_freq_prints": 5}), "hyperpose")
    assert "section 'general'" in message and "'n_freq_print'" in message


def test_key_of_another_model_says_which(tmp_path):
    message = load_error(section_config(tmp_path, "hyperpose", equalize_scenes=True), "hyperpose")
    assert "does not apply to model 'hyperpose'" in message
    assert "ems-transposenet, mshyperpose" in message


def test_gibberish_key_lists_the_valid_keys(tmp_path):
    message = load_error(section_config(tmp_path, "effposenet", zzzz=1), "effposenet")
    assert "valid keys:" in message and "batch_size" in message


# ------------------------------------------------------------------ types and ranges


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("batch_size", "8", "must be an integer"),
        ("batch_size", True, "must be an integer"),
        ("batch_size", 8.0, "must be an integer"),
        ("learnable", 1, "must be true or false"),
        ("lr", "1e-4", "must be a number"),
        ("lr", False, "must be a number"),
        ("device_id", 0, "must be a string"),
        ("freeze_exclude_phrase", [1, 2], "must be a list of strings"),
        ("hyper_dim_t", None, "must be an integer"),
    ],
)
def test_wrong_type(tmp_path, key, value, expected):
    message = load_error(section_config(tmp_path, "hyperpose", **{key: value}), "hyperpose")
    assert f"'{key}' {expected}" in message
    assert "section 'hyperpose'" in message


@pytest.mark.parametrize(
    "model, keys, expected",
    [
        ("hyperpose", {"lr": 0}, "'lr' must be > 0"),
        ("hyperpose", {"lr": -1e-4}, "'lr' must be > 0"),
        ("hyperpose", {"batch_size": 0}, "'batch_size' must be >= 1"),
        ("hyperpose", {"n_epochs": 0}, "'n_epochs' must be >= 1"),
        ("hyperpose", {"weight_decay": -1}, "'weight_decay' must be >= 0"),
        ("hyperpose", {"eps": 0.0}, "'eps' must be > 0"),
        ("hyperpose", {"norm": 0.5}, "'norm' must be >= 1"),
        ("hyperpose", {"lr_scheduler_gamma": 1.5}, "'lr_scheduler_gamma' must be in (0, 1]"),
        ("hyperpose", {"seed": -1}, "'seed'"),
        ("hyperpose", {"backbone_type": "googlenett"}, "did you mean 'googlenet'"),
        ("hyperpose", {"backbone_type": "timm:resnet5O"}, "unknown timm model 'resnet5o'; closest: resnet50"),
        ("posenet", {"backbone_type": "resnet34"}, "model 'posenet' does not accept backbone_type 'resnet34'"),
        ("hyperpose", {"device_id": "gpu0"}, "'device_id' must be 'cpu', 'cuda' or 'cuda:N'"),
        ("hyperpose", {"image_crop": 300}, "'image_crop' (300) must be <= 'image_resize' (256)"),
        ("hyperpose", {"freeze": True}, "'freeze_exclude_phrase' is empty"),
        ("hyperpose", {"learnable": False}, "fixed loss weights"),
        ("hyperpose", {"learnable": False, "s_x": -3.0, "s_q": 1.0}, "fixed loss weights"),
        ("hyperpose", {"freeze_exclude_phrase": ["fc3", ""]}, "empty string"),
        ("mshyperpose", {"dropout": 1.0}, "'dropout' must be in [0, 1)"),
        ("mshyperpose", {"dropout": -0.1}, "'dropout' must be in [0, 1)"),
        ("mshyperpose", {"hidden_dim": 256, "nheads": 3}, "must be divisible by 'nheads' (3)"),
        ("mshyperpose", {"hidden_dim": 255, "nheads": 1}, "must be even"),
        ("mshyperpose", {"num_scenes": 0}, "'num_scenes' must be >= 1"),
        ("mshyperpose", {"reduction": ["reduction_4"]}, "two endpoints"),
        ("mshyperpose", {"reduction": ["reduction_4", "reduction_9"]}, "reduction_9"),
        ("mshyperpose", {"image_resize": 512, "image_crop": 512}, "position tables"),
        ("mshyperpose", {"hyper_dim_t": 1, "hyper_t_hidden_scale": 0.5}, "'hyper_t_hidden_scale' * 'hyper_dim_t'"),
        ("ems-transposenet", {"num_t_decoder_layers": 0}, "'num_t_decoder_layers' must be >= 1"),
        ("effposenet", {"n_workers": -1}, "'n_workers' must be >= 0"),
    ],
)
def test_out_of_range(tmp_path, model, keys, expected):
    message = load_error(section_config(tmp_path, model, **keys), model)
    assert expected in message


def test_non_finite_numbers_are_rejected(tmp_path):
    path = tmp_path / "nan.json"
    path.write_text('{"hyperpose": {"lr": NaN}}')
    assert "finite" in load_error(path, "hyperpose")


def test_ints_are_accepted_for_numbers_and_strings_are_normalised(tmp_path):
    config = load_config(
        section_config(
            tmp_path, "hyperpose", lr=1, s_x=-3, device_id="CUDA:1", freeze=True, freeze_exclude_phrase="fc3"
        ),
        "hyperpose",
    )
    assert config["lr"] == 1.0 and isinstance(config["lr"], float) and isinstance(config["s_x"], float)
    assert config["device_id"] == "cuda:1"
    assert config["freeze_exclude_phrase"] == ["fc3"]


def test_crop_limit_follows_the_reduction(tmp_path):
    # reduction_4 alone (stride 16) allows far larger crops than reduction_3 (stride 8).
    ok = section_config(
        tmp_path, "ems-transposenet", image_resize=512, image_crop=512, reduction=["reduction_4", "reduction_4"]
    )
    assert load_config(ok, "ems-transposenet")["image_crop"] == 512
    assert (
        load_config(section_config(tmp_path, "ems-transposenet", image_resize=407, image_crop=407), "ems-transposenet")[
            "image_crop"
        ]
        == 407
    )
    assert "image_crop <= 407" in load_error(
        section_config(tmp_path, "ems-transposenet", image_resize=408, image_crop=408), "ems-transposenet"
    )


# ------------------------------------------------------------------ files


def test_missing_file(tmp_path):
    message = load_error(tmp_path / "nope.json", "hyperpose")
    assert "config file not found" in message and "nope.json" in message


def test_directory_instead_of_file(tmp_path):
    assert "directory" in load_error(tmp_path, "hyperpose")


def test_missing_override_file(tmp_path):
    assert "missing.json" in load_error(CONFIGS / "7Scenes_config.json", "hyperpose", tmp_path / "missing.json")


def test_invalid_json_gives_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "hyperpose": {\n    "lr": 0.0001,\n  }\n}\n')
    message = load_error(path, "hyperpose")
    assert "bad.json:4:3: invalid JSON" in message


def test_duplicate_key_is_an_error(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text('{"hyperpose": {"lr": 0.1, "lr": 0.2}}')
    assert "'lr' appears twice" in load_error(path, "hyperpose")


@pytest.mark.parametrize(
    "data, expected",
    [
        ([1, 2], "expected a JSON object of sections"),
        ({"lr": 0.0001}, "top-level entry 'lr' must be a section"),
    ],
)
def test_flat_or_non_object_files_are_rejected(tmp_path, data, expected):
    assert expected in load_error(write_json(tmp_path / "c.json", data), "hyperpose")


def test_a_missing_model_section_means_its_defaults_with_a_warning(tmp_path, caplog):
    path = write_json(tmp_path / "c.json", {"general": {"n_workers": 0}, "posenet": {}, "hyperpose": {}})
    with caplog.at_level(logging.WARNING, logger="models.config"):
        config = load_config(path, "mshyperpose")
    assert config == {"model_name": "mshyperpose", **defaults("mshyperpose"), "n_workers": 0}
    assert "no 'mshyperpose' section" in caplog.text and "general, posenet, hyperpose" in caplog.text


def test_a_missing_section_beside_one_that_is_no_model_is_an_error(tmp_path):
    path = write_json(tmp_path / "c.json", {"general": {}, "mshyperpos": {"lr": 0.1}})
    message = load_error(path, "mshyperpose")
    assert "no 'mshyperpose' section" in message and "is 'mshyperpos' meant to be 'mshyperpose'?" in message


# ------------------------------------------------------------------ ignored keys and clashes


def test_ignored_key_warns_and_is_dropped(tmp_path, caplog):
    path = section_config(tmp_path, "hyperpose", hyper_t_hidden_scale=0.5)
    with caplog.at_level(logging.WARNING, logger="models.config"):
        config = load_config(path, "hyperpose")
    assert "hyper_t_hidden_scale" not in config
    assert "'hyper_t_hidden_scale' is accepted but ignored by hyperpose" in caplog.text


@pytest.mark.parametrize("model", ["effposenet", "ems-transposenet"])
def test_sections_copied_from_a_hypernetwork_model_load_with_warnings(tmp_path, caplog, model):
    keys = {"hyper_dim_t": 256, "hyper_dim_rot": 512, "hyper_t_hidden_scale": 0.5}
    with caplog.at_level(logging.WARNING, logger="models.config"):
        config = load_config(section_config(tmp_path, model, **keys), model)
    assert not set(keys) & set(config)
    assert caplog.text.count("accepted but ignored") == 3
    # Ignored keys are still type-checked.
    assert "must be an integer" in load_error(section_config(tmp_path, model, hyper_dim_t="x"), model)


def test_every_ignored_key_is_a_documented_key():
    for model in model_names():
        keys = get_spec(model).ignored_keys
        assert set(keys) <= set(all_keys())
        assert not set(keys) & set(defaults(model))


def test_general_wins_over_the_model_section_with_a_warning(tmp_path, caplog):
    path = section_config(tmp_path, "hyperpose", general={"batch_size": 4}, batch_size=16)
    with caplog.at_level(logging.WARNING, logger="models.config"):
        assert load_config(path, "hyperpose")["batch_size"] == 4
    assert "'general' wins" in caplog.text


# ------------------------------------------------------------------ override files


def test_override_updates_section_by_section(tmp_path, ref7):
    override = write_json(
        tmp_path / "override.json", {"general": {"n_workers": 0, "device_id": "cpu"}, "hyperpose": {"n_epochs": 2}}
    )
    config = load_config(ref7, "hyperpose", override)
    assert (config["n_workers"], config["device_id"], config["n_epochs"]) == (0, "cpu", 2)
    # Everything else comes from the base file.
    assert config["lr_scheduler_step_size"] == 5 and config["n_freq_print"] == 5
    # The override need not have the model's section, or any section at all.
    assert load_config(ref7, "hyperpose", write_json(tmp_path / "empty.json", {}))["n_epochs"] == 10


def test_override_general_beats_base_general_and_sections(tmp_path, ref7):
    override = write_json(tmp_path / "o.json", {"general": {"n_freq_print": 1}, "mshyperpose": {"n_freq_print": 7}})
    assert load_config(ref7, "mshyperpose", override)["n_freq_print"] == 1


def test_override_may_supply_the_missing_section(tmp_path, ref7):
    override = write_json(tmp_path / "o.json", {"ems-transposenet": {"nheads": 8}})
    assert load_config(ref7, "ems-transposenet", override)["nheads"] == 8


def test_errors_in_the_override_name_the_override(tmp_path, ref7):
    override = write_json(tmp_path / "o.json", {"hyperpose": {"nhead": 8}})
    message = load_error(ref7, "hyperpose", override)
    assert "o.json" in message and "7Scenes_config.json" not in message


# ------------------------------------------------------------------ validate_config and DEFAULTS


@pytest.mark.parametrize("model", model_names())
def test_defaults_are_valid_and_complete(model):
    config = validate_config(model, {})
    assert config == {"model_name": model, **defaults(model)}
    assert set(defaults(model)) <= set(all_keys())


@pytest.mark.parametrize("model", model_names())
def test_validate_is_idempotent_and_copies(model):
    config = load_config(CONFIGS / "7Scenes_config.json", model)
    again = validate_config(model, copy.deepcopy(config))
    assert again == config
    if "reduction" in again:
        again["reduction"].append("reduction_1")
        assert defaults(model)["reduction"] == ["reduction_4", "reduction_3"]


def test_defaults_by_model():
    assert defaults("mshyperpose")["nheads"] == 8 and defaults("mshyperpose")["hyper_t_hidden_scale"] == 0.5
    assert defaults("mshyperpose")["num_scenes"] is None
    assert "nheads" not in defaults("hyperpose") and "hyper_dim_t" not in defaults("effposenet")
    assert defaults("hyperpose")["hyper_dim_rot"] == 512 and defaults("ems-transposenet")["reg_hidden_dim"] == 1024
    for model in model_names():
        assert defaults(model)["seed"] == 0 and defaults(model)["image_crop"] == 224


def test_validate_config_checks_model_name_and_unknown_keys():
    assert validate_config("mstransformer", {"model_name": "ems-transposenet"})["model_name"] == "ems-transposenet"
    with pytest.raises(UserError, match="being read for 'hyperpose'"):
        validate_config("hyperpose", {"model_name": "effposenet"})
    with pytest.raises(UserError, match="did you mean 'nheads'"):
        validate_config("mshyperpose", {"nhead": 4})


# ------------------------------------------------------------------ docs and CLI


def test_docs_describe_every_key_and_model():
    text = (REPO / "docs" / "configs.md").read_text()
    for key in all_keys():
        assert f"`{key}`" in text, key
    for model in model_names():
        assert model in text


def test_cli_prints_the_effective_config(capsys):
    assert main([str(CONFIGS / "synthetic_config.json"), "mstransformer"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model_name"] == "ems-transposenet" and printed["image_crop"] == 64


def test_cli_reports_user_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nope.json"), "hyperpose"]) == 2
    assert capsys.readouterr().err.startswith("error: config file not found")
