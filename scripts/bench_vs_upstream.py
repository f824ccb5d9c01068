#!/usr/bin/env python3
"""Time `unet-pipeline score` against a loop doing what bubbliiiing's get_miou.py does (same images, weights).

    .venv/bin/python scripts/bench_vs_upstream.py         # 20 generated VOC-size images, VGG16 at 512
    .venv/bin/python scripts/bench_vs_upstream.py --images 100 --repeats 3
    .venv/bin/python scripts/bench_vs_upstream.py --score-args "--precision int8"
    .venv/bin/python scripts/bench_vs_upstream.py --data pairs/ --checkpoint unet_vgg_voc.pth --classes 21

Both sides are timed as whole processes (Python start, imports, model load, everything written), alternating,
`--repeats` times each; the medians are compared. The loop is this project's own code written from the
description of get_miou.py's flow (shared/reference/seed-models.md), no upstream code: one torch process with
torch's default threads, per image PIL open, `convert("RGB")`, letterbox (PIL bicubic onto grey 128 at
--size), /255, the network (eager NCHW fp32, `torch.no_grad`), softmax over classes, crop the letterbox,
bilinear resize of the probabilities back to the image size (OpenCV INTER_LINEAR's half-pixel rule, via
torch), arg-max, one PNG per image; then a separate pass reads every label and predicted PNG back and computes
the mIoU from a summed confusion matrix (classes absent from both count 0, as upstream's `per_class_iu`).

The script then checks that both give the same masks (differing pixels, with the largest per image) and the
same mIoU. Without --data it writes `pairs` images of 500x375 (JPEG, as VOC) with
`pipeline.demo.synthetic` and, without --checkpoint, a bubbliiiing VGG16 with seeded random weights.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------------ the upstream-style loop
def letterbox(image, size: int):
    """(size x size RGB canvas, (left, top, nw, nh)): PIL bicubic resize keeping the aspect, on grey 128."""
    from PIL import Image

    iw, ih = image.size
    scale = min(size / iw, size / ih)
    nw, nh = int(iw * scale), int(ih * scale)
    canvas = Image.new("RGB", (size, size), (128, 128, 128))
    left, top = (size - nw) // 2, (size - nh) // 2
    canvas.paste(image.resize((nw, nh), Image.BICUBIC), (left, top))
    return canvas, (left, top, nw, nh)


def upstream_loop(data: Path, checkpoint: str, size: int, out: Path, classes: int) -> dict:
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from pipeline.models import load_model

    started = time.perf_counter()
    net = load_model("bubbliiiing-vgg16", checkpoint).module.eval()
    ids = sorted(p.stem for p in (data / "images").iterdir() if not p.name.startswith("."))
    out.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        path = next((data / "images").glob(f"{image_id}.*"))
        image = Image.open(path).convert("RGB")
        canvas, (left, top, nw, nh) = letterbox(image, size)
        x = torch.from_numpy(np.asarray(canvas, np.float32).transpose(2, 0, 1)[None] / 255.0)
        with torch.no_grad():
            logits = net(x)[0]
            probabilities = F.softmax(logits.permute(1, 2, 0), dim=-1)  # (H, W, C), as upstream
            cropped = probabilities[top:top + nh, left:left + nw].permute(2, 0, 1)[None]
            resized = F.interpolate(cropped, size=(image.height, image.width), mode="bilinear",
                                    align_corners=False)[0]
            mask = resized.argmax(0).numpy().astype(np.uint8)
        Image.fromarray(mask).save(out / f"{image_id}.png")
    predicted = time.perf_counter()
    hist = np.zeros((classes, classes), np.int64)
    for image_id in ids:  # the separate mIoU pass over the written PNGs
        label = np.asarray(Image.open(data / "masks" / f"{image_id}.png")).astype(np.int64).ravel()
        pred = np.asarray(Image.open(out / f"{image_id}.png")).astype(np.int64).ravel()
        keep = (label >= 0) & (label < classes)
        counts = np.bincount(classes * label[keep] + pred[keep], minlength=classes**2)
        hist += counts.reshape(classes, classes)
    iou = np.diag(hist) / np.maximum(hist.sum(1) + hist.sum(0) - np.diag(hist), 1)
    return {"images": len(ids), "miou": float(np.nanmean(iou)), "predict_seconds": predicted - started,
            "miou_pass_seconds": time.perf_counter() - predicted}


# ---------------------------------------------------------------------------------------------- the driver
def make_inputs(folder: Path, images: int, classes: int) -> tuple[Path, str]:
    import torch

    from pipeline.demo.synthetic import make_sample
    from pipeline.models import create_model

    data = folder / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir(parents=True)
    for index in range(images):
        image, label = make_sample(10_000 + index, (500, 375))
        image.save(data / "images" / f"{index:05d}.jpg", quality=95)
        label.save(data / "masks" / f"{index:05d}.png")
    torch.manual_seed(0)
    checkpoint = folder / "vgg16.pth"
    torch.save(create_model("bubbliiiing-vgg16", num_classes=classes).state_dict(), checkpoint)
    return data, str(checkpoint)


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


def compare_masks(ours: Path, upstream: Path) -> tuple[int, int, int]:
    """(differing pixels, pixels, most differing in one image) between two folders of class-index PNGs."""
    from PIL import Image

    differing = pixels = worst = 0
    for path in sorted(upstream.glob("*.png")):
        a, b = np.asarray(Image.open(path)), np.asarray(Image.open(ours / path.name))
        count = int((a != b).sum())
        differing, pixels, worst = differing + count, pixels + a.size, max(worst, count)
    return differing, pixels, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20, help="generated images (without --data)")
    parser.add_argument("--classes", type=int, default=4, help="classes of the model and labels")
    parser.add_argument("--size", type=int, default=512, help="network input (letterbox) size")
    parser.add_argument("--data", type=Path, help="a `pairs` folder (images/, masks/) instead of generated")
    parser.add_argument("--checkpoint", help="bubbliiiing VGG16 weights instead of seeded random ones")
    parser.add_argument("--repeats", type=int, default=1, help="alternating timed runs of each side")
    parser.add_argument("--score-args", default="", help="more `unet-pipeline score` options")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--loop-into", type=Path, help=argparse.SUPPRESS)  # internal: run the loop only
    args = parser.parse_args()
    if args.loop_into is not None:
        result = upstream_loop(args.data, args.checkpoint, args.size, args.loop_into, args.classes)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="vs-upstream-") as scratch:
        folder = Path(scratch)
        data, checkpoint = (args.data, args.checkpoint) if args.data and args.checkpoint else make_inputs(
            folder, args.images, args.classes)
        loop_cmd = [sys.executable, __file__, "--data", str(data), "--checkpoint", checkpoint, "--size",
                    str(args.size), "--classes", str(args.classes), "--loop-into", str(folder / "upstream")]
        score_cmd = [sys.executable, "-c", "from pipeline.cli import main; main()", "score",
                     "-m", "bubbliiiing-vgg16", "-c", checkpoint, "-i", str(data), "-l", "pairs",
                     "--processing", "bubbliiiing", "--input-size", str(args.size),
                     "-o", str(folder / "ours"), "--format", "png", "--no-report", "--no-progress", "--json",
                     *shlex.split(args.score_args)]
        loop_times, score_times = [], []
        for _ in range(args.repeats):
            seconds, out = timed(loop_cmd)
            loop_times.append(seconds)
            loop = json.loads(out.strip().splitlines()[-1])
            seconds, out = timed(score_cmd)
            score_times.append(seconds)
            metrics = json.loads(out[out.index("{"):])
        differing, pixels, worst = compare_masks(folder / "ours" / "png", folder / "upstream")
        from pipeline.cpu_features import detect

        report = {
            "cpu": detect().describe(), "images": loop["images"], "size": args.size,
            "repeats": args.repeats, "score_args": args.score_args,
            "upstream_loop_seconds": round(statistics.median(loop_times), 2),
            "upstream_loop_seconds_each": [round(s, 2) for s in loop_times],
            "score_seconds": round(statistics.median(score_times), 2),
            "score_seconds_each": [round(s, 2) for s in score_times],
            "speedup_score_vs_upstream": round(statistics.median(loop_times)
                                               / statistics.median(score_times), 3),
            "score_backend": metrics["backend"], "miou_upstream_loop": loop["miou"],
            "miou_score_all_classes": metrics["miou_all_classes"],
            "pixels_differing": differing, "pixels": pixels, "most_differing_in_one_image": worst,
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(report["cpu"])
    print(f"{report['images']} images at {args.size}, median of {args.repeats} alternating whole-process "
          "run(s)")
    print(f"  get_miou.py-style loop  {report['upstream_loop_seconds']:8.2f} s")
    print(f"  unet-pipeline score     {report['score_seconds']:8.2f} s   ({metrics['backend']['name']} "
          f"{metrics['backend']['precision']}{' ' + args.score_args if args.score_args else ''})")
    print(f"  speed-up {report['speedup_score_vs_upstream']:.2f}x; mIoU {loop['miou']:.6f} (loop) vs "
          f"{metrics['miou_all_classes']:.6f} (score); {differing} of {pixels} pixels differ "
          f"(at most {worst} in one image)")


if __name__ == "__main__":
    main()
