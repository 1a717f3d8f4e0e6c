"""One command for a machine with a GPU: does kinlm's GPU path work, and how fast is it?

    python tools/gpu_check.py [--out gpu_check.md] [--steps 20] [--peak-tflops 989] [--skip ddp,blimp]

On a machine without CUDA it says so and exits 0 (nothing is measured, nothing written). With CUDA it
measures, on device 0 (DDP: every local GPU), and writes a markdown report:

- ``kinlm run`` end to end on the GPU: specs/quickstart.json, 60 steps, precision auto (bf16
  autocast) with ``train.compile`` on: status, tokens/s, the steady tokens/s, MFU and compile seconds of
  result.json, eval loss, and whether compiling fell back;
- mixed precision and batch size: quickstart in fp16 (GradScaler) and bf16, tokens/s, eval loss and
  skipped steps; ``train.batch_size: "auto"`` with a target too large for the device (the micro-batch
  found by backing off on real out-of-memory errors, the step kept by accumulation);
- ``gpt`` at GPT-2 124M (12 layers, d 768, 12 heads, context 1024, vocabulary 50,304) in bf16
  autocast, eager and compiled: tokens/s and MFU, model FLOPs per token (6 N + 12 L d T, nanoGPT's
  estimate) x tokens/s over the device's peak dense bf16 rate (a datasheet table below, or
  ``--peak-tflops``) and over a measured bf16 matmul rate;
- the hamiltonian paper configuration (specs/hamiltonian_fineweb.json's model) against ``gpt`` of
  the same width, depth, heads and context on the same tokens: parameters, tokens/s, peak memory,
  with ``attention`` flex and reference apart; then the FlexAttention path against the reference
  (same weights): float32 logits and the losses of 5 training steps;
- context_vector (specs/context_vector_wikitext2.json) and cvfp (specs/cvfp_ultrachat.json) models:
  tokens/s of a causal-LM training step at their specs' batch and context (cvfp's two-phase
  curriculum has its own steps; this is the model's forward and backward), each with its default
  loop and with ``loop: "compiled"`` (every token's step compiled, CUDA graphs) and the two loops'
  logits compared on the same weights, and cvfp's ContextBlock recurrence hoisted, compiled and
  readable;
- the loss on bf16 logits at batch x 1024 x 50,304: kinlm's chunked cross-entropy against
  ``F.cross_entropy(logits.float())``, milliseconds, peak memory and the gradients' difference;
- checkpoint window: the 124M training step's throughput in a window holding a synchronous and an
  asynchronous checkpoint save (engine/checkpoint.py AsyncSaver), against a window without one;
- generation: greedy decoding with ``kinlm_core.sampling.generate_ids`` (static decoding, eager and
  with the step compiled, and the old growing-cache path, with a check of identical tokens) against
  transformers' ``generate`` on the same 124M weights (the exporter's GPT2LMHeadModel), bf16 weights,
  batch 1 and 8: tokens/s and the share of identical tokens;
- BLiMP: pairs/s of ``kinlm_core.blimp.score`` on a 124M ``gpt`` (byte tokenizer), bf16 autocast;
- data preparation: ``kinlm data prepare`` of the bundled corpora (nine times over, BPE 4,096) with one
  worker and with every core (at most 16): tokens/s against the training rates measured above;
- DDP: the 124M training step under ``torchrun --standalone --nproc_per_node K`` for K = 1 and K =
  every local GPU (NCCL): tokens/s and scaling efficiency tok/s(K) / (K x tok/s(1)).

Every training measurement uses random tokens (the model and the loop, not the data pipeline), drops
``--warmup`` steps and times ``--steps`` with ``torch.cuda.synchronize``. A section that fails is
reported with its error line and the others go on. Weights are random: speed only, no quality.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from kinlm_core.engine.perf import PEAK_BF16_TFLOPS  # noqa: E402 - the datasheet table result.json's MFU uses too

GPT124M = {"type": "gpt", "n_layer": 12, "n_head": 12, "d_model": 768, "block_size": 1024, "dropout": 0.0}
VOCAB = 50304
DEV = "cuda"  # --smoke: "cpu", with every shape shrunk (a test that the code runs, not a measurement)
SMOKE = False


def sync() -> None:
    import torch

    if DEV == "cuda":
        torch.cuda.synchronize()


def peak_mem_gb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0


def shrink(cfg: dict) -> dict:
    """--smoke: the same model type, tiny."""
    if not SMOKE:
        return cfg
    small = {"n_layer": 1, "d_model": 32, "n_head": 2, "block_size": 32, "d_embed": 16, "d_hidden": 32, "d_context": 16}
    return {k: (small[k] if k in small else v) for k, v in cfg.items()}


def peak_tflops(device_name: str, override: float | None = None) -> float | None:
    """The device's peak dense bf16 rate in TFLOP/s: ``override``, else the datasheet table, else None."""
    if override:
        return float(override)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def flops_per_token(n_params: int, n_layer: int = 0, d_model: int = 0, context: int = 0) -> float:
    """Training FLOPs per token, nanoGPT's estimate: 6 N (forward and backward of the weights) plus
    12 L d T (attention scores and values over a context of T)."""
    return 6.0 * n_params + 12.0 * n_layer * d_model * context


