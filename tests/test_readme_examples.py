"""The README's and docs' examples against a synthetic layout, as a newcomer would run them: the raw download
folders of the `datasets.prepare` examples become tiny synthetic 7Scenes and Cambridge (with ECL styles)
folders, the `--out` folders get the CSVs those examples write, and every example that names them must find
its images. Also what the README says about the install line, the demo's folder, the benchmarks' --device
and the `imagenet` GoogLeNet weights."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from test_docs import COMMANDS, DOCS, FENCED, _python_target

from conftest import REPO

DEMO_DATA = re.findall(r"^DATA\s*:=\s*(\S+)", (REPO / "Makefile").read_text(), flags=re.M)
SYNTHETIC_7SCENES = 2  # chess, fire
CAMBRIDGE_SCENES = ("KingsCollege", "OldHospital", "ShopFacade", "StMarysChurch")  # cambridge_four_scenes.csv


def _norm(token: str) -> str:
    return token[2:] if token.startswith("./") else token.rstrip("/")


def _prepare_examples() -> list[tuple[str, str, str]]:
    """(kind, raw folder, --out folder) of the README's `datasets.prepare` commands for the public datasets."""
    return [
        (tokens[3], _norm(tokens[4]), _norm(tokens[tokens.index("--out") + 1]))
        for doc, tokens in COMMANDS
        if doc == "README.md" and _prepares_public_data(tokens)
    ]


def _prepares_public_data(tokens: list[str]) -> bool:
    return tokens[:3] == ["python", "-m", "datasets.prepare"] and tokens[3] in ("7scenes", "cambridge", "ecl")


PREPARE = _prepare_examples()
RAW = {raw for _, raw, _ in PREPARE}
LABELS = {out for _, _, out in PREPARE}


def _under(token: str, folders) -> str | None:
    token = _norm(token)
    return next((f for f in folders if token == f or token.startswith(f + "/")), None)


# Every documented command (ours, or torchrun running ours) that names a prepared label CSV or label folder.
NAMING_LABELS = [
    (doc, tokens)
    for doc, tokens in COMMANDS
    if (_python_target(tokens) or tokens[0] == "torchrun")
    and "datasets.prepare" not in tokens
    and any(_under(t, LABELS) for t in tokens)
]


def test_the_readme_prepares_the_public_datasets():
    assert {kind for kind, _, _ in PREPARE} == {"7scenes", "cambridge", "ecl"}
    assert len(RAW & LABELS) == 0, "the CSVs are written away from the raw download"
    assert len(NAMING_LABELS) >= 8, NAMING_LABELS


@pytest.mark.parametrize("doc, tokens", NAMING_LABELS, ids=lambda x: x if isinstance(x, str) else " ".join(x)[:80])
def test_an_example_never_passes_the_csv_folder_as_the_image_root(doc, tokens):
    """The images stay in the raw download: a command that reads prepared CSVs takes the raw folder (or a
    `<..._root>` placeholder) as its dataset root, and names the CSV folder only after --labels."""
    for i, token in enumerate(tokens):
        if _norm(token) in LABELS:
            assert i > 0 and tokens[i - 1] == "--labels", f"{doc}: `{' '.join(tokens)}` uses {token} as a root"
    assert any(_under(t, RAW) for t in tokens) or any(re.fullmatch(r"<\w*root\w*>", t) for t in tokens), (
        f"{doc}: `{' '.join(tokens)}` reads prepared CSVs but names no dataset root"
    )


