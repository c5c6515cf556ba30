"""PyTorch's side of `cargo xtask bench-compare cpu`.

Times the same workloads, with the same shapes and the same timing rule (two warm-up runs, then
the median of at least 5 runs and about 2 seconds), as `glimpse_benches::cpu_suite`, and prints
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


def main():
    threads = int(os.environ.get("GLIMPSE_BENCH_THREADS", os.cpu_count()))
    torch.set_num_threads(threads)
    flt = sys.argv[1] if len(sys.argv) > 1 else None
    with torch.no_grad():
        pass
    for name, flops, fn in suite():
        if flt and flt not in name:
            continue
        ms = median_ms(fn)
        print(json.dumps({"name": name, "median_ms": round(ms, 4),
                          "gflops": round(flops / ms / 1e6, 2) if flops else 0.0}), flush=True)
    print(json.dumps({"torch": torch.__version__, "threads": threads,
                      "cpu_capability": torch.backends.cpu.get_cpu_capability()}), flush=True)


if __name__ == "__main__":
    main()
