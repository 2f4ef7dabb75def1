"""Command-line front end shared by ``main_single_scene.py`` and ``main_multi_scene.py``.

The positional order is the reference's: ``model_name mode backbone_path dataset_path labels_file
config_file``; an optional second JSON overrides the first. The ``predict`` mode, which has no labels, takes
``model_name predict backbone_path images config_file``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from datasets.labels import POSE_COLUMNS
from models.registry import cli_choices, scene_setting
from util.device import AMP_CHOICES
from util.distributed import launched_by_torchrun
from util.errors import UserError, run_cli
from util.logs import set_progress_bars, setup_logging

DEFAULT_CACHE_DIR = "./cache"


def configure_console(quiet: bool) -> None:
    """Console logging at INFO (WARNING and no progress bars with ``--quiet``, and on every process of a
    ``torchrun`` job but the first); progress bars only on a terminal."""
    quiet = quiet or (launched_by_torchrun() and int(os.environ.get("RANK", "0")) > 0)
    setup_logging(logging.WARNING if quiet else logging.INFO)
    set_progress_bars(not quiet)


def add_common_arguments(
    parser: argparse.ArgumentParser, models: Sequence[str], modes: Sequence[str] = ("train", "test")
) -> None:
    """The reference positionals, shared by the train/test and batch-evaluation scripts."""
    parser.add_argument("model_name", choices=models, help="model to train or test")
    mode_help = "train a model or test a checkpoint" if "train" in modes else "test checkpoints"
    if "predict" in modes:
        mode_help += "; predict localizes unlabelled images (other positionals: see MODEL predict -h)"
    parser.add_argument("mode", choices=modes, help=mode_help)
    parser.add_argument(
        "backbone_path",
        help="train: backbone weights (of the config's backbone_type): a state_dict file, the "
        "reference's pickled EfficientNet, 'imagenet' for local ImageNet weights, or "
        "'random' for random initialisation; test: ignored, the checkpoint holds every "
        "backbone weight (any file or word, e.g. 'checkpoint')",
    )
    parser.add_argument("dataset_path", help="dataset root; img_path in the labels file is relative to it")
    parser.add_argument("labels_file", help="label CSV (scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4)")
    parser.add_argument("config_file", help="JSON config: a 'general' section plus one section per model")


def add_test_dataset_argument(parser: argparse.ArgumentParser) -> None:
    """Multi-scene testing: evaluate every per-scene test CSV of a known dataset; the scene map of a bare
    reference state_dict."""
    parser.add_argument(
        "--test_dataset_id",
        choices=("7scenes", "cambridge"),
        default=None,
        help="evaluate every per-scene test CSV of this dataset found beside labels_file "
        "(default: evaluate labels_file itself)",
    )
    parser.add_argument(
        "--scene_map",
        default=None,
        metavar="FILE",
        help="test a reference state_dict (which stores no scene ids): a CSV whose scene column "
        "lists the training scenes in id order, e.g. its training labels file (default: "
        "the 7Scenes or Cambridge training order when the scene count fits, else the "
        "sorted scenes of labels_file)",
    )


def parse_train_labels(text: str | None) -> tuple[Path, Path] | None:
    """``CSV[:ROOT]`` -> (labels, root); the root defaults to the labels file's folder."""
    if not text:
        return None
    csv, colon, root = text.rpartition(":")
    if not colon or not csv.lower().endswith(".csv"):
        csv, root = text, ""
    labels = Path(csv)
    if not labels.is_file():
        raise UserError(f"--train_labels {labels}: file not found")
    return labels, Path(root) if root else labels.parent


