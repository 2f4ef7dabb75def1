"""The README and docs/ against the code: every command they show runs its --help, every flag it passes is
one the command has, and every flag named in the prose belongs to some documented command."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import re
import runpy
import shlex
import sys
import warnings

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PYTHONS = ("python", "python3", ".venv/bin/python")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
FENCED = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", flags=re.M | re.S)  # also inside list items


def _shell_lines(text: str) -> list[str]:
    """Shell command lines: those of fenced blocks that are not Python code (continuations joined,
    comments dropped), and inline code spans that start with a command."""
    lines = []
    for lang, body in re.findall(FENCED, text):
        if lang in ("python", "json", "text", "csv"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines += [part.strip() for part in re.split(r"&&|;", line) if part.strip()]
    prose = re.sub(FENCED, "", text)
    # Inline commands: ours (`python -m util.config CONFIG MODEL`) and other tools' (`tensorboard --logdir DIR`).
    lines += [
        span.strip()
        for span in re.findall(r"`([^`\n]+)`", prose)
        if re.match(r"(time\s+)?(python3?|\.venv/bin/python|make)\b", span.strip())
        or re.match(r"[a-z][\w.-]*\s+(\S+\s+)*--\w", span.strip())
    ]
    return lines


def _commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for line in _shell_lines(doc.read_text(encoding="utf-8")):
            try:
                tokens = shlex.split(line)
            except ValueError:
                tokens = line.split()
            if tokens and tokens[0] == "time":
                tokens = tokens[1:]
            if tokens:
                found.append((doc.name, tokens))
    return found


def _python_target(tokens: list[str]) -> tuple[list[str], list[str]] | None:
    """(``[script]`` or ``["-m", module]``, the remaining arguments) of a python command, else None."""
    if tokens[0] not in PYTHONS or len(tokens) < 2:
        return None
    if tokens[1] == "-m":
        return (["-m", tokens[2]], tokens[3:]) if len(tokens) > 2 and tokens[2] not in ("venv", "pip") else None
    return [tokens[1]], tokens[2:]


@functools.cache
def _help(target: tuple[str, ...]) -> str:
    """What ``python <target> --help`` prints, run in this process (as __main__, so the real parser) to
    reuse the imports; argparse ends help with SystemExit(0)."""
    out, argv = io.StringIO(), sys.argv
    sys.argv = [
        target[1] if target[0] == "-m" else str(REPO / target[0]),
        *target[2 if target[0] == "-m" else 1 :],
        "--help",
    ]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop, warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported before, by a test
            if target[0] == "-m":
                runpy.run_module(target[1], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(str(REPO / target[0]), run_name="__main__")
    finally:
        sys.argv = argv
    assert stop.value.code in (0, None), f"{' '.join(target)} --help exited with {stop.value.code}"
    return out.getvalue()


def _flags_of(target: list[str], args: list[str]) -> set[str]:
    """The options a command accepts, with those of the subcommand or mode its leading arguments name
    (``datasets.prepare colmap``, ``main_single_scene.py hyperpose predict``, whose options differ)."""
    text = _help(tuple(target))
    choices = {c for group in re.findall(r"\{([\w.,-]+)\}", text) for c in group.split(",")}
    for i, arg in enumerate(args[:2]):
        if arg not in choices:  # a placeholder or an example name (`mynet`): nothing more to ask
            break
        text += _help(tuple(target + args[: i + 1]))
    return set(FLAG.findall(text))


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))


COMMANDS = _commands()
PYTHON_COMMANDS = [(doc, tokens) for doc, tokens in COMMANDS if _python_target(tokens)]


def test_the_docs_show_commands():
    assert len(PYTHON_COMMANDS) >= 15, PYTHON_COMMANDS  # the parser found the examples
    assert any(t[1] == "main_single_scene.py" for _, t in PYTHON_COMMANDS)


@pytest.mark.parametrize("doc, tokens", PYTHON_COMMANDS, ids=lambda x: x if isinstance(x, str) else " ".join(x)[:70])
def test_every_documented_command_exists_with_its_flags(doc, tokens):
    target, args = _python_target(tokens)
    if target[0] == "-m":
        assert importlib.util.find_spec(target[1]) is not None, f"{doc}: no module {target[1]}"
    else:
        assert (REPO / target[0]).is_file(), f"{doc}: no script {target[0]}"
    unknown = sorted(set(FLAG.findall(" ".join(args))) - _flags_of(target, args))
    assert not unknown, f"{doc}: `{' '.join(tokens)}` passes {unknown}, which the command does not have"


def test_every_make_target_exists():
    targets = _make_targets()
    for doc, tokens in COMMANDS:
        if tokens[0] == "make":
            wanted = [t for t in tokens[1:] if not t.startswith("-")] or ["all"]
            assert set(wanted) <= targets | {"all"}, f"{doc}: make {wanted}"


def test_every_flag_in_the_prose_belongs_to_a_documented_command():
    """A flag named anywhere (``--test_dataset_id`` in a sentence) is one of our commands' options, or
    appears on a documented command line of another tool (COLMAP's, tensorboard's)."""
    ours, foreign = set(), set()
    for _, tokens in COMMANDS:
        parsed = _python_target(tokens)
        if parsed:
            ours |= _flags_of(*parsed)
        elif tokens[0] not in ("make", "pip") and not tokens[0].endswith("pip"):
            foreign |= set(FLAG.findall(" ".join(tokens)))
    for doc in DOCS:
        prose = re.sub(FENCED, "", doc.read_text(encoding="utf-8"))
        for flag in sorted(set(FLAG.findall(prose))):
            assert flag in ours | foreign, f"{doc.name} names {flag}, which no documented command has"


def test_the_synthetic_config_is_described_with_its_values():
    cfg = json.loads((REPO / "configs" / "synthetic_config.json").read_text())
    single, multi = cfg["hyperpose"], cfg["mshyperpose"]
    text = " ".join((REPO / "docs" / "configs.md").read_text().split())
    for claim in (
        f"{single['image_resize']} px resize, {single['image_crop']} px crop",
        f"batch {single['batch_size']} (multi-scene models {multi['batch_size']})",
        f"lr {single['lr']:g} (multi-scene models {multi['lr']:g})",
        f"{single['n_epochs']} epochs with StepLR {single['lr_scheduler_step_size']} x "
        f"{single['lr_scheduler_gamma']:g}",
        f"a checkpoint every {cfg['general']['n_freq_checkpoint']} epochs",
        f"`bn_momentum` {single['bn_momentum']:g}",
        f"`hidden_dim` {multi['hidden_dim']}",
        f"{multi['nheads']} heads",
        f"`hyper_dim_t` {multi['hyper_dim_t']}",
    ):
        assert claim in text, claim


def test_differences_table_names_only_real_config_keys():
    """README "Differences from the reference": one row per behaviour, four cells each, and every
    ``"key": value`` that restores the reference's behaviour is a config key with a value it accepts."""
    from models.config import all_keys

    text = (REPO / "README.md").read_text()
    section = text.split("## Differences from the reference\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| behaviour")]
    assert len(rows) >= 20
    keys = all_keys()
    named = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert len(cells) == 4, row
        for key, value in re.findall(r'`"(\w+)": ([^`]+)`', cells[3]):
            assert key in keys, key
            value = json.loads(value)
            assert keys[key].check is None or keys[key].check(value) is None, (key, value)
            named.append(key)
    assert {"head_init", "freeze_mode", "resize_backend", "bn_recalibrate_batches", "nheads"} <= set(named)
