"""Train the built-in default checkpoint: a small milesial UNet on the synthetic shapes dataset.

    python -m pipeline.demo.train --out pipeline/assets/default_milesial.pth

Deterministic on a given torch build and thread count (seeded data, seeded init, fixed steps: 1200 steps of 8
random 96x96 crops, AdamW with a one-cycle schedule peaking at 3e-3, one intra-op thread). The committed
checkpoint was made with the command above with torch 2.13.0 (about 4 minutes on an idle core; longer on a
busy machine). It evaluates on the built-in dataset's 48 images (indices 100000+, never seen in training) as
the default `score` reports.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.demo.synthetic import CLASS_NAMES, VOID, make_sample
from pipeline.metrics import confusion_matrix, scores_from_confusion
from pipeline.models import create_model

MODEL_CONFIG = {"num_classes": len(CLASS_NAMES), "in_channels": 3, "base_channels": 8, "bilinear": False}
EVAL_FIRST_INDEX = 100_000  # evaluation samples never overlap training samples (0 .. steps * batch)


def _batch(rng: np.random.Generator, first: int, size: int, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for index in range(first, first + size):
        image, label = make_sample(index)
        x, y = int(rng.integers(0, image.width - crop + 1)), int(rng.integers(0, image.height - crop + 1))
        box = (x, y, x + crop, y + crop)
        pixels = np.asarray(image.crop(box), np.float32) / 255.0
        target = np.asarray(label.crop(box), np.int64)
        if rng.random() < 0.5:
            pixels, target = pixels[:, ::-1], target[:, ::-1]
        images.append(pixels.transpose(2, 0, 1).copy())
        labels.append(target.copy())
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


def evaluate(model: torch.nn.Module, count: int = 48) -> float:
    """mIoU at full image size (milesial's upstream processing at scale 1.0: /255, arg-max)."""
    model.eval()
    total = np.zeros((len(CLASS_NAMES),) * 2, np.int64)
    with torch.inference_mode():
        for index in range(EVAL_FIRST_INDEX, EVAL_FIRST_INDEX + count):
            image, label = make_sample(index)
            x = torch.from_numpy((np.asarray(image, np.float64) / 255).astype(np.float32).transpose(2, 0, 1))
            pred = model(x[None])[0].argmax(0).numpy().astype(np.uint8)
            total += confusion_matrix(np.asarray(label), pred, len(CLASS_NAMES))
    model.train()
    return scores_from_confusion(total).miou


def train(steps: int, batch_size: int, crop: int, seed: int = 0,
          class_weights: tuple[float, ...] | None = None, init: str | None = None, lr: float = 3e-3,
          first_sample: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = create_model("milesial", **MODEL_CONFIG)
    if init:
        model.load_state_dict(torch.load(init, weights_only=True))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
    started = time.time()
    for step in range(steps):
        x, y = _batch(rng, first_sample + step * batch_size, batch_size, crop)
        loss = F.cross_entropy(model(x), y, weight=weight, ignore_index=VOID)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - started:.0f} s)",
                  flush=True)
        if (step + 1) % 500 == 0 or step + 1 == steps:
            print(f"  eval mIoU {evaluate(model):.4f}", flush=True)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where to write the state_dict (.pth)")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--init", help="start from this state_dict (a second stage of training)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--first-sample", type=int, default=0,
                        help="index of the first training sample (a second stage continues where the first "
                             "ended)")
    parser.add_argument("--class-weights", default="", help="cross-entropy weight per class, comma separated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = tuple(float(w) for w in args.class_weights.split(",")) if args.class_weights else None
    model = train(args.steps, args.batch_size, args.crop, class_weights=weights, init=args.init, lr=args.lr,
                  first_sample=args.first_sample)
    torch.save(model.state_dict(), args.out)
    print(f"wrote {args.out}; eval mIoU {evaluate(model):.4f}")


if __name__ == "__main__":
    main()