def add_baseline_arguments(parser) -> None:
    """``--train_labels`` and ``--no_baselines`` of every report."""
    parser.add_argument(
        "--train_labels",
        metavar="CSV[:ROOT]",
        default=None,
        help="training set of the mean-pose and retrieval baselines (default: the one the "
        "checkpoints record); ROOT defaults to the CSV's folder",
    )
    parser.add_argument("--no_baselines", action="store_true", help="skip the mean-pose and retrieval baselines")


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto (config device_id when CUDA is there, else CPU), cpu, cuda or cuda:N"
    )
    parser.add_argument(
        "--amp",
        nargs="?",
        const="auto",
        default=None,
        choices=AMP_CHOICES,
        help="mixed precision: bf16 (CUDA GPUs that support it, and CPUs) or fp16 (CUDA, with "
        "gradient scaling in training); auto, or --amp alone, picks bf16 where supported, "
        "else fp16",
    )
    parser.add_argument(
        "--batch_size", type=int, default=None, help="test batch size (default: the config's batch_size)"
    )
    parser.add_argument(
        "--cache",
        nargs="?",
        const=DEFAULT_CACHE_DIR,
        default=None,
        metavar="DIR",
        help="decode and resize each labels file's images once into a memory-mapped cache in DIR "
        f"(default DIR: {DEFAULT_CACHE_DIR}; the config key cache_dir does the same). Without "
        "--cache the config decides; its default, auto, caches in a per-user folder where there "
        "is room ($HYPERPOSE_CACHE_DIR sets the folder)",
    )
    parser.add_argument(
        "--no_cache",
        dest="cache",
        action="store_const",
        const="off",
        help="decode every image every epoch (cache_dir: off)",
    )
    parser.add_argument("--quiet", action="store_true", help="only warnings on the console, no progress bars")