def mfu(tokens_per_s: float, flops_token: float, peak_flops: float | None) -> float | None:
    return None if not peak_flops else tokens_per_s * flops_token / peak_flops


def fmt(x, spec=",.0f", none="n/a") -> str:
    return none if x is None else format(x, spec)


# --- measurements ------------------------------------------------------------------------------


def build(cfg: dict, vocab: int):
    import kinlm_core

    cls = kinlm_core.component("model", cfg["type"])
    return cls(**cfg).build(vocab)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def train_speed(model, vocab: int, batch: int, context: int, steps: int, warmup: int, compile: bool = False) -> dict:
    """tokens/s of AdamW training steps (bf16 autocast, clipping) on random tokens; peak memory."""
    import torch

    from kinlm_core.engine.runtime import compile_model
    from kinlm_core.objectives import call_model, scored

    if SMOKE:
        batch, context = min(batch, 2), min(context, 32)
    torch.manual_seed(0)
    model = model.to(DEV).train()
    notes: list[str] = []
    m = compile_model(model, compile, notes.append)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=DEV == "cuda")
    x = torch.randint(0, vocab, (batch, context + 1), device=DEV)
    b = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        with torch.autocast(DEV, dtype=torch.bfloat16):
            loss = scored(call_model(m, b), b["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": steps * batch * context / seconds, "step_ms": 1000 * seconds / steps,
            "peak_mem_gb": peak_mem_gb(), "params": n_params(model),
            "fell_back": bool(notes), "notes": notes, "loss": float(loss.detach())}


def matmul_tflops(n: int = 8192, reps: int = 20) -> float:
    import torch

    n = 256 if SMOKE else n
    a = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def section_kinlm_run(args) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "kinlm_core.cli", "run", str(ROOT / "specs" / "quickstart.json"),
               "--set", "train.max_steps=60", "--set", "train.compile=true", "--set", "eval.every=60",
               "--set", "train.device=cuda", "--run-dir", str(Path(tmp) / "run"), "--no-progress"]
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env={**os.environ, "KINLM_CACHE": tmp})
        wall = time.perf_counter() - t
        res = json.loads((Path(tmp) / "run" / "result.json").read_text()) if (Path(tmp) / "run" / "result.json").exists() else {}
        fell = [x for x in (r.stdout + r.stderr).splitlines() if "cannot be compiled" in x]
        lines = ["## `kinlm run` on the GPU", "",
                 "`kinlm run specs/quickstart.json --set train.max_steps=60 --set train.compile=true` "
                 "(precision auto: bf16 autocast on CUDA)", "",
                 "| exit | status | eval loss | tokens/s | steady tokens/s | MFU | compile s | wall s | compile |",
                 "|---|---|---|---|---|---|---|---|---|",
                 f"| {r.returncode} | {res.get('status', 'n/a')} | {fmt(res.get('eval/loss'), '.4f')} | "
                 f"{fmt(res.get('tokens_per_s'))} | {fmt(res.get('steady_tokens_per_s'))} | "
                 f"{fmt(res.get('mfu'), '.1%', res.get('mfu_note', 'n/a'))} | {fmt(res.get('compile_seconds'), '.1f')} | "
                 f"{wall:.0f} | {'fell back: ' + fell[0] if fell else 'compiled'} |",
                 "", "tokens/s counts the compile (train_seconds); steady tokens/s and MFU (result.json, "
                 "engine/perf.py) leave out the 3 warm-up steps. Target (issue 34): steady figure reported apart."]
        if r.returncode != 0:
            lines += ["", "```", *(r.stderr.strip().splitlines()[-15:]), "```"]
        return lines


