"""PyTorch's side of `cargo xtask bench-compare cpu|models` and of the GPU bundle.

`compare_torch.py cuda [FILTER]` times `glimpse_benches::cuda_suite`'s work on cuda:0 (CUDA
events), and `compare_torch.py table GLIMPSE.jsonl TORCH.jsonl [CANDIDATES.jsonl]` prints the
side-by-side table (with the rows glimpse ran again with every kernel candidate on, if given).

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


def cuda_median_ms(fn, inner, min_samples=5, budget=2.0):
    """Median ms of one run on the GPU: CUDA events around `inner` back-to-back runs per
    sample, after a warm-up (the same rule as glimpse's median_ms_synced)."""
    for _ in range(max(inner, 2)):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    times = []
    while len(times) < min_samples or (time.perf_counter() - start < budget and len(times) < 100):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / inner)
    times.sort()
    return times[len(times) // 2]


def cuda_suite():
    """The GPU workloads of `glimpse_benches::cuda_suite`, bf16 on cuda:0, as
    (name, flops, fn, inner)."""
    dev, bf = "cuda", torch.bfloat16

    def randn(*shape):
        return torch.randn(*shape, device=dev, dtype=bf)

    w = []
    for b, h, n, d, inner in [(128, 12, 197, 64, 50), (4, 16, 4096, 64, 10), (4, 16, 4096, 128, 10)]:
        q, k, v = randn(b, h, n, d), randn(b, h, n, d), randn(b, h, n, d)
        w.append((f"attention fwd bf16 B{b} H{h} N{n} D{d}", 4.0 * b * h * n * n * d,
                  lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), inner))
    for b, h, n, d, inner in [(128, 12, 197, 64, 20), (4, 16, 4096, 64, 5), (4, 16, 4096, 128, 5)]:
        q, k, v = (randn(b, h, n, d).requires_grad_(True) for _ in range(3))
        d_out = randn(b, h, n, d)

        def fwd_bwd(q=q, k=k, v=v, d_out=d_out):
            out = F.scaled_dot_product_attention(q, k, v)
            torch.autograd.grad(out, (q, k, v), d_out)

        w.append((f"attention fwd+bwd bf16 B{b} H{h} N{n} D{d}", 3.5 * 4.0 * b * h * n * n * d,
                  fwd_bwd, inner))
    b, size, p, e = 256, 224, 16, 768
    x, wt, bias = randn(b, 3, size, size), randn(e, 3, p, p), randn(e)
    patches = (size // p) ** 2
    cls, pos = randn(1, 1, e), randn(1, patches + 1, e)

    def patch(x=x, wt=wt, bias=bias, cls=cls, pos=pos):
        y = F.conv2d(x, wt, bias, stride=p).flatten(2).transpose(1, 2)
        return torch.cat([cls.expand(b, -1, -1), y], dim=1) + pos

    w.append((f"patch_embed bf16 B{b} {size}px p{p} E{e}", 2.0 * b * patches * e * 3 * p * p, patch, 20))
    n, d = 32768, 512
    img, txt = randn(n, d).requires_grad_(True), randn(n, d).requires_grad_(True)
    scale = torch.tensor(100.0, device=dev, requires_grad=True)
    labels = torch.arange(n, device=dev)

    def contrastive(img=img, txt=txt, scale=scale):
        logits = scale * img @ txt.T
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        torch.autograd.grad(loss, (img, txt, scale))

    def contrastive_fwd(img=img, txt=txt, scale=scale):
        with torch.no_grad():
            logits = scale * img @ txt.T
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    w.append((f"contrastive fwd bf16 N{n} D{d}", 2.0 * n * n * d, contrastive_fwd, 3))
    w.append((f"contrastive fwd+bwd bf16 N{n} D{d}", 6.0 * n * n * d, contrastive, 3))
    s8 = 8192
    a8, b8 = randn(s8, s8), randn(s8, s8)
    w.append((f"matmul bf16 {s8}x{s8}x{s8}", 2.0 * s8 ** 3, lambda: a8 @ b8, 5))
    rows = 256 * 197
    x, w_qkv, b_qkv = randn(rows, 768), randn(2304, 768), randn(2304)
    w.append((f"linear bf16 {rows}x768 -> 2304", 2.0 * rows * 768 * 2304,
              lambda: F.linear(x, w_qkv, b_qkv), 10))
    g, bb = randn(768), randn(768)
    w.append((f"layer_norm bf16 {rows}x768", 0.0, lambda: F.layer_norm(x, (768,), g, bb, 1e-12), 20))
    hh = randn(rows, 3072)
    w.append((f"gelu bf16 {rows}x3072", 0.0, lambda: F.gelu(hh), 20))
    r2 = randn(rows, 768)
    w.append((f"add bf16 {rows}x768", 0.0, lambda: x + r2, 20))
    qkv = randn(256, 197, 3, 12, 64)
    q, k, v = (qkv[:, :, i].permute(0, 2, 1, 3) for i in range(3))
    w.append(("attention fwd bf16 B256 H12 N197 D64 (strided q/k/v)", 4.0 * 256 * 12 * 197 * 197 * 64,
              lambda: F.scaled_dot_product_attention(q, k, v), 10))
    from transformers import ViTConfig, ViTForImageClassification

    vit = ViTForImageClassification(ViTConfig(num_labels=1000)).to(dev, bf).eval()
    pixels = randn(256, 3, 224, 224)
    vit.requires_grad_(False)  # inference, as glimpse's side
    w.append(("ViT-B/16 bf16 batch 256", VIT_B16_FLOPS * 256,
              lambda: vit(pixel_values=pixels), 3))
    return w


def run_cuda(flt):
    torch.backends.cuda.matmul.allow_tf32 = False
    for name, flops, fn, inner in cuda_suite():
        if flt and flt not in name:
            continue
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ms = cuda_median_ms(fn, inner)
        extra_gb = (torch.cuda.max_memory_allocated() - base) / 1e9
        print(json.dumps({"name": name, "median_ms": round(ms, 4),
                          "gflops": round(flops / ms / 1e6, 2) if flops else 0.0,
                          "peak_extra_gb": round(extra_gb, 3)}), flush=True)
    print(json.dumps({"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}),
          flush=True)


def table(ours_path, theirs_path, candidates_path=None):
    """Markdown table of two JSON-lines files (glimpse's, PyTorch's), with a third (glimpse's
    runs with every kernel candidate on) as two more columns when given and not empty."""
    def rows(path):
        out = {}
        for line in open(path):
            line = line.strip()
            if line.startswith("{") and '"name"' in line:
                r = json.loads(line)
                out[r["name"]] = r
        return out

    ours, theirs = rows(ours_path), rows(theirs_path)
    cand = rows(candidates_path) if candidates_path else {}
    head = ("| workload | glimpse ms | PyTorch ms | PyTorch / glimpse | glimpse TFLOP/s "
            "| PyTorch TFLOP/s | glimpse extra GB | PyTorch extra GB |")
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if cand:
        head += " candidates ms | PyTorch / candidates |"
        rule += "---:|---:|"
    print(head)
    print(rule)
    for name in list(theirs) + [n for n in ours if n not in theirs]:
        o, t, c = ours.get(name), theirs.get(name), cand.get(name)
        fmt = lambda r, k, f: f.format(r[k]) if r and r.get(k) is not None else "-"
        ratio = lambda o: f"{t['median_ms'] / o['median_ms']:.2f}x" if o and t else "-"
        tf = lambda r: f"{r['gflops'] / 1e3:.1f}" if r and r.get("gflops") else "-"
        line = (f"| {name} | {fmt(o, 'median_ms', '{:.4f}')} | {fmt(t, 'median_ms', '{:.4f}')} | "
                f"{ratio(o)} | {tf(o)} | {tf(t)} | {fmt(o, 'peak_extra_gb', '{:.2f}')} | "
                f"{fmt(t, 'peak_extra_gb', '{:.2f}')} |")
        if cand:
            line += f" {fmt(c, 'median_ms', '{:.4f}')} | {ratio(c)} |"
        print(line)


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "table":
        table(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
        return
    if len(sys.argv) >= 2 and sys.argv[1] == "cuda":
        torch.set_grad_enabled(True)
        run_cuda(sys.argv[2] if len(sys.argv) > 2 else None)
        return
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
