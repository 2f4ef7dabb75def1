"""Image decoding throughput: PIL versus torchvision.io, for PNG and JPEG at 640x480 and a small size.

Both decoders return a uint8 RGB tensor of shape 3xHxW, which is what ``datasets.dataset`` feeds its
transforms. Runs on one thread, like a data-loader worker. Usage: ``python bench/bench_decode.py``.
With ``--device cuda`` a further column decodes the JPEGs on the GPU (torchvision's nvjpeg path, one image
per call, synchronised); PNG has no GPU decoder there.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

from datasets.dataset import load_image_uint8


def decode_pil(path: str) -> torch.Tensor:
    with Image.open(path) as image:
        rgb_HW3 = np.array(image.convert("RGB"))
    return torch.from_numpy(rgb_HW3).permute(2, 0, 1).contiguous()


def decode_torchvision(path: str) -> torch.Tensor:
    return decode_image(read_file(path), mode=ImageReadMode.RGB)


def decode_jpeg_cuda(path: str) -> torch.Tensor:
    img_3HW = decode_jpeg(read_file(path), mode=ImageReadMode.RGB, device="cuda")
    torch.cuda.synchronize()
    return img_3HW


DECODERS = {"PIL": decode_pil, "torchvision.io": decode_torchvision, "dataset (chosen)": load_image_uint8}


def make_images(out_dir: Path, width: int, height: int, n_images: int, rng: np.random.Generator) -> dict:
    """Write ``n_images`` PNGs and JPEGs of smooth gradients plus noise (so they compress like photos)."""
    y_H1 = np.linspace(0.0, 1.0, height)[:, None]
    x_1W = np.linspace(0.0, 1.0, width)[None, :]
    paths = {"png": [], "jpg": []}
    for i in range(n_images):
        phase = rng.uniform(0, 2 * np.pi, size=3)
        base_HW3 = np.stack([0.5 + 0.4 * np.sin(6 * x_1W + 3 * y_H1 + p) for p in phase], axis=-1)
        noise_HW3 = rng.normal(0.0, 0.06, size=(height, width, 3))
        rgb_HW3 = (np.clip(base_HW3 + noise_HW3, 0, 1) * 255).astype(np.uint8)
        image = Image.fromarray(rgb_HW3)
        for ext in paths:
            path = out_dir / f"img_{width}x{height}_{i:03d}.{ext}"
            image.save(path, quality=90) if ext == "jpg" else image.save(path)
            paths[ext].append(str(path))
    return paths


def images_per_second(decode, paths: list, min_seconds: float) -> float:
    for path in paths[:2]:  # warm-up: library loading, first-call allocations
        decode(path)
    n_decoded, start = 0, time.perf_counter()
    while True:
        for path in paths:
            decode(path)
        n_decoded += len(paths)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return n_decoded / elapsed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--n-images", type=int, default=8, help="distinct images per format and size")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="minimum timing per measurement")
    parser.add_argument(
        "--small", type=int, nargs=2, default=[128, 96], metavar=("W", "H"), help="the small image size"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="cuda: also decode the JPEGs on the GPU"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    decoders = dict(DECODERS, **({"nvjpeg (cuda)": decode_jpeg_cuda} if args.device == "cuda" else {}))

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    sizes = [(640, 480), tuple(args.small)]
    print(
        f"{'size':>9} {'format':>6} {'KiB/img':>8} "
        + " ".join(f"{name:>17}" for name in decoders)
        + "   (images/s, 1 thread)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in sizes:
            paths = make_images(Path(tmp), width, height, args.n_images, rng)
            for ext, ext_paths in paths.items():
                reference_3HW = decode_pil(ext_paths[0])
                usable = {n: d for n, d in decoders.items() if ext == "jpg" or d is not decode_jpeg_cuda}
                for decode in usable.values():
                    img_3HW = decode(ext_paths[0])
                    assert img_3HW.dtype == torch.uint8 and img_3HW.shape == reference_3HW.shape
                kib = np.mean([Path(p).stat().st_size for p in ext_paths]) / 1024
                rates = [
                    f"{images_per_second(usable[n], ext_paths, args.min_seconds):>17.0f}"
                    if n in usable
                    else f"{'n/a':>17}"
                    for n in decoders
                ]
                print(f"{width:>4}x{height:<4} {ext:>6} {kib:>8.1f} " + " ".join(rates))


if __name__ == "__main__":
    main()
