"""Train or test a single-scene APR (any single-scene model of models/registry.py).

    python main_single_scene.py hyperpose train <backbone> <dataset_root> <train.csv> <config.json> \
        --output_path ./models
    python main_single_scene.py hyperpose test <backbone> <dataset_root> <test.csv> <config.json> \
        --checkpoint_path <ckpt.pth> --output_path ./evals
"""

import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main(multi_scene=False))
