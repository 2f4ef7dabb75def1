"""Shared fixtures: tiny synthetic scenes and tiny configs, so end-to-end tests run in seconds on a CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

REPO = Path(__file__).resolve().parent.parent

# Two cores are shared by the whole suite; more threads only contend.
torch.set_num_threads(1)

# Property-test example counts: "full" in make test, "fast" in make test-fast (HYPOTHESIS_PROFILE).
settings.register_profile("full", max_examples=150, deadline=None)
settings.register_profile("fast", max_examples=20, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "full"))


@pytest.fixture(autouse=True, scope="session")
def _session_image_cache(tmp_path_factory):
    """Runs with the default ``cache_dir: "auto"`` cache their images in a folder of the session, not the user's
    (scripts started by the tests inherit the variable)."""
    os.environ["HYPERPOSE_CACHE_DIR"] = str(tmp_path_factory.mktemp("image_cache"))


# A real timm architecture of the EfficientNet family with 0.17 M parameters (EfficientNet-B0: 4 M), for the
# end-to-end tests whose subject is not the backbone: a training step at 48x48 costs an eighth of B0's and an
# ONNX export a fraction. The efficientnet backbone itself is trained and exported by the other tests.
COMPACT_BACKBONE = "timm:test_efficientnet"


def tiny_config_dict(n_epochs: int = 2, compact_backbone: bool = False) -> dict:
    """The shipped synthetic config, shrunk so every model trains in seconds at 48x48 crops.

    ``compact_backbone``: the models that default to the efficientnet backbone use :data:`COMPACT_BACKBONE`
    (the reference models keep the one backbone they accept)."""
    cfg = json.loads((REPO / "configs" / "synthetic_config.json").read_text())
    cfg["general"].update(n_freq_print=1, n_freq_checkpoint=1, n_workers=0, device_id="cpu")
    small_ms = dict(
        hidden_dim=32,
        nheads=2,
        num_t_encoder_layers=1,
        num_t_decoder_layers=1,
        num_rot_encoder_layers=1,
        num_rot_decoder_layers=1,
        dim_feedforward=32,
        reg_hidden_dim=32,
        hyper_dim_t=16,
        hyper_dim_rot=32,
    )
    for name, section in cfg.items():
        if name == "general":
            continue
        section.update(n_epochs=n_epochs, batch_size=4, image_resize=56, image_crop=48)
        if compact_backbone and section.get("backbone_type", "efficientnet") == "efficientnet":
            section["backbone_type"] = COMPACT_BACKBONE
        if name in ("hyperpose", "hyperatloc"):
            section.update(hyper_dim_t=16, hyper_dim_rot=32)
        if name in ("ems-transposenet", "mshyperpose"):
            section.update({k: v for k, v in small_ms.items() if name == "mshyperpose" or not k.startswith("hyper_")})
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=2))
    return path


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("cfg") / "tiny_config.json", tiny_config_dict())


@pytest.fixture(scope="session")
def compact_config(tmp_path_factory) -> Path:
    """The tiny config with the compact backbone (:data:`COMPACT_BACKBONE`)."""
    return write_config(tmp_path_factory.mktemp("cfg") / "compact_config.json", tiny_config_dict(compact_backbone=True))


@pytest.fixture(scope="session")
def scene7(tmp_path_factory) -> Path:
    """One synthetic 7Scenes-layout scene ('chess'), 64x48 images, few frames."""
    from datasets.synthetic import generate

    root = tmp_path_factory.mktemp("scene7")
    generate(root, scenes=1, layout="7scenes", frames_per_seq=4, size=(64, 48), seed=0)
    return root


@pytest.fixture(scope="session")
def scenes3(tmp_path_factory) -> Path:
    """Three synthetic 7Scenes-layout scenes for the multi-scene tests."""
    from datasets.synthetic import generate

    root = tmp_path_factory.mktemp("scenes3")
    generate(root, scenes=3, layout="7scenes", frames_per_seq=4, size=(64, 48), seed=1)
    return root


def run_script(
    args: list[str], cwd: Path | None = None, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python <args>`` as a user would, from ``cwd`` (repo-relative scripts resolved to the repo).
    ``env`` updates the environment; a None value removes a variable."""
    script = args[0]
    if not os.path.isabs(script) and (REPO / script).is_file():
        script = str(REPO / script)
    base = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONPATH=str(REPO))
    base.update(env or {})
    env = {k: v for k, v in base.items() if v is not None}
    return subprocess.run(
        [sys.executable, script, *args[1:]], cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _mount(args: list[str]) -> bool:
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A factory of small tmpfs mounts (root only; skips elsewhere, e.g. CI without root): a real full disk."""
    mounts = []

    def make(size_bytes: int) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        if not _mount(["-t", "tmpfs", "-o", f"size={max(int(size_bytes), 4096)}", "tmpfs", str(point)]):
            pytest.skip("cannot mount a tmpfs here (needs root and mount)")
        mounts.append(point)
        return point

    yield make
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path):
    """An existing folder nothing can be written in: a read-only tmpfs for root (who ignores permission
    bits), a mode 0555 folder otherwise."""
    point = tmp_path / "read_only"
    point.mkdir()
    if os.name == "posix" and os.geteuid() == 0:
        if not _mount(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(point)]):
            pytest.skip("running as root without mount: cannot make a folder read-only")
        yield point
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
        return
    point.chmod(0o555)
    yield point
    point.chmod(0o755)


def run_main(main, argv: list, capsys=None, cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Call an entry point's ``main(argv, **kwargs)`` in this process, as ``run_script`` runs its script, from
    ``cwd``: a CompletedProcess of its exit status and, through ``capsys``, what it printed. The state a script
    leaves behind in a process is undone (console handler and level, progress bars, the working folder), and
    each call sees warnings afresh, as a new process would."""
    import logging

    import util.logs

    root = logging.getLogger()
    console = next((h for h in root.handlers if getattr(h, "_hyperpose_console", False)), None)
    saved = (root.level, console.level if console else None, util.logs._progress_bars, os.getcwd())
    for handler in root.handlers:
        for f in handler.filters:
            if isinstance(f, util.logs._OncePerProcess):
                f.seen.clear()
    if capsys is not None:
        capsys.readouterr()
    try:
        if cwd is not None:
            os.chdir(cwd)
        status = main([str(a) for a in argv], **kwargs)
    finally:
        os.chdir(saved[3])
        util.logs.set_progress_bars(saved[2])
        root.setLevel(saved[0])
        for handler in list(root.handlers):
            if getattr(handler, "_hyperpose_console", False):
                if console is None:
                    root.removeHandler(handler)
                else:
                    handler.setLevel(saved[1])
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return subprocess.CompletedProcess(argv, status, out, err)