def build_parser(multi_scene: bool) -> argparse.ArgumentParser:
    models = cli_choices(multi_scene)
    setting = scene_setting(multi_scene)
    parser = argparse.ArgumentParser(
        description=f"Train or test a {setting.name} absolute pose regressor."
        " To localize unlabelled images: MODEL predict BACKBONE IMAGES CONFIG --checkpoint_path CKPT "
        "(see MODEL predict -h).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_common_arguments(parser, models, modes=("train", "test", "predict"))
    parser.add_argument(
        "override_config", nargs="?", default=None, help="optional second JSON config whose sections override the first"
    )
    parser.add_argument(
        "--checkpoint_path",
        default=None,
        help="test: the checkpoint to test; train: start a new run from its weights "
        "(ours or a reference state_dict), e.g. for the freeze stage",
    )
    parser.add_argument(
        "--output_path",
        default=None,
        help="train: where run_<stamp>/ is created (default ./models; with --resume, "
        "another folder than the run's own branches the run into a new run folder there); "
        "test: where results are written (default ./evals)",
    )
    parser.add_argument("--resume", default=None, help="train: continue the run of this checkpoint")
    parser.add_argument("--n_epochs", type=int, default=None, help="train: override the config's n_epochs")
    parser.add_argument("--compile", action="store_true", help="train: run the model through torch.compile")
    parser.add_argument(
        "--micro_batches",
        type=int,
        default=1,
        help="train: split each batch into this many parts, one optimizer step per batch "
        "(batch statistics per part, as on that many GPUs)",
    )
    if setting.test_dataset_option:
        add_test_dataset_argument(parser)
    add_baseline_arguments(parser)
    add_runtime_arguments(parser)
    return parser


def build_predict_parser(multi_scene: bool) -> argparse.ArgumentParser:
    """``model_name predict backbone_path images config_file [override_config]`` and its options."""
    setting = scene_setting(multi_scene)
    parser = argparse.ArgumentParser(
        prog=setting.script,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Localize unlabelled images with a checkpoint; writes <...>_poses.csv "
        f"({','.join(('img_path', *POSE_COLUMNS, *setting.predict_columns))}).",
    )
    parser.add_argument("model_name", choices=cli_choices(multi_scene), help="the model the checkpoint holds")
    parser.add_argument("mode", choices=("predict",), help="localize images")
    parser.add_argument(
        "backbone_path",
        help="as for train/test ('random' or a backbone file); the checkpoint holds the backbone weights that are used",
    )
    parser.add_argument(
        "images",
        help="a folder (searched recursively), a glob pattern in quotes, a text file "
        "with one image path per line, or a label CSV (ground truth ignored)",
    )
    parser.add_argument("config_file", help="JSON config: a 'general' section plus one section per model")
    parser.add_argument(
        "override_config", nargs="?", default=None, help="optional second JSON config whose sections override the first"
    )
    parser.add_argument("--checkpoint_path", required=True, help="the checkpoint to localize with")
    parser.add_argument("--output_path", default="./predictions", help="where the poses CSV (and HTML) go")
    parser.add_argument(
        "--dataset_path",
        default=None,
        help="root of the relative paths in a text list or label CSV (default: its folder)",
    )
    parser.add_argument(
        "--html", action="store_true", help="also write a self-contained 3D view of the predicted camera centres"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (config device_id when CUDA is there, else CPU), cpu, cuda or cuda:N"
    )
    parser.add_argument("--batch_size", type=int, default=None, help="default: the config's batch_size")
    parser.add_argument("--quiet", action="store_true", help="only warnings on the console, no progress bars")
    return parser


def run_predict(args: argparse.Namespace) -> int:
    from engine.deployment.predict import predict

    if args.backbone_path not in ("random", "imagenet") and not Path(args.backbone_path).is_file():
        raise UserError(
            f"backbone file not found: {args.backbone_path} (the order is MODEL predict BACKBONE "
            f"IMAGES CONFIG; 'random' is accepted, as the checkpoint holds the weights)"
        )
    result = predict(
        args.model_name,
        args.images,
        args.config_file,
        args.checkpoint_path,
        args.output_path,
        override_config=args.override_config,
        dataset_root=args.dataset_path,
        batch_size=args.batch_size,
        device=args.device,
        html=args.html,
        progress=not args.quiet,
    )
    print(result.summary_line())  # each skipped image was logged as a warning when it failed
    for kind, path in result.paths.items():
        print(f"{kind}: {path}")
    return 0


def main(argv: Sequence[str] | None = None, *, multi_scene: bool = False) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[1] == "predict":
        args = build_predict_parser(multi_scene).parse_intermixed_args(argv)
        configure_console(args.quiet)
        return run_cli(lambda: run_predict(args))
    args = build_parser(multi_scene).parse_intermixed_args(argv)
    configure_console(args.quiet)

    def run() -> int:
        if args.mode == "train":
            from engine.training.train import train

            result = train(
                args.model_name,
                args.backbone_path,
                args.dataset_path,
                args.labels_file,
                args.config_file,
                args.output_path,
                override_config=args.override_config,
                resume=args.resume,
                init_checkpoint=args.checkpoint_path,
                device=args.device,
                amp=args.amp,
                n_epochs=args.n_epochs,
                cache_dir=args.cache,
                compile=args.compile,
                micro_batches=args.micro_batches,
            )
            print(f"run folder: {result.run_dir}")
            print(f"final checkpoint: {result.final_checkpoint}")
            return 0
        from engine.evaluation.evaluate import evaluate

        if not args.checkpoint_path:
            raise UserError("test mode needs --checkpoint_path <checkpoint.pth>")
        result, paths = evaluate(
            args.model_name,
            args.backbone_path,
            args.dataset_path,
            args.labels_file,
            args.config_file,
            args.checkpoint_path,
            args.output_path or "./evals",
            override_config=args.override_config,
            batch_size=args.batch_size,
            device=args.device,
            amp=args.amp,
            test_dataset_id=getattr(args, "test_dataset_id", None),
            scene_map_file=getattr(args, "scene_map", None),
            cache_dir=args.cache,
            baselines=not args.no_baselines,
            train_labels=parse_train_labels(args.train_labels),
        )
        print(result.report_text())
        for kind, path in paths.items():
            print(f"{kind}: {path}")
        return 0

    return run_cli(run)