def _kinlm_run(tmp: str, name: str, *sets: str) -> tuple[int, dict, str]:
    """``kinlm run specs/quickstart.json --set ...`` on the GPU into TMP/NAME: (exit, result.json, output)."""
    rd = Path(tmp) / name
    cmd = [sys.executable, "-m", "kinlm_core.cli", "run", str(ROOT / "specs" / "quickstart.json"),
           "--set", "train.device=cuda", *[x for kv in sets for x in ("--set", kv)], "--run-dir", str(rd),
           "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env={**os.environ, "KINLM_CACHE": tmp})
    res = json.loads((rd / "result.json").read_text()) if (rd / "result.json").exists() else {}
    return r.returncode, res, r.stdout + r.stderr


def section_amp(args, state) -> list[str]:
    """fp16 (autocast + GradScaler) against bf16 on quickstart, and batch_size "auto" with a target too
    large for the device (the micro-batch is found by backing off on real out-of-memory errors)."""
    lines = ["## Mixed precision and automatic batch size", "",
             "`kinlm run specs/quickstart.json` 60 steps with `train.precision` fp16 and bf16; then 3 steps with "
             "`train.batch_size: \"auto\"`, `batch_size_target` 65,536 sequences of 128 tokens", "",
             "| run | exit | status | eval loss | tokens/s | skipped steps | micro-batch x accumulation |",
             "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("fp16", ("train.precision=fp16", "train.max_steps=60", "eval.every=60")),
                ("bf16", ("train.precision=bf16", "train.max_steps=60", "eval.every=60")),
                ("auto batch", ("train.batch_size=auto", "train.batch_size_target=65536", "train.max_steps=3",
                                "eval.every=3", "eval.batches=1", "analyzers=[]", "generate=[]"))]
        tails = []
        for name, sets in runs:
            rc, res, out = _kinlm_run(tmp, name.replace(" ", "_"), *sets)
            b = res.get("batch") or {}
            lines.append(f"| {name} | {rc} | {res.get('status', 'n/a')} | {fmt(res.get('eval/loss'), '.4f')} | "
                         f"{fmt(res.get('tokens_per_s'))} | {res.get('skipped_steps', '')} | "
                         + (f"{b.get('micro_batch')} x {b.get('grad_accum')} ({b.get('chosen_by')})" if b else "")
                         + " |")
            if rc != 0:
                tails += ["", f"{name}:", "```", *out.strip().splitlines()[-10:], "```"]
    return lines + tails
def section_checkpoint(args, state) -> list[str]:
    """Training throughput in a window of steps that holds a checkpoint save, synchronous and asynchronous
    (kinlm_core.engine.checkpoint.save / AsyncSaver), against windows without one: the 124M gpt, bf16."""
    import torch

    from kinlm_core.engine import checkpoint as ckpt
    from kinlm_core.objectives import call_model, scored

    batch, context, window = (2, 32, 3) if SMOKE else (args.batch, 1024, 5)
    torch.manual_seed(0)
    model = build(shrink(GPT124M), VOCAB).to(DEV).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=DEV == "cuda")
    x = torch.randint(0, VOCAB, (batch, context + 1), device=DEV)
    b = {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    def step():
        with torch.autocast(DEV, dtype=torch.bfloat16):
            loss = scored(call_model(model, b), b["labels"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def window_s(save) -> float:
        sync()
        t = time.perf_counter()
        for i in range(window):
            step()
            if i == 0 and save is not None:
                save(i)
        sync()
        return time.perf_counter() - t

    saver = ckpt.AsyncSaver()
    with tempfile.TemporaryDirectory() as tmp:
        def sync_save(i):
            ckpt.save(Path(tmp) / "sync", i, model, {"optimizer": opt.state_dict()})

        def async_save(i):
            saver.save(Path(tmp) / "async", i, model, {"optimizer": opt.state_dict()})

        for _ in range(args.warmup):
            step()
        async_save(0)  # allocates the pinned buffers once
        saver.join()
        best = {"none": 1e9, "sync": 1e9, "async": 1e9}
        for _ in range(2):
            for who, fn in (("none", None), ("sync", sync_save), ("async", async_save)):
                best[who] = min(best[who], window_s(fn))
                saver.join()
        mb = ckpt.size_of(ckpt.latest(Path(tmp) / "sync")) / 1e6
    rel = {k: best["none"] / v for k, v in best.items()}
    return ["## Checkpoint window: throughput with a save in it", "",
            f"124M gpt, bf16 autocast, batch {batch} x {context}; a window of {window} training steps with a "
            f"checkpoint ({mb:.0f} MB: weights and AdamW state) saved after its first step, best of 2, against a "
            "window without a save. Target (issue 34): no window below 0.9x.", "",
            "| save | window s | throughput vs no save |", "|---|---|---|",
            *(f"| {k} | {best[k]:.2f} | {rel[k]:.2f}x |" for k in ("none", "sync", "async"))]


def section_gpt(args, state) -> list[str]:
    import torch

    name = torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu"
    peak = peak_tflops(name, args.peak_tflops)
    measured = matmul_tflops()
    state["peak"], state["matmul"] = peak, measured
    ftok = None
    rows = []
    for compiled in (False, True):
        model = build(shrink(GPT124M), VOCAB)
        r = train_speed(model, VOCAB, args.batch, 1024, args.steps, args.warmup, compile=compiled)
        ftok = flops_per_token(r["params"], 12, 768, 1024)
        state[f"gpt_{'compiled' if compiled else 'eager'}"] = r
        rows.append(f"| {'compiled' + (' (fell back)' if r['fell_back'] else '') if compiled else 'eager'} | "
                    f"{fmt(r['tokens_per_s'])} | {r['step_ms']:.1f} | "
                    f"{fmt(mfu(r['tokens_per_s'], ftok, peak * 1e12 if peak else None), '.1%')} | "
                    f"{fmt(mfu(r['tokens_per_s'], ftok, measured * 1e12), '.1%')} | {r['peak_mem_gb']:.1f} |")
        del model
        empty_cache()
    return ["## gpt at GPT-2 124M, bf16 autocast", "",
            f"{state['gpt_eager']['params'] / 1e6:.1f}M parameters, batch {args.batch} x 1024 tokens, AdamW (fused), "
            f"clipping; {ftok / 1e6:.0f} MFLOPs per token (6 N + 12 L d T). Peak dense bf16: "
            f"{fmt(peak, '.0f')} TFLOP/s ({'--peak-tflops' if args.peak_tflops else 'datasheet'}); "
            f"measured bf16 matmul 8192^2: {measured:.0f} TFLOP/s. nanoGPT and llm.c report about 40-50% "
            f"MFU on an A100/H100.", "",
            "| torch.compile | tokens/s | ms/step | MFU (peak) | MFU (measured matmul) | peak GiB |",
            "|---|---|---|---|---|---|", *rows]


def spec_model(name: str) -> dict:
    return shrink(dict(json.loads((ROOT / "specs" / name).read_text())["model"]))


def empty_cache() -> None:
    import torch

    if DEV == "cuda":
        torch.cuda.empty_cache()


def section_hamiltonian(args, state) -> list[str]:
    import torch

    ham = spec_model("hamiltonian_fineweb.json")
    gpt = {"type": "gpt", "n_layer": ham["n_layer"], "n_head": ham["n_head"], "d_model": ham["d_model"],
           "block_size": ham["block_size"], "dropout": ham.get("dropout", 0.0)}
    rows = []
    variants = [("hamiltonian (paper), attention auto", ham)]
    if not SMOKE:  # FlexAttention trains on CUDA only; the CPU smoke run checks its forward below
        variants += [("hamiltonian, attention flex", {**ham, "attention": "flex"}),
                     ("hamiltonian, attention reference", {**ham, "attention": "reference"})]
    for label, cfg in (*variants, ("gpt, same shape", gpt)):
        r = train_speed(build(cfg, VOCAB), VOCAB, args.batch // 2 or 1, cfg["block_size"], args.steps, args.warmup)
        state.setdefault("hamiltonian", r)  # the paper configuration's rate (the data section compares with it)
        rows.append(f"| {label} | {r['params'] / 1e6:.1f}M | {fmt(r['tokens_per_s'])} | {r['peak_mem_gb']:.1f} |")
        empty_cache()
    return ["## hamiltonian paper configuration vs gpt", "",
            f"specs/hamiltonian_fineweb.json's model (d {ham['d_model']}, {ham['n_layer']} layers, {ham['n_head']} "
            f"heads, context {ham['block_size']}) and a gpt of that shape, vocabulary {VOCAB}, batch "
            f"{args.batch // 2 or 1} x {ham['block_size']}, bf16 autocast, eager (attention auto = flex on CUDA).", "",
            "| model | parameters | tokens/s | peak GiB |", "|---|---|---|---|", *rows, "",
            *flex_vs_reference(ham, args)]


def flex_vs_reference(ham: dict, args) -> list[str]:
    """The hamiltonian FlexAttention path against the reference mask path on the same weights: float32
    logits (no autocast), then a few AdamW steps from the same start (bf16 autocast) with their losses."""
    import torch

    from kinlm_core.objectives import call_model, scored

    batch, ctx = (2, 32) if SMOKE else (max(args.batch // 4, 1), ham["block_size"])
    models = {}
    for kind in ("reference", "flex"):
        torch.manual_seed(0)
        models[kind] = build({**ham, "attention": kind, "dropout": 0.0}, VOCAB).to(DEV)
    x = torch.randint(0, VOCAB, (batch, ctx + 1), device=DEV, generator=torch.Generator(DEV).manual_seed(1))
    b = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
    with torch.no_grad():
        logits = {k: m.eval()(b["input_ids"]).logits.float() for k, m in models.items()}
    diff = (logits["flex"] - logits["reference"]).abs().max().item()
    lines = ["### FlexAttention vs the reference mask path", "",
             f"Same weights, batch {batch} x {ctx}: max |logit difference| in float32 {diff:.2e} "
             f"(logit scale {logits['reference'].abs().max().item():.1f})."]
    if DEV != "cuda":
        return lines + ["", "Training steps: CUDA only (FlexAttention has no CPU backward)."]
    losses = {}
    for kind, m in models.items():
        m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=3e-4)
        losses[kind] = []
        for _ in range(5):
            with torch.autocast(DEV, dtype=torch.bfloat16):
                loss = scored(call_model(m, b), b["labels"]).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[kind].append(float(loss.detach()))
    empty_cache()
    return lines + ["", "| step | loss, reference | loss, flex |", "|---|---|---|",
                    *(f"| {i} | {r:.4f} | {f:.4f} |" for i, (r, f) in enumerate(zip(losses["reference"], losses["flex"])))]


def section_recurrent(args, state) -> list[str]:
    rows, agree = [], []
    for spec, vocab in (("context_vector_wikitext2.json", 1000), ("cvfp_ultrachat.json", 50257)):
        full = json.loads((ROOT / "specs" / spec).read_text())
        tc = full["train"]
        for loop in ("auto", "compiled"):
            cfg = {**shrink(full["model"]), "loop": loop}
            r = train_speed(build(cfg, vocab), vocab, tc["batch_size"], tc["block_size"], args.steps, args.warmup)
            rows.append(f"| {cfg['type']} ({spec}), loop {loop} | {r['params'] / 1e6:.1f}M | {tc['batch_size']} x "
                        f"{tc['block_size']} | {fmt(r['tokens_per_s'])} | {r['peak_mem_gb']:.2f} |")
            empty_cache()
        agree.append(loop_agreement(shrink(full["model"]), vocab))
    rows += cvfp_loop_rows(args)
    return ["## context_vector and cvfp: training throughput", "",
            "A causal-LM training step (bf16 autocast, eager) at each paper spec's batch and context; cvfp's "
            "two-phase curriculum runs its own steps, so this is its model's forward and backward only. Loop auto: "
            "context_vector's eager loop (TorchScript is off under autocast), cvfp's hoisted loop; loop compiled: "
            "each token's step through torch.compile, CUDA graphs (its compilation in the warm-up steps).", "",
            "| model | parameters | batch | tokens/s | peak GiB |", "|---|---|---|---|---|", *rows, "", *agree]


def loop_agreement(cfg: dict, vocab: int) -> str:
    """The compiled loop against the default one on the same weights: float32 logits, no autocast."""
    import torch

    models = {}
    for loop in ("auto", "compiled"):
        torch.manual_seed(0)
        models[loop] = build({**cfg, "loop": loop}, vocab).to(DEV).eval()
    x = torch.randint(0, vocab, (2, 32), device=DEV, generator=torch.Generator(DEV).manual_seed(1))
    with torch.no_grad():
        logits = {k: m(x).logits.float() for k, m in models.items()}
    diff = (logits["compiled"] - logits["auto"]).abs().max().item()
    empty_cache()
    return (f"{cfg['type']}: loop compiled against auto on the same weights, batch 2 x 32, float32: max |logit "
            f"difference| {diff:.2e} (logit scale {logits['auto'].abs().max().item():.2f}).")


def cvfp_loop_rows(args) -> list[str]:
    """cvfp's ContextBlock recurrence: the hoisted loop (``run``), it with the step compiled, and the readable per-token loop
    (``run_reference``), forward and backward, bf16 autocast, the spec's batch and context."""
    import torch

    full = json.loads((ROOT / "specs" / "cvfp_ultrachat.json").read_text())
    cfg, tc = shrink(full["model"]), full["train"]
    batch, ctx = (2, 16) if SMOKE else (tc["batch_size"], tc["block_size"])
    block = build(cfg, 1000).to(DEV).context_block
    e = torch.randn(batch, ctx, cfg["d_model"], device=DEV)
    rows = []
    compiled = lambda x: block.run(x, compiled=True)  # noqa: E731
    for label, fn in (("hoisted loop", block.run), ("compiled step", compiled), ("readable loop", block.run_reference)):
        for i in range(3 + max(args.steps // 4, 1)):  # 3 warm-up rounds: compiling, CUDA-graph recording
            if i == 3:
                sync()
                t0 = time.perf_counter()
            with torch.autocast(DEV, dtype=torch.bfloat16):
                out = fn(e)[-1]
            out.float().sum().backward()
        sync()
        n = max(args.steps // 4, 1)
        rows.append(f"| cvfp ContextBlock, {label} | | {batch} x {ctx} | "
                    f"{fmt(n * batch * ctx / (time.perf_counter() - t0))} | |")
    return rows


def section_generation(args, state) -> list[str]:
    import torch

    from kinlm_core.engine.export import gpt_to_transformers
    from kinlm_core.sampling import generate_ids

    class Tok:
        vocab_size, eos_id, bos_id, pad_id = 50257, 50256, None, None

    torch.manual_seed(0)
    model = build(shrink(GPT124M), 50257).eval()
    hf = gpt_to_transformers(model, Tok()).to(DEV, dtype=torch.bfloat16).eval()
    model = model.to(DEV, dtype=torch.bfloat16)
    n_new = 8 if SMOKE else args.gen_tokens
    opts = argparse.Namespace(temperature=0.0, top_k=None, top_p=None, seed=0, max_new_tokens=n_new)
    rows = []
    for batch in (1, 8):
        prompt = torch.randint(0, 50257, (1, 16), device=DEV).expand(batch, -1).contiguous()
        best = {}
        outs = {}
        generate_ids(model, prompt, opts, vocab_size=50257, compile_step=True)  # compiles the static step
        for _ in range(2):
            for who in ("kinlm", "compiled", "old", "transformers"):
                sync()
                t = time.perf_counter()
                if who != "transformers":
                    out = generate_ids(model, prompt, opts, vocab_size=50257, static=who != "old",
                                       compile_step=who == "compiled")
                else:
                    with torch.inference_mode():
                        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, use_cache=True,
                                          max_new_tokens=n_new, min_new_tokens=n_new,
                                          eos_token_id=None, pad_token_id=0)
                sync()
                s = time.perf_counter() - t
                best[who] = min(best.get(who, 1e9), s)
                outs[who] = out[:, 16:]
        n = min(outs["kinlm"].size(1), outs["transformers"].size(1))
        same = float((outs["kinlm"][:, :n] == outs["transformers"][:, :n]).float().mean())
        same_old = all(torch.equal(outs[w], outs["old"]) for w in ("kinlm", "compiled"))
        k, h = batch * n_new / best["kinlm"], batch * n_new / best["transformers"]
        c, o = batch * n_new / best["compiled"], batch * n_new / best["old"]
        rows.append(f"| {batch} | {fmt(k)} | {fmt(c)} | {fmt(o)} | {c / o:.2f} | {fmt(h)} | {max(k, c) / h:.2f} | "
                    f"{same:.0%} | {'yes' if same_old else 'NO'} |")
    return ["## Generation: kinlm vs transformers generate", "",
            f"124M gpt, random weights in bf16, the same weights in transformers' GPT2LMHeadModel; greedy, 16-token "
            f"prompt, {n_new} new tokens, best of 2 (alternating); tokens/s counts every row. kinlm: static decoding "
            "(gpt's decode_step, no host read per token), eager and with the step compiled; old: the growing-cache "
            "path (static=False). Target (issue 34): at least 2,000 tok/s at batch 1.", "",
            "| batch | kinlm tok/s | compiled tok/s | old tok/s | compiled / old | transformers tok/s | "
            "best kinlm / transformers | same tokens as transformers | static = old tokens |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows]


def section_blimp(args, state) -> list[str]:
    import torch

    from kinlm_core import blimp
    from kinlm_core.data.tokenizers import ByteTokenizer

    tok = ByteTokenizer()
    model = build(shrink(GPT124M), tok.vocab_size).to(DEV).eval()
    pairs = 2 if SMOKE else args.blimp_pairs
    sync()
    t = time.perf_counter()
    with torch.autocast(DEV, dtype=torch.bfloat16):
        m = blimp.score(model, tok, max_pairs=pairs, progress=False)
    sync()
    s = time.perf_counter() - t
    n = int(m.get("pairs", pairs * 67))
    return ["## BLiMP speed", "",
            f"`kinlm_core.blimp.score` on a 124M gpt (byte tokenizer, random weights), bf16 autocast, {pairs} pairs "
            f"of each of the 67 paradigms.", "",
            "| pairs | seconds | pairs/s | all 67,000 pairs at that rate |", "|---|---|---|---|",
            f"| {n:,} | {s:.1f} | {n / s:,.0f} | {67000 / (n / s) / 60:.1f} min |"]


def ddp_worker(out: str, batch: int, steps: int, warmup: int) -> None:
    """One rank of the DDP measurement (started by torchrun): rank 0 writes tokens/s to ``out``."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from kinlm_core.objectives import call_model, scored

    rank, local, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    torch.manual_seed(0)
    model = build(GPT124M, VOCAB).to("cuda")
    ddp = DDP(model, device_ids=[local])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    g = torch.Generator(device="cuda").manual_seed(rank)
    x = torch.randint(0, VOCAB, (batch, 1025), device="cuda", generator=g)
    b = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            dist.barrier()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = scored(call_model(ddp, b), b["labels"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    dist.barrier()
    seconds = time.perf_counter() - t0
    if rank == 0:
        Path(out).write_text(json.dumps({"world": world, "tokens_per_s": world * steps * batch * 1024 / seconds}))
    dist.destroy_process_group()


def section_ddp(args, state) -> list[str]:
    import torch

    n = torch.cuda.device_count()
    results = {}
    for k in sorted({1, n}):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "ddp.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(k),
                   str(Path(__file__).resolve()), "--ddp-worker", str(out), "--batch", str(args.batch),
                   "--steps", str(args.steps), "--warmup", str(args.warmup)]
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "4"})
            if r.returncode != 0 or not out.exists():
                raise RuntimeError(f"torchrun with {k} GPU(s) failed: " + " | ".join(r.stderr.strip().splitlines()[-3:]))
            results[k] = json.loads(out.read_text())["tokens_per_s"]
    rows = [f"| {k} | {fmt(v)} | {v / (k * results[1]):.0%} |" for k, v in sorted(results.items())]
    lines = ["## DDP over the local GPUs (torchrun, NCCL)", "",
             f"124M gpt, batch {args.batch} x 1024 per GPU, bf16 autocast, eager; efficiency = tok/s(K) / (K x tok/s(1)).",
             "", "| GPUs | tokens/s | scaling efficiency |", "|---|---|---|", *rows]
    if n == 1:
        lines += ["", "One GPU here: the DDP path ran (NCCL, one rank) but scaling is not measured."]
    return lines


def section_loss(args, state) -> list[str]:
    """The causal LM loss on bf16 logits (N, V): kinlm's chunked float32 cross-entropy (``token_nll``)
    against ``F.cross_entropy(logits.float())``, forward + backward: ms and the peak memory beyond the
    logits and their gradient; and the gradients' largest difference (0: bit for bit)."""
    import torch
    import torch.nn.functional as F

    from kinlm_core.objectives import token_nll

    rows, vocab = (64, 512) if SMOKE else (args.batch * 1024, VOCAB)
    torch.manual_seed(0)
    logits = torch.randn(rows, vocab, device=DEV, dtype=torch.bfloat16).requires_grad_()
    labels = torch.randint(0, vocab, (rows,), device=DEV)
    paths = {"F.cross_entropy(logits.float())": lambda: F.cross_entropy(logits.float(), labels, reduction="sum"),
             "token_nll (chunked)": lambda: token_nll(logits, labels)}
    out, grads = [], {}
    for name, fn in paths.items():
        times = []
        for i in range(args.warmup + 3):
            sync()
            if DEV == "cuda":
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 2**30 if DEV == "cuda" else 0.0
            t0 = time.perf_counter()
            fn().backward()
            sync()
            times.append(time.perf_counter() - t0)
            grads[name] = logits.grad
            logits.grad = None
        out.append(f"| {name} | {1000 * min(times[args.warmup:]):.1f} | {peak_mem_gb() - base - rows * vocab * 2 / 2**30:.2f} |")
    a, b = grads.values()
    return ["## The loss on bf16 logits: chunked against float32 logits", "",
            f"Logits {rows:,} x {vocab:,} in bf16 ({rows * vocab * 2 / 2**30:.2f} GiB: batch {args.batch} x 1024 at "
            f"GPT-2's vocabulary), forward + backward, best of 3 after {args.warmup}; gradients' largest difference "
            f"{(a.float() - b.float()).abs().max().item():.3g} (0: bit for bit).", "",
            "| loss | ms | peak GiB beyond the logits' gradient |", "|---|---|---|", *out]


def section_data(args, state) -> list[str]:
    """``kinlm data prepare`` on this machine's cores: one worker against every core, tokens/s against
    the GPU's consumption measured above (the issue's target: 16 workers at 10x or more)."""
    import gzip

    workers = 2 if SMOKE else min(os.cpu_count() or 1, 16)
    text = "\n\n".join(gzip.open(ROOT / "kinlm_core" / "data" / "corpora" / f, "rt", encoding="utf-8").read()
                        for f in ("input.txt.gz", "valid.txt.gz", "wiki.test.raw.gz"))
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(text[:300_000] if SMOKE else "\n\n".join([text] * 9), encoding="utf-8")  # ~2 chunks a worker
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({
            "name": "gpu-check-data", "data": {"type": "text_files", "train": [str(corpus)]},
            "tokenizer": {"type": "bpe", "vocab_size": 4096}, "model": {"type": "gpt"}, "train": {"block_size": 64}}))

        def prepare(n: int, *extra: str) -> dict:
            cmd = [sys.executable, "-m", "kinlm_core.cli", "data", "prepare", str(spec), "--workers", str(n), *extra]
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env={**os.environ, "KINLM_CACHE": tmp})
            if r.returncode != 0:
                raise RuntimeError(f"kinlm data prepare exited {r.returncode}: {r.stderr.strip().splitlines()[-1:]}")
            return json.loads(r.stdout.strip().splitlines()[-1])

        prepare(workers, "--split", "validation")  # trains the BPE tokenizer once (cached for the next two)
        one = prepare(1, "--split", "train", "--set", "train.block_size=128")
        many = prepare(workers, "--split", "train", "--set", "train.block_size=256")
    rows = [f"| {r['workers']} | {r['tokens']['train']:,} | {r['seconds']:.1f} | {fmt(r['tokens_per_s'])} | "
            f"{fmt(r['tokens_per_s'] / r['workers'])} |" for r in (one, many)]
    uses = [(label, state[key]["tokens_per_s"]) for key, label in
            (("gpt_compiled", "gpt 124M compiled"), ("hamiltonian", "hamiltonian paper")) if key in state]
    against = "; ".join(f"{many['tokens_per_s'] / tps:.1f}x {label}'s {fmt(tps)} tok/s" for label, tps in uses)
    return ["## Data preparation: `kinlm data prepare --workers N`", "",
            f"The three bundled corpora {'(300k characters)' if SMOKE else 'nine times over'} as one text file "
            f"(chunks of about 1M characters: about two per worker at 16), "
            f"BPE tokenizer of 4,096 (trained first, untimed), the train split; {workers} workers = this "
            f"machine's cores (at most 16).", "",
            "| workers | tokens | seconds | tokens/s | per worker |", "|---|---|---|---|---|", *rows, "",
            f"{workers} workers make {fmt(many['tokens_per_s'])} tokens/s, {many['tokens_per_s'] / max(one['tokens_per_s'], 1):.1f}x "
            f"one worker; against the training consumption measured above: {against or 'n/a (gpt and hamiltonian skipped)'}. "
            "Target (issue 34): 16 workers at 10x the GPU's consumption or more."]


SECTIONS = {"run": section_kinlm_run, "amp": section_amp, "gpt": section_gpt, "checkpoint": section_checkpoint,
            "loss": section_loss, "hamiltonian": section_hamiltonian,
            "recurrent": section_recurrent, "generation": section_generation, "blimp": section_blimp,
            "data": section_data, "ddp": section_ddp}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="gpu_check.md", help="the markdown report (default ./gpu_check.md)")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    ap.add_argument("--batch", type=int, default=16, help="sequences of 1024 tokens per step for the 124M gpt")
    ap.add_argument("--gen-tokens", type=int, default=256, help="generated tokens per call")
    ap.add_argument("--blimp-pairs", type=int, default=100, help="pairs per BLiMP paradigm")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak dense bf16 TFLOP/s (MFU)")
    ap.add_argument("--skip", default="", help=f"comma-separated sections to leave out: {','.join(SECTIONS)}")
    ap.add_argument("--smoke", action="store_true",
                    help="run every section on the CPU with tiny shapes: checks the code, measures nothing")
    ap.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args.ddp_worker, args.batch, args.steps, args.warmup)
        return 0
    import torch

    global DEV, SMOKE
    if args.smoke:
        DEV, SMOKE = "cpu", True
        args.steps, args.warmup = 2, 1
    elif not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, torch.cuda.is_available() is False); "
              f"nothing measured. Run it on a machine with an NVIDIA GPU.")
        return 0
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(SECTIONS)
    if SMOKE:  # CUDA-only (NCCL) or covered by the test suite on the CPU
        skip |= {"ddp", "run", "amp"}
    if unknown:
        print(f"gpu_check: --skip {','.join(sorted(unknown))}: unknown section; sections: {', '.join(SECTIONS)}",
              file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0) if DEV == "cuda" else "CPU (--smoke: tiny shapes, not a measurement)"
    head = [f"# kinlm GPU check, {dt.date.today().isoformat()}", "",
            f"Device: {torch.cuda.device_count() if DEV == 'cuda' else 1} x {name}; torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}; "
            f"`python tools/gpu_check.py {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip(), ""]
    body: list[str] = []
    state: dict = {}
    for key, fn in SECTIONS.items():
        if key in skip:
            continue
        t = time.perf_counter()
        print(f"gpu_check: {key} ...", flush=True)
        try:
            lines = fn(args, state) if key != "run" else fn(args)
        except Exception as e:  # noqa: BLE001 - one failing section must not lose the others
            lines = [f"## {key}: failed", "", f"`{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}`"]
            traceback.print_exc()
        body += [*lines, "", f"<sub>{key}: {time.perf_counter() - t:.0f} s</sub>", ""]
        Path(args.out).write_text("\n".join(head + body) + "\n")  # a partial report survives a crash
    print(f"gpu_check: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
