"""Pretraining throughput of the paper-scale impuTMAE model (forward + backward + AdamW step).

All four tokenised modalities at paper scale (rna 16,304/512, dna 25,978/1,024, mri 64^3/16,
wsi 10 x 256 x 256 x 3 / 16), random data resident on the device (images uint8), presence drawn at
the TCGA GBM/LGG rates (rna 664, dna 924, mri 165, wsi 869 of 1,104; every patient has at least one
modality) unless --all-present. Steps go through the same ``pretrain_step`` as training.
Encoders and output heads run only on the samples that need them (``MAEConfig.skip_missing``)
unless --dense, or --compile: the compiled encoders keep static shapes, so they get every sample.

    python experiments/bench/model_throughput.py --device cuda --bf16 --batch 512 --steps 20 [--compile]
    python experiments/bench/model_throughput.py --device cpu --batch 4 --steps 3

Prints samples/s, ms/step, FLOP per step (torch.utils.flop_counter.FlopCounterMode, one step,
forward + backward), achieved FLOP/s, on CUDA the fraction of the dense bf16 peak (H100/H200 SXM
~989 TFLOP/s) and the time implied for 800 epochs over 1,104 patients; then one JSON line.
Imports only torch and impumae.model / impumae.train.pretrain_loop.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from impumae.train.pretrain_loop import PretrainConfig, ResidentData, make_optimizer, pretrain_step
from impumae.modalities import PAPER
from impumae.model import MAEConfig, MultimodalMAE

PRESENT_RATE = {"rna": 664 / 1104, "dna": 924 / 1104, "mri": 165 / 1104, "wsi": 869 / 1104}
DENSE_BF16_PEAK = 989e12  # H100 / H200 SXM
EPOCHS, PATIENTS = 800, 1104


def random_cohort(n: int, all_present: bool, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    specs = {m: PAPER[m] for m in ("rna", "dna", "mri", "wsi")}
    present = {m: (torch.ones(n, dtype=torch.bool) if all_present else torch.rand(n, generator=g) < PRESENT_RATE[m])
               for m in specs}
    none = ~torch.stack(list(present.values())).any(0)
    present["dna"] |= none  # everyone takes part
    x = {}
    for m, spec in specs.items():
        if spec.kind_object.storage_dtype == "uint8":
            x[m] = torch.randint(0, 256, (n, *spec.shape), dtype=torch.uint8, device=device)
        else:
            x[m] = torch.randn(n, *spec.shape, device=device)
    return specs, ResidentData(x, present, device=device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="default 24 on CPU, 512 on CUDA")
    ap.add_argument("--patients", type=int, default=None, help="resident patients (default 1104 on CUDA, 2 x batch on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 3 on CPU, 30 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 on CPU, 5 on CUDA, 10 with --compile)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoders and decoder blocks")
    ap.add_argument("--all-present", action="store_true", help="every modality present for every patient")
    ap.add_argument("--dense", action="store_true", help="run encoders and heads on missing samples too (skip_missing off)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (512 if cuda else 24)
    steps = args.steps or (30 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (10 if args.compile else (5 if cuda else 1))
    n = args.patients or (PATIENTS if cuda else 2 * batch)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(0)
    specs, data = random_cohort(n, args.all_present, device)
    skip_missing = not (args.dense or args.compile)
    model = MultimodalMAE(specs, MAEConfig(check_finite=False, skip_missing=skip_missing)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    cfg = PretrainConfig(epochs=EPOCHS, batch_size=batch, bf16=args.bf16)
    optimizer = make_optimizer(model, cfg)
    generator = torch.Generator(device=device).manual_seed(0)

    def batches():
        epoch = 0
        while True:
            for x, present in data.batches(batch, seed=0, epoch=epoch):
                if len(next(iter(present.values()))) == batch:  # full batches only
                    yield x, present
            epoch += 1

    stream = batches()
    # FLOPs of one step (eager; the same for the compiled model)
    x, present = next(stream)
    counter = FlopCounterMode(display=False)
    with counter:
        pretrain_step(model, x, present, optimizer, None, cfg, generator, args.bf16)
    flops_per_step = counter.get_total_flops()

    if args.compile:
        if cuda:
            torch._dynamo.config.cache_size_limit = 64
        # static shapes: one graph per sequence length (dynamic-shape graphs hit an inductor bug in torch 2.11)
        for encoder in model.encoders.values():
            encoder.compile(dynamic=False)
        for block in model.decoder_blocks:
            block.compile(dynamic=False)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    t_compile = time.perf_counter()
    for _ in range(warmup):
        x, present = next(stream)
        pretrain_step(model, x, present, optimizer, None, cfg, generator, args.bf16)
    sync()
    warmup_s = time.perf_counter() - t_compile
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        x, present = next(stream)
        losses = pretrain_step(model, x, present, optimizer, None, cfg, generator, args.bf16)
    sync()
    elapsed = time.perf_counter() - start

    ms_per_step = 1000 * elapsed / steps
    samples_per_s = batch * steps / elapsed
    flops_per_s = flops_per_step * steps / elapsed
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
        "batch": batch, "steps": steps, "warmup_steps": warmup, "warmup_s": round(warmup_s, 2),
        "bf16": args.bf16, "compile": args.compile, "all_present": args.all_present, "skip_missing": skip_missing, "patients_resident": len(data),
        "params": n_params, "samples_per_s": round(samples_per_s, 1), "ms_per_step": round(ms_per_step, 2),
        "gflop_per_step": round(flops_per_step / 1e9, 1), "gflop_per_sample": round(flops_per_step / batch / 1e9, 2),
        "achieved_tflop_per_s": round(flops_per_s / 1e12, 3),
        "final_loss": round(float(losses[0]), 4),
    }
    if cuda:
        result["fraction_of_dense_bf16_peak"] = round(flops_per_s / DENSE_BF16_PEAK, 4)
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    result["hours_for_800_epochs_of_1104"] = round(EPOCHS * PATIENTS / samples_per_s / 3600, 3)
    print(f"device {result['device']}, batch {batch}, bf16 {args.bf16}, compile {args.compile}, {n_params/1e6:.1f} M parameters")
    print(f"{samples_per_s:,.1f} samples/s, {ms_per_step:.1f} ms/step, {flops_per_step/1e9:,.1f} GFLOP/step, "
          f"{flops_per_s/1e12:.2f} TFLOP/s achieved"
          + (f" ({100 * result['fraction_of_dense_bf16_peak']:.1f}% of dense bf16 peak)" if cuda else ""))
    print(f"800 epochs over 1,104 patients: {result['hours_for_800_epochs_of_1104']:.2f} h")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