# ---------------------------------------------------------------------------------------------------------------
# The examples' argument shapes on a synthetic layout


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """Tiny raw folders for the README's prepare examples (CSVs removed, so only `prepare` makes them), the
    ECL styles beside the Cambridge test images, then the README's prepare commands run as written."""
    from datasets.prepare import ECL_STYLES
    from datasets.prepare import main as prepare_main
    from datasets.synthetic import generate

    base = tmp_path_factory.mktemp("readme_layout")
    mapping = {raw: base / "raw" / Path(raw).name for raw in RAW} | {
        out: base / "labels" / Path(out).name for out in LABELS
    }
    rendered = set()
    for kind, raw, _ in PREPARE:
        root = mapping[raw]
        if raw in rendered:
            continue
        rendered.add(raw)
        if kind == "7scenes":
            generate(root, scenes=SYNTHETIC_7SCENES, layout="7scenes", frames_per_seq=2, train_seqs=2, size=(32, 24))
        else:
            generate(root, layout="cambridge", names=CAMBRIDGE_SCENES, frames_per_seq=2, train_seqs=2, size=(32, 24))
            for scene in CAMBRIDGE_SCENES:
                lines = (root / scene / "dataset_test.txt").read_text().splitlines()[3:]
                for image in (root / scene / line.split()[0] for line in lines if line.strip()):
                    for style in ECL_STYLES:
                        shutil.copy(image, image.with_name(f"{image.stem}_{style}{image.suffix}"))
        for csv in root.glob("*.csv"):
            csv.unlink()
    for doc, tokens in COMMANDS:
        if doc == "README.md" and _prepares_public_data(tokens):
            prepare_main(_mapped(tokens, mapping)[3:])
    return mapping


def _mapped(tokens: list[str], mapping: dict[str, Path]) -> list[str]:
    out = []
    for token in tokens:
        folder = _under(token, mapping)
        out.append(str(mapping[folder] / _norm(token)[len(folder) :].lstrip("/")) if folder else token)
    return out


def _root_and_csvs(tokens: list[str], mapping: dict[str, Path]) -> tuple[Path, list[Path]]:
    roots = [mapping[_norm(t)] for t in tokens if _norm(t) in RAW]
    assert len(roots) == 1, tokens
    return roots[0], [Path(t) for t in _mapped(tokens, mapping) if t.endswith(".csv")]


WITH_RAW_ROOT = [(doc, tokens) for doc, tokens in NAMING_LABELS if any(_norm(t) in RAW for t in tokens)]
WITH_CSVS = [(doc, tokens) for doc, tokens in WITH_RAW_ROOT if any(t.endswith(".csv") for t in tokens)]


@pytest.mark.parametrize("doc, tokens", WITH_CSVS, ids=lambda x: x if isinstance(x, str) else " ".join(x)[:80])
def test_every_csv_of_an_example_finds_its_images_under_the_root_it_gives(layout, doc, tokens):
    from datasets.labels import read_labels

    root, csvs = _root_and_csvs(tokens, layout)
    for csv in csvs:
        assert len(read_labels(csv, root, check_images=True)) > 0, csv


ECL_EXAMPLES = [(doc, t) for doc, t in WITH_RAW_ROOT if t[:3] == ["python", "-m", "engine.robustness"] and "--ecl" in t]


@pytest.mark.parametrize("doc, tokens", ECL_EXAMPLES, ids=lambda x: x if isinstance(x, str) else " ".join(x)[:80])
def test_the_ecl_example_finds_every_style(layout, doc, tokens):
    from engine.robustness.conditions import check_condition
    from engine.robustness.report import build_parser, conditions_from_args

    args = build_parser().parse_args(_mapped(tokens, layout)[3:])
    conditions = conditions_from_args(args, scenes=[])
    assert [c.name for c in conditions] == ["base", "evening", "winter", "summer"]
    for condition in conditions:
        assert check_condition(condition) is None, (condition.name, check_condition(condition))


def test_the_readme_shows_an_ecl_example():
    assert any(doc == "README.md" for doc, _ in ECL_EXAMPLES)


REPRODUCE = [
    (doc, t) for doc, t in COMMANDS if t[:3] == ["python", "-m", "engine.reproduction.reproduce"] and "--root" in t
]


@pytest.mark.parametrize("doc, tokens", REPRODUCE, ids=lambda x: x if isinstance(x, str) else " ".join(x)[:80])
def test_the_reproduce_example_plans_on_the_prepared_layout(layout, doc, tokens, tmp_path, monkeypatch, capsys):
    """The example as written, with `--dry-run` (it checks every label file and image) on the scenes the
    synthetic layout has."""
    from engine.reproduction.reproduce import main
    from models.registry import get_spec
    from util.logs import set_progress_bars

    assert _norm(tokens[tokens.index("--root") + 1]) in RAW, f"{doc}: --root is not a raw download folder"
    assert _norm(tokens[tokens.index("--labels") + 1]) in LABELS
    monkeypatch.chdir(tmp_path)  # the example's relative --out and --backbone land here
    backbone = Path(tokens[tokens.index("--backbone") + 1])
    backbone.parent.mkdir(parents=True, exist_ok=True)
    backbone.touch()  # a dry run only checks that the file is there
    scenes = "chess,fire" if tokens[3] == "7scenes" else "ShopFacade"
    try:
        code = main(_mapped(tokens, layout)[3:] + ["--dry-run", "--scenes", scenes])
    finally:
        set_progress_bars(True)
    out, err = capsys.readouterr()
    assert code == 0, err
    multi = any(get_spec(m).multi_scene for m in tokens[tokens.index("--models") + 1].split(","))
    assert "main_single_scene.py" in out and ("main_multi_scene.py" in out) == multi


