"""PyTorch's side of `cargo xtask bench-compare cpu|models`.

`compare_torch.py SUITE [FILTER]` times the same workloads, with the same shapes and the same
timing rule (two warm-up runs, then the median of at least 5 runs and about 2 seconds), as
`glimpse_benches::cpu_suite` (SUITE `cpu`) or `glimpse_benches::model_suite` (SUITE `models`:
transformers' ViT and CLIP with random weights, default attention implementation), and prints
one JSON object per line. Threads: torch.set_num_threads(GLIMPSE_BENCH_THREADS or all cores).
"""

import json
import os
import sys
import time

import torch
import torch.nn.functional as F


def median_ms(fn, min_runs=5, budget=2.0):
    fn()
    fn()
    start = time.perf_counter()
    times = []
    while len(times) < min_runs or (time.perf_counter() - start < budget and len(times) < 200):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def matmul(m, k, n):
    a, b = torch.randn(m, k), torch.randn(k, n)
    return f"matmul {m}x{k}x{n}", 2.0 * m * k * n, lambda: a @ b


def attention(b, h, n, d):
    q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    return (f"attention B{b} H{h} N{n} D{d}", 4.0 * b * h * n * n * d,
            lambda: F.scaled_dot_product_attention(q, k, v))


def layer_norm(rows, cols):
    x, w, b = torch.randn(rows, cols), torch.randn(cols), torch.randn(cols)
    return f"layer_norm {rows}x{cols}", 0.0, lambda: F.layer_norm(x, (cols,), w, b, 1e-5)


def softmax(rows, cols):
    x = torch.randn(rows, cols)
    return f"softmax {rows}x{cols}", 0.0, lambda: torch.softmax(x, -1)


def gelu(n):
    x = torch.randn(n)
    return f"gelu_erf {n}", 0.0, lambda: F.gelu(x)


def patch_embed(b, size, p, e):
    x, w, bias = torch.randn(b, 3, size, size), torch.randn(e, 3, p, p), torch.randn(e)
    patches = (size // p) ** 2
    cls, pos = torch.randn(1, 1, e), torch.randn(1, patches + 1, e)

    def run():
        y = F.conv2d(x, w, bias, stride=p).flatten(2).transpose(1, 2)
        return torch.cat([cls.expand(b, -1, -1), y], dim=1) + pos

    return f"patch_embed B{b} {size}px p{p} E{e}", 2.0 * b * patches * e * 3 * p * p, run


def conv_only(b, size, p, e):
    x, w, bias = torch.randn(b, 3, size, size), torch.randn(e, 3, p, p), torch.randn(e)
    patches = (size // p) ** 2
    return (f"conv2d only B{b} {size}px p{p} E{e}", 2.0 * b * patches * e * 3 * p * p,
            lambda: F.conv2d(x, w, bias, stride=p))


def clip_inputs(n, d):
    img = F.normalize(torch.randn(n, d), dim=-1)
    txt = F.normalize(torch.randn(n, d), dim=-1)
    return img, txt, torch.arange(n)


def contrastive(n, d):
    img, txt, labels = clip_inputs(n, d)

    def run():
        logits = 100.0 * img @ txt.T
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    return f"contrastive fwd N{n} D{d}", 2.0 * n * n * d, run


def contrastive_fwd_bwd(n, d):
    img, txt, labels = clip_inputs(n, d)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    scale = torch.tensor(100.0, requires_grad=True)

    def run():
        logits = scale * img @ txt.T
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        torch.autograd.grad(loss, [img, txt, scale])

    return f"contrastive fwd+bwd N{n} D{d}", 6.0 * n * n * d, run


def suite():
    w = [matmul(s, s, s) for s in (256, 512, 1024, 2048)]
    w += [matmul(1576, 768, 2304), matmul(1576, 768, 3072), matmul(1576, 3072, 768)]
    w += [attention(8, 12, 197, 64), attention(1, 12, 577, 64)]
    w += [layer_norm(1576, 768), softmax(8 * 12 * 197, 197), gelu(1576 * 3072)]
    w += [patch_embed(8, 224, 16, 768), conv_only(8, 224, 16, 768)]
    w += [contrastive(4096, 512), contrastive_fwd_bwd(4096, 512)]
    return w


VIT_B16_FLOPS = 35.2e9


def vit_b16(batch):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(num_labels=1000)).eval()
    pixels = torch.randn(batch, 3, 224, 224)
    return f"ViT-B/16 fp32 batch {batch}", VIT_B16_FLOPS * batch, lambda: model(pixel_values=pixels)


def clip_b32():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    # openai/clip-vit-base-patch32's architecture (the config defaults).
    return CLIPModel(CLIPConfig()).eval()


def clip_b32_image(batch):
    model = clip_b32()
    pixels = torch.randn(batch, 3, 224, 224)
    return (f"CLIP ViT-B/32 image fp32 batch {batch}", 0.0,
            lambda: model.get_image_features(pixel_values=pixels))


def clip_b32_text(batch, length):
    model = clip_b32()
    ids = torch.randint(1, 49000, (batch, length))
    ids[:, 0] = 49406
    ids[:, -1] = 49407
    mask = torch.ones(batch, length, dtype=torch.long)
    return (f"CLIP text fp32 batch {batch}x{length}", 0.0,
            lambda: model.get_text_features(input_ids=ids, attention_mask=mask))


def model_suite():
    return [vit_b16(1), vit_b16(8), clip_b32_image(1), clip_b32_text(8, 77)]


def main():
    threads = int(os.environ.get("GLIMPSE_BENCH_THREADS", os.cpu_count()))
    torch.set_num_threads(threads)
    suites = {"cpu": suite, "models": model_suite}
    if len(sys.argv) < 2 or sys.argv[1] not in suites:
        sys.exit(f"usage: compare_torch.py {'|'.join(suites)} [FILTER]")
    make = suites[sys.argv[1]]
    flt = sys.argv[2] if len(sys.argv) > 2 else None
    # Inference only for the models; the cpu suite's backward workload needs autograd.
    torch.set_grad_enabled(sys.argv[1] != "models")
    for name, flops, fn in make():
        if flt and flt not in name:
            continue
        ms = median_ms(fn)
        print(json.dumps({"name": name, "median_ms": round(ms, 4),
                          "gflops": round(flops / ms / 1e6, 2) if flops else 0.0}), flush=True)
    print(json.dumps({"torch": torch.__version__, "threads": threads,
                      "cpu_capability": torch.backends.cpu.get_cpu_capability()}), flush=True)


if __name__ == "__main__":
    main()
