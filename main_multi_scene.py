"""Train or test a multi-scene APR (mshyperpose, ems-transposenet a.k.a. mstransformer).

    python main_multi_scene.py mshyperpose train <backbone> <dataset_root> <all_scenes.csv> <config.json> \
        --output_path ./models
    python main_multi_scene.py mshyperpose test <backbone> <dataset_root> <all_scenes.csv> <config.json> \
        --checkpoint_path <ckpt.pth> --test_dataset_id 7scenes
"""

import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main(multi_scene=True))
