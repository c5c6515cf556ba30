#!/usr/bin/env python3
"""PyTorch reference trainer for Fashion-MNIST: the recipe glimpse's Rust trainer reproduces.

    python benches/train_torch.py                        # the defaults (DEFAULTS below), 2 threads
    python benches/train_torch.py --threads 1 --max-steps 50   # a quick throughput run

Data: the gzip IDX files of Debian's fashion-mnist package (/usr/share/datasets/fashion-mnist,
or --data DIR), read with gzip + numpy. Pixels x/255, then (x - 0.2860) / 0.3530. Training
augmentation, per image: a random crop of the image zero-padded by s = --shift pixels on each
side (a shift of dx, dy uniform in {-s..s}; the padding is 0 before normalisation, i.e.
background), then a horizontal flip with p = 0.5. Each epoch visits the 60000 training images in a fresh random
order in batches of --batch-size; the last partial batch is dropped, so an epoch is
60000 // batch_size optimizer steps. Evaluation: the 10000 test images, no augmentation.

Model: transformers' `ViTForImageClassification` (image_size 28, num_channels 1, num_labels 10,
hidden_act "gelu", layer_norm_eps 1e-12, qkv_bias true, dropout 0; patch size, width, depth,
heads and MLP width from the flags or --config). Starts from --init (a safetensors file with
the published key names, e.g. `vit.encoder.layer.0.attention.attention.query.weight`) or from
transformers' own init after torch.manual_seed(--seed). --save-init DIR writes the starting
model (config.json + model.safetensors, save_pretrained) so another trainer can start from the
same weights; --save DIR writes the trained one.

Loss: cross-entropy with label smoothing (--label-smoothing). Optimizer: torch.optim.AdamW
(foreach=False, betas (0.9, 0.999), eps 1e-8) with two groups: weight decay --weight-decay iff
param.dim() >= 2 and the name contains none of "norm", "position_embedding", "cls_token",
"class_embedding", "logit_scale", else 0. Gradient clipping to global norm --clip-norm
(torch.nn.utils.clip_grad_norm_) before each step. Learning rate, set by hand before optimizer
step s (0-based) of total = epochs * steps_per_epoch:

    s < warmup:  lr = base_lr * (s + 1) / warmup
    otherwise:   lr = min_lr + (base_lr - min_lr) * 0.5 * (1 + cos(pi * t)),
                 t = (s - warmup) / (total - 1 - warmup)

(min_lr is reached at s = total - 1). --max-steps stops early without changing the schedule.

Output: one JSON object per line: one per epoch {"epoch", "train_loss" (mean of the batch
losses), "test_accuracy", "images_per_second" (training images / seconds of the training loop
only, evaluation excluded), "seconds" (training loop of that epoch)}, then a summary line
{"summary": true, ...}. --json-out PATH writes the same lines to PATH.
"""

import argparse
import gzip
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MEAN, STD = 0.2860, 0.3530
NO_DECAY_SUBSTRINGS = ("norm", "position_embedding", "cls_token", "class_embedding", "logit_scale")
DEFAULT_DATA = Path("/usr/share/datasets/fashion-mnist")

# Defaults: the recipe `glimpse train vit --dataset fashion-mnist` uses (see its vit_recipe):
# patch 4, width 64, 4 layers, 4 heads, MLP 128, batch 64, AdamW lr 1e-3 -> 1e-5 with 500
# warm-up steps, weight decay 0.05, label smoothing 0.1, clipping at 1.0, 60 epochs, flips and
# shifts of up to one pixel (--shift 1). Start from glimpse's initial weights with
# --init RUN/init.safetensors.
DEFAULTS = dict(
    patch_size=4,
    hidden=64,
    layers=4,
    heads=4,
    mlp=128,
    epochs=60,
    batch_size=64,
    lr=1e-3,
    min_lr=1e-5,
    warmup_steps=500,
    weight_decay=0.05,
    label_smoothing=0.1,
    clip_norm=1.0,
    seed=0,
)


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_split(data_dir, prefix):
    images = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz")
    assert images.shape[0] == labels.shape[0] and images.shape[1:] == (28, 28)
    # Kept in [0, 1]: the crop's zero padding is background before normalisation.
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def normalize(x):
    return (x - MEAN) / STD


def augment(x, rng, shift=2):
    """Random crop of the zero-padded (`shift` px) images and random horizontal flip, per image."""
    b = x.shape[0]
    padded = F.pad(x, (shift, shift, shift, shift))
    dy = torch.from_numpy(rng.integers(0, 2 * shift + 1, size=b))
    dx = torch.from_numpy(rng.integers(0, 2 * shift + 1, size=b))
    flip = torch.from_numpy(rng.random(b) < 0.5)
    ar = torch.arange(28)
    rows = (dy[:, None] + ar[None, :])  # (b, 28)
    cols = dx[:, None] + ar[None, :]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b)[:, None, None]
    return padded[bi, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def lr_at(step, base_lr, min_lr, warmup, total):
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = total - 1 - warmup
    if span <= 0:
        return min_lr
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / span))


def decays(name, param):
    return param.dim() >= 2 and not any(s in name for s in NO_DECAY_SUBSTRINGS)


