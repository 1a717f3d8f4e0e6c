"""The run engine: what `kinlm run` does once a spec is valid.

Flow: prepare data (tokenize once, cached) -> build model -> AdamW + warmup/cosine -> loop
(grad accumulation, clipping, regularizers, curriculum phases) -> eval every `eval.every`
steps (loss, perplexity, bits per byte) -> samples and analyzers -> atomic checkpoints ->
final export. SIGTERM/SIGINT save a checkpoint and exit cleanly; `resume=True` continues from
the last good checkpoint with the same data order and RNG state.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..api import Phase, RunContext
from ..plugins import get_manager
from ..spec import RESUMABLE_FIELDS, diff_keys, dump
from . import checkpoint as ckpt
from .logger import RunLogger


class RunError(Exception):
    """A run cannot start or go on (message is one line for the user)."""


def cache_dir() -> Path:
    return Path(os.environ.get("KINLM_CACHE", Path.home() / ".cache" / "kinlm"))


# --- setup helpers -------------------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def distributed_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment, or (0, 0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices only; never on norms, biases or embeddings."""
    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    extra = set(model.no_decay_param_names()) if hasattr(model, "no_decay_param_names") else set()
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.dim() < 2 or id(p) in emb or name in extra else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, tc) -> float:
    """Learning rate at 0-based optimizer step: linear warmup, then cosine/linear/constant."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if tc.schedule == "constant":
        return tc.lr
    span = max(1, tc.max_steps - tc.warmup_steps)
    frac = min(1.0, (step - tc.warmup_steps) / span)
    floor = tc.lr * tc.min_lr_ratio
    if tc.schedule == "linear":
        return floor + (tc.lr - floor) * (1 - frac)
    return floor + 0.5 * (tc.lr - floor) * (1 + math.cos(math.pi * frac))


def phase_at(phases: list[Phase], step: int) -> Phase:
    start = 0
    for ph in phases:
        if ph.steps is None or step < start + ph.steps:
            return ph
        start += ph.steps
    return phases[-1]


def env_info(device) -> dict:
    import importlib.metadata as md

    def ver(d):
        try:
            return md.version(d)
        except md.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except Exception:  # noqa: BLE001
        commit = None
    return {
        "kinlm": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": ver("transformers"), "platform": platform.platform(), "device": str(device),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "git_commit": commit,
        "plugins": {p.name: p.version for p in get_manager().plugins() if p.error is None},
        "argv": sys.argv,
    }


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bind_tokenizer(model, tokenizer) -> None:
    """Models that need tokenizer facts (e.g. the end-of-text id) define bind_tokenizer(tok)."""
    if hasattr(model, "bind_tokenizer"):
        model.bind_tokenizer(tokenizer)


# --- evaluation ------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, blocks: np.ndarray, batch_size: int, max_batches: int | None, device, bytes_per_token: float,
             autocast=nullcontext) -> dict:
    """Mean next-token loss over the first batches of a split; ppl and bits per byte from it."""
    was_training = model.training
    model.eval()
    n = len(blocks) if max_batches is None else min(len(blocks), max_batches * batch_size)
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        rows = torch.from_numpy(blocks[i:min(i + batch_size, n)].astype(np.int64)).to(device)
        x, y = rows[:, :-1], rows[:, 1:]
        with autocast():
            out = model(x)
        loss = out.loss if out.loss is not None else F.cross_entropy(
            out.logits.float().reshape(-1, out.logits.size(-1)), y.reshape(-1), reduction="sum")
        total += float(loss) if out.loss is None else float(loss) * y.numel()
        count += y.numel()
    model.train(was_training)
    mean = total / max(count, 1)
    return {"loss": mean, "ppl": math.exp(min(mean, 50.0)), "bpb": mean / (math.log(2) * bytes_per_token),
            "tokens": count}


# --- the run ---------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, spec, run_dir: Path, resume: bool = False, progress: bool | None = None, log=print):
        self.spec, self.run_dir, self.resume = spec, Path(run_dir), resume
        self.echo = log
        self.rank, self.local_rank, self.world = distributed_env()
        self.is_main = self.rank == 0
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.stop_signal: str | None = None

    # ---- setup ----
    def setup(self) -> None:
        spec, tc = self.spec, self.spec.train
        self._check_run_dir()
        spec.data.check_available()
        self.device = pick_device(tc.device)
        if self.world > 1:
            import torch.distributed as dist

            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend)
        torch.manual_seed(spec.seed + self.rank)
        from ..data import BlockSampler, prepare_data

        if self.world > 1 and not self.is_main:
            torch.distributed.barrier()  # rank 0 tokenizes and fills the cache first
        self.data = prepare_data(spec.data, spec.tokenizer, tc.block_size, cache_dir() / "data",
                                 log=self.echo if self.is_main else (lambda *a, **k: None))
        if self.world > 1 and self.is_main:
            torch.distributed.barrier()
        self.tokenizer = self.data.tokenizer
        self.train_blocks = self.data.blocks("train")
        self.eval_blocks = self.data.blocks(spec.eval.split)
        torch.manual_seed(spec.seed)  # identical initial weights on every rank
        self.model = spec.model.build(self.tokenizer.vocab_size).to(self.device)
        bind_tokenizer(self.model, self.tokenizer)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.regs = [(r, r.build()) for r in spec.regularizers]
        self.reg_names = [r.type for r in spec.regularizers]
        self.need_hidden = any(r.needs_hidden_states for r in spec.regularizers)
        self.phases = spec.curriculum.schedule(tc.max_steps) if spec.curriculum else [Phase("main")]
        self.opt = torch.optim.AdamW(param_groups(self.model, tc.weight_decay), lr=tc.lr, betas=tuple(tc.betas),
                                     fused=self.device.type == "cuda")
        self.sampler = BlockSampler(len(self.train_blocks), tc.batch_size, spec.seed, self.rank, self.world)
        use_bf16 = tc.precision == "bf16" or (tc.precision == "auto" and self.device.type == "cuda")
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
        self.step = 0
        purge = None
        if self.resume:
            last = ckpt.latest(self.run_dir / "checkpoints")
            if last is None:
                raise RunError(f"{self.run_dir}: no checkpoint to resume from")
            state = ckpt.load(last, self.model, map_location=self.device)
            self.opt.load_state_dict(state["optimizer"])
            self.sampler.load_state_dict(state["sampler"])
            torch.set_rng_state(state["rng_cpu"])
            if self.device.type == "cuda" and "rng_cuda" in state:
                torch.cuda.set_rng_state(state["rng_cuda"], self.device)
            self.step = int(state["step"])
            purge = self.step + 1
            self.echo(f"resuming {self.run_dir} from {last.name}")
        self.train_model = self.model
        if tc.compile:
            self.train_model = torch.compile(self.model)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(self.train_model, device_ids=[self.local_rank] if self.device.type == "cuda" else None)
        self.logger = None
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "spec.json").write_text(json.dumps(dump(self.spec), indent=2) + "\n")
            (self.run_dir / "env.json").write_text(json.dumps(env_info(self.device), indent=2) + "\n")
            self.logger = RunLogger(self.run_dir, purge_step=purge)
        self.ctx = RunContext(spec=self.spec, run_dir=self.run_dir, model=self.model, tokenizer=self.tokenizer,
                              log=self.log, is_main=self.is_main)

    def _check_run_dir(self) -> None:
        rd = self.run_dir
        if self.resume:
            saved = rd / "spec.json"
            if not saved.exists():
                raise RunError(f"{rd}: not a run directory (no spec.json)")
            old = json.loads(saved.read_text())
            diffs = [k for k in diff_keys(old, dump(self.spec))
                     if not any(k == f or k.startswith(f + ".") or k.startswith(f + "[") for f in RESUMABLE_FIELDS)]
            if diffs:
                raise RunError(f"{rd}: the spec differs from the run's saved spec in: {', '.join(diffs)}; "
                               f"only {', '.join(RESUMABLE_FIELDS)} may change on resume")
        elif rd.exists() and any(rd.iterdir()):
            raise RunError(f"{rd}: run directory exists and is not empty; use --resume {rd} or another --run-dir")

    def log(self, metrics: dict, step: int) -> None:
        if self.logger is not None:
            self.logger.log(metrics, step)

    # ---- one optimizer step ----
    def train_step(self, phase: Phase) -> dict:
        tc, model = self.spec.train, self.train_model
        lr = lr_at(self.step, tc)
        for g in self.opt.param_groups:
            g["lr"] = lr
        parts: dict[str, float] = {}
        total_loss = 0.0
        for micro in range(tc.grad_accum):
            idx = self.sampler.next_indices()
            rows = torch.from_numpy(self.train_blocks[np.sort(idx)].astype(np.int64)).to(self.device, non_blocking=True)
            x, y = rows[:, :-1], rows[:, 1:]
            sync = nullcontext()
            if self.world > 1 and micro < tc.grad_accum - 1:
                sync = model.no_sync()
            with sync:
                with self.autocast():
                    out = model(x, output_hidden_states=True) if self.need_hidden else model(x)
                    token_loss = out.loss if out.loss is not None else F.cross_entropy(
                        out.logits.float().view(-1, out.logits.size(-1)), y.reshape(-1))
                    loss = phase.token_loss * token_loss
                    terms = {"train/token_loss": token_loss}
                    for name, t in out.aux_losses.items():
                        loss = loss + t
                        terms[f"aux/{name}"] = t
                    for cfg, fn in self.regs:
                        if phase.regularizers is not None and cfg.type not in phase.regularizers:
                            continue
                        for name, t in fn(out, {"input_ids": x, "labels": y}, self.step).items():
                            loss = loss + cfg.weight * t
                            terms[f"reg/{name}"] = t
                (loss / tc.grad_accum).backward()
            total_loss += loss.item() / tc.grad_accum
            for k, v in terms.items():
                parts[k] = parts.get(k, 0.0) + float(v.detach()) / tc.grad_accum
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return {"train/loss": total_loss, "train/lr": lr, "train/grad_norm": float(gnorm), **parts}

    def _apply_phase(self, phase: Phase) -> None:
        for name, p in self.model.named_parameters():
            p.requires_grad_(phase.trainable is None or any(name.startswith(t) for t in phase.trainable))

    # ---- checkpoints, eval, samples ----
    def save_checkpoint(self) -> None:
        if not self.is_main:
            return
        state = {"step": self.step, "optimizer": self.opt.state_dict(), "sampler": self.sampler.state_dict(),
                 "rng_cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        path = ckpt.save(self.run_dir / "checkpoints", self.step, self.model, state)
        get_manager().hook.kinlm_checkpoint(run=self.ctx, step=self.step, path=path)

    def run_eval(self) -> dict:
        r = evaluate(self.model, self.eval_blocks, self.spec.train.batch_size, self.spec.eval.batches, self.device,
                     self.data.bytes_per_token[self.spec.eval.split], self.autocast)
        m = {"eval/loss": r["loss"], "eval/ppl": r["ppl"], "eval/bpb": r["bpb"]}
        if self.is_main:
            self.log(m, self.step)
            self.write_samples()
            self.run_analyzers("eval")
            get_manager().hook.kinlm_eval(run=self.ctx, step=self.step, metrics=m)
        return m

    def write_samples(self) -> None:
        if not self.spec.generate:
            return
        was = self.model.training
        self.model.eval()
        lines = [f"## step {self.step}\n"]
        for i, g in enumerate(self.spec.generate):
            if g.seed is None:
                g = g.model_copy(update={"seed": self.spec.seed})
            text = g.generate(self.model, self.tokenizer)
            lines.append(f"**{g.type}** `{g.prompt}` ->\n\n```\n{g.prompt}{text}\n```\n")
            self.logger.text(f"samples/{i}_{g.type}", f"`{g.prompt}`{text}", self.step)
        self.model.train(was)
        with open(self.run_dir / "samples.md", "a") as fh:
            fh.write("\n".join(lines) + "\n")

    def run_analyzers(self, when: str) -> None:
        for a in self.spec.analyzers:
            if when not in a.at:
                continue
            out = self.run_dir / "analysis" / a.type / f"step_{self.step:07d}"
            out.mkdir(parents=True, exist_ok=True)
            texts = [self.tokenizer.decode(row[:-1].tolist()) for row in self.eval_blocks[:8]]
            was = self.model.training
            self.model.eval()
            metrics = a.analyze(self.model, self.tokenizer, texts, out)
            self.model.train(was)
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            self.log({f"analysis/{a.type}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, self.step)
            for png in sorted(out.glob("*.png")):
                self.logger.image(f"analysis/{a.type}/{png.stem}", png, self.step)

    def export(self) -> None:
        from transformers import PreTrainedModel

        out = self.run_dir / "final"
        if isinstance(self.model, PreTrainedModel):
            self.model.save_pretrained(out)
        else:
            from safetensors.torch import save_model

            out.mkdir(parents=True, exist_ok=True)
            save_model(self.model, str(out / "model.safetensors"))
        (out / "spec.json").write_text(json.dumps(dump(self.spec), indent=2) + "\n")

    # ---- the loop ----
    def _on_signal(self, signum, frame):
        self.stop_signal = signal.Signals(signum).name

    def run(self) -> dict:
        self.setup()
        tc, hook = self.spec.train, get_manager().hook
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        status, last_eval, final = "finished", {}, {}
        try:
            if self.is_main:
                self.echo(f"{self.spec.name}: {self.n_params / 1e6:.2f}M parameters, vocab {self.tokenizer.vocab_size}, "
                          f"{len(self.train_blocks)} train blocks of {tc.block_size}, device {self.device}"
                          + (f", {self.world} ranks" if self.world > 1 else ""))
                hook.kinlm_run_start(run=self.ctx)
                if self.step == 0:
                    self.run_analyzers("start")
            bar = None
            if self.progress and self.is_main:
                from tqdm import tqdm

                bar = tqdm(total=tc.max_steps, initial=self.step, desc=self.spec.name, dynamic_ncols=True)
            tokens_per_step = tc.batch_size * tc.block_size * tc.grad_accum * self.world
            current_phase = None
            self.model.train()
            t0, steps0 = time.perf_counter(), self.step
            while self.step < tc.max_steps:
                phase = phase_at(self.phases, self.step)
                if phase is not current_phase:
                    self._apply_phase(phase)
                    current_phase = phase
                    if self.is_main and len(self.phases) > 1:
                        self.echo(f"step {self.step}: phase '{phase.name}'")
                m = self.train_step(phase)
                if not math.isfinite(m["train/loss"]):
                    status = "stopped: non-finite loss"
                    raise RunError(f"step {self.step}: loss is {m['train/loss']}; stopped. The last good checkpoint "
                                   f"is kept in {self.run_dir / 'checkpoints'} (try a lower train.lr)")
                if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                    dt = time.perf_counter() - t0
                    m["perf/tokens_per_s"] = tokens_per_step * (self.step - steps0) / max(dt, 1e-9)
                    m["perf/peak_mem_mb"] = peak_memory_mb(self.device)
                    m["train/phase"] = self.phases.index(phase)
                    t0, steps0 = time.perf_counter(), self.step
                    if self.is_main:
                        self.log(m, self.step)
                        if bar is None:
                            self.echo(f"step {self.step}/{tc.max_steps} loss {m['train/loss']:.4f} lr {m['train/lr']:.2e} "
                                      f"{m['perf/tokens_per_s']:.0f} tok/s")
                if self.is_main:
                    hook.kinlm_step_end(run=self.ctx, step=self.step, metrics=m)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{m['train/loss']:.3f}")
                if self.step % self.spec.eval.every == 0 or self.step == tc.max_steps:
                    last_eval = self.run_eval()
                    if self.is_main:
                        msg = f"step {self.step}: eval loss {last_eval['eval/loss']:.4f} ppl {last_eval['eval/ppl']:.2f} bpb {last_eval['eval/bpb']:.3f}"
                        bar.write(msg) if bar is not None else self.echo(msg)
                if self.step % tc.checkpoint_every == 0 or self.step == tc.max_steps:
                    self.save_checkpoint()
                if self.stop_signal:
                    self.save_checkpoint()
                    status = f"preempted ({self.stop_signal}) at step {self.step}"
                    if self.is_main:
                        self.echo(f"{self.stop_signal}: checkpoint saved at step {self.step}; "
                                  f"continue with: kinlm run {self.run_dir / 'spec.json'} --resume {self.run_dir}")
                    break
            if bar is not None:
                bar.close()
            if status == "finished" and self.is_main:
                self.run_analyzers("end")
                self.export()
            final = {**last_eval, "status": status, "step": self.step, "params": self.n_params}
            return final
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if self.is_main and self.logger is not None:
                if not final:
                    final = {**last_eval, "status": status, "step": self.step}
                hook.kinlm_run_end(run=self.ctx, metrics=final)
                hp = {"name": self.spec.name, "model": self.spec.model.type, "seed": self.spec.seed,
                      "lr": tc.lr, "batch_size": tc.batch_size, "block_size": tc.block_size, "max_steps": tc.max_steps}
                nums = {f"hparam/{k.split('/')[-1]}": v for k, v in last_eval.items() if isinstance(v, float)}
                if nums:
                    self.logger.hparams(hp, nums)
                (self.run_dir / "result.json").write_text(json.dumps(final, indent=2) + "\n")
                self.logger.close()
            if self.world > 1:
                import torch.distributed as dist

                dist.destroy_process_group()


def run(spec, run_dir: Path, resume: bool = False, progress: bool | None = None, log=print) -> dict:
    return Trainer(spec, run_dir, resume=resume, progress=progress, log=log).run()