def test_the_readme_shows_both_reproduce_examples():
    assert sorted(t[3] for doc, t in REPRODUCE if doc == "README.md") == ["7scenes", "cambridge"]


# ---------------------------------------------------------------------------------------------------------------
# What the README says about set-up


def test_the_install_line_installs_what_make_installs():
    make = (REPO / "Makefile").read_text()
    installed = set(re.findall(r"pip install[^\n]*?-r (\S+)", make))
    readme = (REPO / "README.md").read_text()
    lines = [line for line in readme.splitlines() if "what `make`" in line]
    assert lines, "the README no longer says which install line `make` runs"
    for line in lines:
        assert set(re.findall(r"-r (\S+)", line)) == installed, line


def test_no_example_writes_synthetic_data_into_the_demos_folder():
    """`make demo` renders into its own folder and skips rendering when data is there: an example that writes
    another dataset there would change what the demo trains on."""
    assert DEMO_DATA, "Makefile: no DATA folder"
    demo = {_norm(DEMO_DATA[0]), _norm(DEMO_DATA[0]) + "_ms"}
    examples = [t for _, t in COMMANDS if t[:3] == ["python", "-m", "datasets.synthetic"]]
    assert examples
    for tokens in examples:
        assert _norm(tokens[3]) not in demo, " ".join(tokens)


def test_the_benchmarks_that_are_said_to_take_device_do():
    from test_docs import _help

    text = (REPO / "docs" / "benchmarks.md").read_text()
    sentence = re.search(r"These scripts take `--device cuda`: (.*?)\.\n", re.sub(FENCED, "", text), re.S)
    assert sentence, "docs/benchmarks.md lost the list of scripts that take --device"
    scripts = re.findall(r"`(bench/\w+\.py)`", sentence.group(1))
    assert len(scripts) >= 6
    for script in scripts:
        assert "--device" in _help((script,)), script
    # And the README makes no blanket claim about every benchmark.
    for doc in DOCS:
        assert "every benchmark takes" not in doc.read_text().lower(), doc.name


# ---------------------------------------------------------------------------------------------------------------
# `imagenet` for googlenet: torchvision's file holds the auxiliary classifiers the toolkit's GoogLeNet lacks


def test_imagenet_googlenet_loads_torchvisions_file_without_its_auxiliary_heads(tmp_path, monkeypatch):
    from torchvision.models import googlenet

    from models.backbone import get_backbone_spec, load_backbone

    torch.manual_seed(0)
    state = googlenet(weights=None, aux_logits=True, init_weights=False).state_dict()
    assert any(k.startswith("aux1.") for k in state) and any(k.startswith("aux2.") for k in state)
    (tmp_path / "checkpoints").mkdir()
    torch.save(state, tmp_path / "checkpoints" / get_backbone_spec("googlenet").imagenet_file)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))  # torch.hub.get_dir() answers this folder

    loaded = load_backbone("imagenet", "googlenet").state_dict()
    trunk = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
    assert list(loaded) == list(trunk)
    for key, value in trunk.items():
        assert torch.equal(loaded[key], value), key


# ---------------------------------------------------------------------------------------------------------------
# Links between the pages


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(FENCED, "", text)
    return {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)
    }


def test_every_link_to_a_page_or_section_resolves():
    for doc in DOCS:
        text = re.sub(FENCED, "", doc.read_text(encoding="utf-8"))
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"\w+://", target):
                continue
            page, _, anchor = target.partition("#")
            path = (doc.parent / page).resolve() if page else doc
            assert path.is_file() or path.is_dir(), f"{doc.name}: link to missing {page}"
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path.read_text(encoding="utf-8")), (
                    f"{doc.name}: no section #{anchor} in {path.name}"
                )