def build_model(args):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=28,
        patch_size=args.patch_size,
        num_channels=1,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.mlp,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        qkv_bias=True,
        layer_norm_eps=1e-12,
        num_labels=10,
        attn_implementation=args.attn,
    )
    if args.init is None:
        torch.manual_seed(args.seed)
        return ViTForImageClassification(config)
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        os.symlink(Path(args.init).resolve(), Path(tmp) / "model.safetensors")
        model, info = ViTForImageClassification.from_pretrained(
            tmp, output_loading_info=True, attn_implementation=args.attn
        )
    bad = {k: v for k, v in info.items() if v}
    if bad:
        sys.exit(f"error: {args.init} does not match the model: {bad}")
    return model.float()


@torch.no_grad()
def evaluate(model, x, y, batch=1000):
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        logits = model(pixel_values=normalize(x[i : i + batch])).logits
        correct += (logits.argmax(-1) == y[i : i + batch]).sum().item()
    model.train()
    return correct / x.shape[0]


def parse_args():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--config", type=Path, help="JSON file with any of the flags' values")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak (base) learning rate")
    p.add_argument("--min-lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--clip-norm", type=float)
    p.add_argument("--patch-size", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--mlp", type=int)
    p.add_argument("--seed", type=int, help="model init (without --init) and data order")
    p.add_argument("--init", type=Path, help="safetensors with the published key names")
    p.add_argument("--save-init", type=Path, metavar="DIR")
    p.add_argument("--save", type=Path, metavar="DIR")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--no-eval", action="store_true", help="skip the test set evaluation")
    p.add_argument("--shift", type=int, default=1, help="largest random shift in pixels (0: flips only)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()
    values = dict(DEFAULTS)
    if args.config is not None:
        extra = json.loads(args.config.read_text())
        unknown = set(extra) - set(DEFAULTS)
        if unknown:
            p.error(f"--config: unknown keys {sorted(unknown)}")
        values.update(extra)
    for k in DEFAULTS:
        if getattr(args, k) is not None:
            values[k] = getattr(args, k)
    for k, v in values.items():
        setattr(args, k, v)
    if args.hidden % args.heads:
        p.error("--hidden must be a multiple of --heads")
    if 28 % args.patch_size:
        p.error("--patch-size must divide 28")
    return args


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = open(args.json_out, "w") if args.json_out else None

    def emit(obj):
        line = json.dumps(obj)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    x_train, y_train = load_split(args.data, "train")
    x_test, y_test = load_split(args.data, "t10k")
    model = build_model(args)
    model.train()
    if args.save_init is not None:
        model.save_pretrained(args.save_init)

    params = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in params if decays(n, p)], "weight_decay": args.weight_decay},
        {"params": [p for n, p in params if not decays(n, p)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(
        groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=args.weight_decay,
        foreach=False,
    )
    n_params = sum(p.numel() for _, p in params)
    recipe = {k: getattr(args, k) for k in DEFAULTS}
    steps_per_epoch = x_train.shape[0] // args.batch_size
    total = args.epochs * steps_per_epoch
    emit({"recipe": recipe, "shift": args.shift, "parameters": n_params, "steps_per_epoch": steps_per_epoch,
          "total_steps": total, "threads": args.threads, "attn": args.attn,
          "init": str(args.init) if args.init else f"transformers init, seed {args.seed}"})

    rng = np.random.default_rng(args.seed)
    step = 0
    train_seconds = 0.0
    images = 0
    accuracy = None
    start_all = time.perf_counter()
    stopped = False
    for epoch in range(1, args.epochs + 1):
        order = torch.from_numpy(rng.permutation(x_train.shape[0]))
        losses = []
        epoch_images = 0
        t0 = time.perf_counter()
        for i in range(steps_per_epoch):
            if args.max_steps is not None and step >= args.max_steps:
                stopped = True
                break
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            xb = normalize(augment(x_train[idx], rng, args.shift))
            yb = y_train[idx]
            lr = lr_at(step, args.lr, args.min_lr, args.warmup_steps, total)
            for g in opt.param_groups:
                g["lr"] = lr
            logits = model(pixel_values=xb).logits
            loss = F.cross_entropy(logits, yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_norm)
            opt.step()
            losses.append(loss.item())
            step += 1
            epoch_images += xb.shape[0]
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        images += epoch_images
        if epoch_images == 0:
            break
        accuracy = None if args.no_eval else evaluate(model, x_test, y_test)
        emit({
            "epoch": epoch,
            "steps": step,
            "train_loss": round(sum(losses) / len(losses), 6),
            "test_accuracy": accuracy,
            "images_per_second": round(epoch_images / seconds, 1),
            "seconds": round(seconds, 2),
        })
        if stopped:
            break
    emit({
        "summary": True,
        "final_test_accuracy": accuracy,
        "steps": step,
        "train_seconds": round(train_seconds, 2),
        "images_per_second": round(images / train_seconds, 1) if train_seconds else None,
        "total_seconds": round(time.perf_counter() - start_all, 2),
    })
    if args.save is not None:
        model.save_pretrained(args.save)
    if out:
        out.close()


if __name__ == "__main__":
    main()
