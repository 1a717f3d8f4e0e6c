"""The run loop: what `kinlm run` does once a spec is valid. Read top to bottom:

    setup    run-dir check -> data (tokenized once, cached) -> tokenizer extended by the objectives
             -> model, objectives, regularizers -> phases -> resume from the last checkpoint
    run      for each step: the phase's step (the standard one, or the phase's own step function)
             -> log -> phase end? -> eval (+ early stopping, + best/ with train.keep_best) -> checkpoint
             -> signals
    end      analyzers, final export, result.json

Each concern lives in its own module: optim.py (optimizer and lr schedule per phase), phases.py (a
phase at run time), evaluate.py, outputs.py (samples, analyzers), checkpoint.py, logger.py,
runtime.py (device, ranks, environment). SIGTERM/SIGINT save a checkpoint and stop (an evaluation,
analyzer or export at once; resume does it again); ``resume=True`` continues from the newest intact
checkpoint with the same phase, data cursors, phase state and RNG. A checkpoint that cannot be written
(full disk) or a non-finite loss stops the run with :class:`RunStopped` (exit 3). train.precision
"fp16" scales the loss with a GradScaler (its state in checkpoints); train.batch_size "auto" picks the
micro-batch (batchsize.py) and backs off once on an out-of-memory error.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from ..api import ANALYZER_TEXTS, Phase, RunContext, StepContext
from ..errors import RunStopped
from ..plugins import get_manager
from ..data import BlockSampler
from ..spec import BEST_METRICS, RESUMABLE_FIELDS, diff_keys, dump
from . import checkpoint as ckpt
from .checkpoint import atomic_write_text
from .contract import watch_first_output
from .evaluate import evaluate, to_device
from .logger import RunLogger
from .optim import OptimSettings, build_optimizer, lr_at
from .outputs import run_analyzers, write_result, write_samples
from .perf import Throughput, device_peak, flops_per_token
from .phases import PhaseRun
from . import batchsize
from .runtime import (AUTOCAST_DTYPES, RunError, all_reduce_mean, bind_tokenizer, cache_dir,  # noqa: F401
                      compile_model, distributed_env, env_info, peak_memory_mb, pick_device, resolve_precision,
                      _rng_states, _set_rng_states)
from .stepstats import NonFiniteWatch, to_host

LOCK_FILE = ".lock"  # the CLI's run-directory lock; never counts as content
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class _Preempted(BaseException):
    """Raised by the SIGTERM/SIGINT handler inside an evaluation or an analyzer, so the run stops at once
    (a BaseException, so that no ``except Exception`` in a plugin swallows it)."""


def run_tokenizer(spec, tokenizer, phases: list[Phase]):
    """The tokenizer the model is built with: the data's, extended by the spec's objective and by every
    phase's (e.g. sentinel ids for span corruption)."""
    tokenizer = spec.objective.extend_tokenizer(tokenizer)
    for ph in phases:
        if ph.objective is not None:
            tokenizer = ph.objective.extend_tokenizer(tokenizer)
    return tokenizer


def schedule(spec, total_steps: int | None = None) -> list[Phase]:
    """The run's phases; a curriculum lays them out over ``total_steps`` (default train.max_steps)."""
    total = spec.train.max_steps if total_steps is None else total_steps
    return spec.curriculum.schedule(total) if spec.curriculum else [Phase("main")]


def _stateful(obj) -> bool:
    return hasattr(obj, "train_state") and hasattr(obj, "load_train_state")


class Trainer:
    def __init__(self, spec, run_dir: Path, resume: bool = False, progress: bool | None = None, log=None,
                 extend: bool = False, strict_checkpoint: bool = False):
        self.spec, self.run_dir, self.resume, self.extend = spec, Path(run_dir), resume, extend
        self.requested_spec = spec  # as written (spec.json); self.spec gets batch_size "auto" resolved
        self.strict_checkpoint = strict_checkpoint  # a damaged newest checkpoint is refused, not skipped
        self.echo = log if log is not None else logging.getLogger("kinlm.run").info
        self.rank, self.local_rank, self.world = distributed_env()
        self.is_main = self.rank == 0
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.stop_signal: str | None = None
        self._interruptible_now = False  # inside an evaluation or analyzer: a signal raises _Preempted
        self.saver = self.nonfinite = None  # start(): the async checkpoint writer, the non-finite loss watch

    # ---- setup ----------------------------------------------------------------------------------
    def setup(self) -> None:
        spec, tc = self.spec, self.spec.train
        self._check_run_dir()
        spec.data.check_available()
        self.device = pick_device(tc.device)
        if self.world > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        torch.manual_seed(spec.seed + self.rank)
        self._prepare_data()
        state, last = None, None
        if self.resume:
            last = ckpt.newest_intact(self.run_dir / "checkpoints", strict=self.strict_checkpoint,
                                      warn=lambda m: self.echo(f"warning: {m}") if self.is_main else None)
            if last is None:
                raise RunError(f"{self.run_dir}: no checkpoint to resume from")
            state = ckpt.load_state(last, map_location=self.device)
        self._plan_schedule(state)
        self.phases = schedule(spec, self.schedule_steps)
        self.tokenizer = run_tokenizer(spec, self.data.tokenizer, self.phases)
        torch.manual_seed(spec.seed)  # identical initial weights on every rank
        self.model = spec.model.build(self.tokenizer.vocab_size).to(self.device)
        watch_first_output(self.model, spec.model.type, self.tokenizer.vocab_size)  # names a model that breaks it
        bind_tokenizer(self.model, self.tokenizer)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.objectives: dict[str, object] = {}
        self.eval_objective = self._objective(spec.objective)
        self.regs = [(r, r.build()) for r in spec.regularizers]
        for _, fn in self.regs:
            bind_tokenizer(fn, self.tokenizer)
        self._setup_precision()
        self._resolve_batch(state)
        spec, tc = self.spec, self.spec.train
        self.phase_runs = [PhaseRun(i, ph, spec, self.data, self._objective(ph.objective or spec.objective),
                                    self.rank, self.world) for i, ph in enumerate(self.phases)]
        self.compiled = compile_model(self.model, tc.compile, self.echo if self.is_main else (lambda *a: None))
        self.opt = None
        self.step, self.cur, self.phase_start, self.done = 0, 0, 0, False
        self.tokens_seen, self.best_eval, self.bad_evals = 0, math.inf, 0
        self.best: dict | None = None  # train.keep_best: {"metric", "step", "value"} of the best evaluation
        self.last_eval, self.eval_pending, self._saved_at = {}, False, None
        # seconds in train steps (tokens/s in result.json) and in the whole run, summed over resumes
        self.train_seconds, self.wall_seconds, self._wall0 = 0.0, 0.0, time.perf_counter()
        purge = None
        if state is not None:
            ckpt.load_weights(last, self.model, map_location=self.device)
            self._load_state(state)
            self._saved_at = self.step
            purge = self.step + 1
            self.echo(f"resuming {self.run_dir} from {last.name} (phase '{self.phase_runs[self.cur].name}')")
        self._enter_phase(self.cur)
        if state is not None:
            self.opt.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng_cpu"])
            if self.device.type == "cuda" and "rng_cuda" in state:
                torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self._rng_before_eval = torch.get_rng_state()
        self.logger = None
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "spec.json", json.dumps(dump(self.requested_spec), indent=2) + "\n")
            atomic_write_text(self.run_dir / "env.json", json.dumps({**env_info(self.device), **self._choices()},
                                                                    indent=2) + "\n")
            self.logger = RunLogger(self.run_dir, purge_step=purge,
                                    redo_eval_at=self.step if self.eval_pending else None)
        self.ctx = RunContext(spec=spec, run_dir=self.run_dir, model=self.model, tokenizer=self.tokenizer,
                              log=self.log, is_main=self.is_main)

    def _setup_precision(self) -> None:
        """Autocast and the GradScaler for train.precision (fp16: float16 autocast, the loss scaled,
        a step with inf/NaN gradients skipped and the scale halved; every other precision: a disabled
        scaler, so one code path serves all)."""
        self.precision, note = resolve_precision(self.spec.train.precision, self.device)
        if note and self.is_main:
            self.echo(note)
        dtype = AUTOCAST_DTYPES.get(self.precision)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=dtype)) if dtype else nullcontext
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.skipped_steps = 0

    def _resolve_batch(self, state: dict | None) -> None:
        """train.batch_size "auto": pick the micro-batch (see batchsize.py), or take the checkpoint's on
        resume, and make ``self.spec`` a copy with batch_size and grad_accum filled in."""
        tc = self.spec.train
        self.batch_record: dict | None = None
        if tc.batch_size != "auto":
            return
        target = tc.batch_size_target
        how = "checkpoint"
        micro = int(state["micro_batch"]) if state is not None and state.get("micro_batch") else None
        if micro is None:
            micro, how = self._probe_batch(target)
            if self.world > 1:  # every rank accumulates alike: the smallest rank's choice
                t = torch.tensor([micro], device=self.device)
                torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
                micro = int(t.item())
        self.batch_record = {"batch_size": "auto", "batch_size_target": target, "chosen_by": how, "backed_off": []}
        self._set_micro(micro)
        if self.is_main:
            self.echo(f"train.batch_size auto: micro-batch {micro} x grad_accum {target // micro} = {target} sequences "
                      f"per step ({how})")

    def _set_micro(self, micro: int) -> None:
        target = self.spec.train.batch_size_target
        self.micro = micro
        self.batch_record.update(micro_batch=micro, grad_accum=target // micro)
        tc = self.spec.train.model_copy(update={"batch_size": micro, "grad_accum": target // micro})
        self.spec = self.spec.model_copy(update={"train": tc})

    def _probe_batch(self, target: int) -> tuple[int, str]:
        """(micro-batch, how it was chosen): candidates tried largest first; on CPU only those an
        estimate of the memory they need allows (a CPU out-of-memory kills the process)."""
        objective = self._objective(self.phases[0].objective or self.spec.objective)
        unit = (self.phases[0].objective or self.spec.objective).unit()
        n = len(self.data.examples("train", unit))

        def batch_of(m: int) -> dict:
            idx = np.arange(m) % n
            return to_device(objective.collate(self.data.batch_examples("train", unit, idx),
                                               np.random.default_rng(0)), self.device)

        def trial(m: int) -> bool:
            rng = _rng_states()
            try:
                with self.autocast():
                    loss, _ = self._micro_loss(objective, self.model, batch_of(m), False, [])
                loss.backward()
                return True
            except torch.OutOfMemoryError:
                return False
            finally:
                self.model.zero_grad(set_to_none=True)
                _set_rng_states(rng)  # the probes draw no random numbers the run would have drawn
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

        fits = None
        if self.device.type == "cpu":
            rng = torch.get_rng_state()
            with self.autocast():
                per_seq = batchsize.saved_bytes(lambda: self._micro_loss(objective, self.model, batch_of(1), False, [])[0])
            torch.set_rng_state(rng)
            weights = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
            avail = batchsize.available_memory()
            budget = None if avail is None else avail * batchsize.CPU_MEMORY_SHARE
            if budget is not None:
                fits = lambda m: batchsize.cpu_estimate(per_seq, weights, m) <= budget  # noqa: E731
        try:
            micro = batchsize.choose(target, trial, fits)
        except torch.OutOfMemoryError as e:
            raise RunError(str(e)) from None
        return micro, ("tried on the device" if fits is None else "estimated against the available memory, then tried")

    def _choices(self) -> dict:
        """What env.json and result.json record about the run's precision and batch."""
        batch = getattr(self, "batch_record", None)
        return {"precision": {"requested": self.requested_spec.train.precision, "used": self.precision},
                **({"batch": batch} if batch else {})}

    def _prepare_data(self) -> None:
        from ..data import prepare_data

        if self.world > 1 and not self.is_main:
            torch.distributed.barrier()  # rank 0 tokenizes and fills the cache first
        self.data = prepare_data(self.spec.data, self.spec.tokenizer, self.spec.train.block_size, cache_dir() / "data",
                                 log=self.echo if self.is_main else (lambda *a, **k: None))
        if self.world > 1 and self.is_main:
            torch.distributed.barrier()

    def _objective(self, cfg):
        """One runtime objective per distinct config, built with the run's tokenizer, bound to the data."""
        key = cfg.model_dump_json()
        if key not in self.objectives:
            obj = cfg.build(self.tokenizer)
            if hasattr(obj, "bind_data"):
                obj.bind_data(self.data)
            self.objectives[key] = obj
        return self.objectives[key]

    def _check_run_dir(self) -> None:
        rd = self.run_dir
        if self.resume:
            saved = rd / "spec.json"
            if not saved.exists():
                raise RunError(f"{rd}: not a run directory (no spec.json)")
            old = json.loads(saved.read_text())
            self._saved_max_steps = int(old.get("train", {}).get("max_steps", self.spec.train.max_steps))
            diffs = [k for k in diff_keys(old, dump(self.spec))
                     if not any(k == f or k.startswith(f + ".") or k.startswith(f + "[") for f in RESUMABLE_FIELDS)]
            if diffs:
                raise RunError(f"{rd}: the spec differs from the run's saved spec in: {', '.join(diffs)}; "
                               f"only {', '.join(RESUMABLE_FIELDS)} may change on resume")
        elif rd.exists() and any(p.name != LOCK_FILE for p in rd.iterdir()):
            raise RunError(f"{rd}: run directory exists and is not empty; use --resume {rd} or another --run-dir")

    def _plan_schedule(self, state: dict | None) -> None:
        """The learning-rate schedule's length (``schedule_steps``). A new run's is train.max_steps. On
        resume it is the run's own: a changed train.max_steps is refused unless ``extend`` asks for
        it, and then the schedule is not stretched: the added steps run at its final learning rate."""
        tc = self.spec.train
        self.schedule_steps, self.extended_from = tc.max_steps, []
        if state is None:
            return
        saved = self._saved_max_steps
        self.schedule_steps = int(state.get("schedule_steps", saved))
        self.extended_from = list(state.get("extended_from", []))
        if tc.max_steps == saved:
            return
        step = int(state["step"])
        if not self.extend:
            final_lr = lr_at(self.schedule_steps, OptimSettings.of(tc, None), self.schedule_steps)
            raise RunError(f"{self.run_dir}: train.max_steps changed from {saved} to {tc.max_steps}; --resume continues "
                           f"a stopped run as it was specified. To train on to step {tc.max_steps}, add --extend "
                           f"(the {tc.schedule} schedule keeps its {self.schedule_steps} steps and the steps past it "
                           f"run at its final learning rate, {final_lr:.2e}); for one {tc.max_steps}-step schedule, "
                           f"start a new run")
        if tc.max_steps <= step:
            raise RunError(f"{self.run_dir}: --extend: train.max_steps {tc.max_steps} is not past the checkpoint's "
                           f"step {step}")
        self.extended_from.append(saved)
        if self.is_main:
            self.echo(f"extending {self.run_dir}: {saved} -> {tc.max_steps} steps; the learning-rate schedule keeps its "
                      f"{self.schedule_steps} steps (steps past it run at its final rate)")

    def _schedule_record(self) -> dict:
        """What result.json and checkpoints say about the schedule (compare never pools other histories)."""
        return {"schedule_steps": self.schedule_steps, **({"extended_from": self.extended_from}
                                                          if self.extended_from else {})}

    def log(self, metrics: dict, step: int) -> None:
        if self.logger is not None:
            self.logger.log(metrics, step)

    # ---- phases -----------------------------------------------------------------------------------
    def _enter_phase(self, i: int) -> None:
        """Make phase i current: its trainable parameters, its optimizer (a fresh AdamW unless the
        phase trains the same parameters with the same settings as the one before), and (under
        torchrun) a DDP wrapper built after requires_grad is set, so DDP reduces exactly those."""
        prev = self.phase_runs[self.cur] if getattr(self, "opt", None) is not None else None
        self.cur = i
        pr = self.phase_runs[i]
        trainable = pr.phase.trainable
        for name, p in self.model.named_parameters():
            p.requires_grad_(trainable is None or any(name.startswith(t) for t in trainable))
        keep = (prev is not None and prev.phase.trainable == trainable and prev.optim == pr.optim
                and not pr.optim.own_schedule)
        if not keep:  # same parameters, same settings: the optimizer (and Adam's moments) carries on
            try:
                self.opt = build_optimizer(self.model, pr.optim, self.device)
            except ValueError as e:
                raise RunError(f"phase '{pr.name}': {e}") from None
        self.train_model = self.compiled
        if self.world > 1 and pr.phase.step is None:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(self.compiled, device_ids=[self.local_rank] if self.device.type == "cuda" else None)
        if self.is_main and len(self.phase_runs) > 1:
            self.echo(f"step {self.step}: phase '{pr.name}'")

    def _end_phase(self) -> None:
        pr = self.phase_runs[self.cur]
        pr.state["ended_at_step"] = self.step
        if self.cur + 1 >= len(self.phase_runs):
            self.done = True
            return
        self.phase_start = self.step
        self._enter_phase(self.cur + 1)

    def _phase_ended(self, pr: PhaseRun, metrics: dict) -> bool:
        ended = pr.ended(self.step - self.phase_start, metrics)
        if self.world > 1 and pr.phase.until is not None:  # every rank follows rank 0's decision
            flag = torch.tensor([float(ended)], device=self.device)
            torch.distributed.broadcast(flag, 0)
            ended = bool(flag.item())
        return ended

    # ---- one optimizer step ---------------------------------------------------------------------
    def _batch_rng(self, micro: int) -> np.random.Generator:
        return np.random.default_rng([self.spec.seed, self.step, micro, self.rank])

    def _next_batch(self, pr: PhaseRun, micro: int = 0) -> tuple[dict, int]:
        idx = pr.sampler.next_indices()
        batch = pr.objective.collate(self.data.batch_examples("train", pr.unit, idx), self._batch_rng(micro))
        mask = batch.get("attention_mask")
        tokens = int(mask.numpy().sum()) if mask is not None else batch["input_ids"].numel()  # host-side, no sync
        return to_device(batch, self.device), tokens

    def _clip_and_step(self) -> torch.Tensor:
        """Clip, step, zero the gradients; the gradient norm stays a device tensor (no host sync)."""
        tc = self.spec.train
        params = [p for g in self.opt.param_groups for p in g["params"]]
        self.scaler.unscale_(self.opt)  # (a disabled scaler does nothing)
        gnorm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip if tc.grad_clip > 0 else float("inf"))
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.step(self.opt)  # skipped when a gradient is inf/NaN
            self.scaler.update()  # ... and then the scale is halved
            if self.scaler.get_scale() < scale:
                self.skipped_steps += 1
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return gnorm.detach()

    def standard_step(self, pr: PhaseRun) -> dict:
        """grad_accum micro-batches: objective loss x token_loss + aux losses + weighted regularizers."""
        tc, model, phase = self.spec.train, self.train_model, pr.phase
        regs = [(c, fn) for c, fn in self.regs if phase.regularizers is None or c.type in phase.regularizers]
        need_hidden = any(c.needs_hidden_states for c, _ in regs)
        parts: dict = {}  # device tensors: read at the logging steps only (stepstats.py)
        total = 0.0
        for micro in range(tc.grad_accum):
            batch, n_tok = self._next_batch(pr, micro)
            self.tokens_seen += n_tok * self.world
            sync = model.no_sync() if self.world > 1 and micro < tc.grad_accum - 1 else nullcontext()
            with sync:
                with self.autocast():
                    loss, terms = self._micro_loss(pr.objective, model, batch, need_hidden, regs, phase.token_loss)
                self.scaler.scale(loss / tc.grad_accum).backward()
            total = total + loss.detach() / tc.grad_accum
            for k, v in terms.items():
                parts[k] = parts.get(k, 0.0) + (v.detach() if torch.is_tensor(v) else float(v)) / tc.grad_accum
        return {"train/loss": total, "train/grad_norm": self._clip_and_step(), **parts}

    def _micro_loss(self, objective, model, batch: dict, need_hidden: bool, regs: list,
                    token_loss: float = 1.0) -> tuple[torch.Tensor, dict]:
        """One micro-batch's loss (objective loss x token_loss + aux losses + weighted regularizers) and
        its parts to log; called inside autocast."""
        r = objective.loss(model, batch, need_hidden)
        loss = token_loss * r.loss
        terms = {"train/token_loss": r.loss}
        for name, t in r.output.aux_losses.items():
            loss = loss + t
            terms[f"aux/{name}"] = t
        for cfg, fn in regs:
            for name, t in fn(r.output, batch, self.step).items():
                if name.startswith("metrics/"):  # logged, never added to the loss
                    terms[name] = t
                    continue
                loss = loss + cfg.weight * t
                terms[f"reg/{name}"] = t
        for name, v in {**r.output.metrics, **r.metrics}.items():  # the model's, then the objective's
            terms[f"metrics/{name}"] = v
        return loss, terms

    def _step_backing_off(self, pr: PhaseRun) -> dict:
        """A standard step under batch_size "auto": an out-of-memory error in it backs off once to the
        next smaller micro-batch (more accumulation, the same sequences per step) and redoes the step
        from where it began: the data cursors, token count and RNG are rewound. A second one stops the run,
        and so does one under torchrun (the other ranks cannot follow a back-off mid-step)."""
        cursors = [p.sampler.state_dict() for p in self.phase_runs]
        tokens, rng = self.tokens_seen, torch.get_rng_state()
        try:
            return self.standard_step(pr)
        except torch.OutOfMemoryError:
            self.opt.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            target = self.spec.train.batch_size_target
            micro = batchsize.smaller(target, self.micro)
            if self.batch_record["backed_off"] or micro is None or self.world > 1:
                self.status = f"stopped: out of memory at step {self.step + 1}"
                kept = ckpt.latest(self.run_dir / "checkpoints")
                raise RunStopped(f"step {self.step + 1}: out of memory with micro-batch {self.micro}"
                                 + (" after backing off once" if self.batch_record["backed_off"] else "")
                                 + "; stopped. " + (f"The last checkpoint is kept: {kept}" if kept else
                                                    "No checkpoint was written")) from None
            if self.is_main:
                self._say(f"step {self.step + 1}: out of memory with micro-batch {self.micro}; backing off to "
                          f"{micro} x grad_accum {target // micro} and redoing the step")
            self.batch_record["backed_off"].append({"step": self.step + 1, "from": self.micro, "to": micro})
            self._set_micro(micro)
            for p, cur in zip(self.phase_runs, cursors):
                p.sampler = BlockSampler(p.n_examples, micro, p.sampler.seed, self.rank, self.world,
                                         shuffle=p.sampler.shuffle)
                p.sampler.load_state_dict({**cur, "batch_size": micro})
            self.tokens_seen = tokens
            torch.set_rng_state(rng)
            return self.standard_step(pr)

    def custom_step(self, pr: PhaseRun) -> dict:
        """The phase's own step function; gradients are averaged over ranks in optimizer_step()."""
        def optimizer_step() -> float:
            if self.world > 1:
                for g in self.opt.param_groups:
                    for p in g["params"]:
                        if p.grad is not None:
                            p.grad.copy_(all_reduce_mean(p.grad, self.world))
            return float(self._clip_and_step())

        def next_batch() -> dict:
            batch, n_tok = self._next_batch(pr)
            self.tokens_seen += n_tok * self.world
            return batch

        def count_tokens(n: int) -> None:
            self.tokens_seen += int(n)

        ctx = StepContext(model=self.compiled, raw_model=self.model, optimizer=self.opt, data=self.data,
                          objective=pr.objective, state=pr.state, step=self.step, phase_step=self.step - self.phase_start,
                          device=self.device, autocast=self.autocast, rank=self.rank, world=self.world,
                          grad_accum=self.spec.train.grad_accum, next_batch=next_batch,
                          backward=lambda loss, sync=True: self.scaler.scale(loss).backward(),
                          optimizer_step=optimizer_step,
                          all_reduce_mean=lambda t: all_reduce_mean(t, self.world), count_tokens=count_tokens)
        out = pr.phase.step(ctx) or {}
        m = {f"{pr.name}/{k}": float(v) for k, v in out.items()}
        if "loss" in out:
            m["train/loss"] = float(out["loss"])
        return m

    def train_step(self, pr: PhaseRun) -> dict:
        pos, length = pr.schedule_position(self.step, self.phase_start, self.schedule_steps)
        lr = lr_at(pos, pr.optim, length)
        for g in self.opt.param_groups:
            g["lr"] = lr
        if pr.phase.step is not None:
            m = self.custom_step(pr)
        elif self.batch_record is not None:
            m = self._step_backing_off(pr)
        else:
            m = self.standard_step(pr)
        self.step += 1
        m["train/lr"] = lr
        if self.scaler.is_enabled():
            m["train/loss_scale"], m["train/skipped_steps"] = self.scaler.get_scale(), self.skipped_steps
        return m

    # ---- state: checkpoints and resume ----------------------------------------------------------------
    def _stateful_components(self) -> dict:
        comps = {"model": self.model, **{f"objective/{k}": o for k, o in self.objectives.items()},
                 **{f"regularizer/{i}": fn for i, (_, fn) in enumerate(self.regs)}}
        return {k: v for k, v in comps.items() if _stateful(v)}

    def save_checkpoint(self) -> None:
        if self.nonfinite is not None:
            self.stop_if_nonfinite()  # never a checkpoint after a non-finite loss
        if not self.is_main:
            return
        state = {"step": self.step, "phase": self.cur, "phase_start": self.phase_start, "done": self.done,
                 "phase_states": {str(i): pr.state for i, pr in enumerate(self.phase_runs)},
                 "samplers": {str(i): pr.sampler.state_dict() for i, pr in enumerate(self.phase_runs)},
                 "components": {k: c.train_state() for k, c in self._stateful_components().items()},
                 "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
                 "wall_seconds": self._wall(), "early_stop": [self.best_eval, self.bad_evals],
                 "optimizer": self.opt.state_dict(), "rng_cpu": torch.get_rng_state(), **self._schedule_record(),
                 "last_eval": self.last_eval, "eval_pending": self.eval_pending,
                 "scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps, "keep_best": self.best,
                 **({"micro_batch": self.micro} if self.batch_record else {})}
        if self.eval_pending:  # the RNG as it was before the interrupted evaluation, which resume does again
            state["rng_cpu"] = self._rng_before_eval
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.saver is not None:  # the hook fires once the background write is done
            self.checkpoint_written(wait=True)
            self.saver.save(self.run_dir / "checkpoints", self.step, self.model, state)
            self._saved_at = self.step
            return
        try:
            path = ckpt.save(self.run_dir / "checkpoints", self.step, self.model, state)
        except ckpt.CheckpointWriteError as e:
            self.status = f"stopped: cannot write the checkpoint of step {self.step}"
            raise RunStopped(str(e)) from None
        self._saved_at = self.step
        get_manager().hook.kinlm_checkpoint(run=self.ctx, step=self.step, path=path)

    def _load_state(self, state: dict) -> None:
        self.step = int(state["step"])
        self.cur, self.phase_start = int(state.get("phase", 0)), int(state.get("phase_start", 0))
        self.done = bool(state.get("done", False))
        if self.cur >= len(self.phase_runs):
            raise RunError(f"{self.run_dir}: the checkpoint is in phase {self.cur}, the curriculum has "
                           f"{len(self.phase_runs)} phases")
        for i, pr in enumerate(self.phase_runs):
            pr.state = state.get("phase_states", {}).get(str(i), {})
            if str(i) in state.get("samplers", {}):
                pr.sampler.load_state_dict(state["samplers"][str(i)])
        if "sampler" in state:  # checkpoints written before phases had their own cursors
            self.phase_runs[0].sampler.load_state_dict(state["sampler"])
        saved = state.get("components", {})
        for k, c in self._stateful_components().items():
            if k in saved:
                c.load_train_state(saved[k])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.wall_seconds, self._wall0 = float(state.get("wall_seconds", 0.0)), time.perf_counter()
        self.best_eval, self.bad_evals = state.get("early_stop", [math.inf, 0])
        self.last_eval = dict(state.get("last_eval", {}))  # result.json's eval/* after a resume at the end
        self.eval_pending = bool(state.get("eval_pending", False))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.best = state.get("keep_best")

    # ---- eval, samples, analyzers ---------------------------------------------------------------------
    def run_eval(self) -> dict:
        spec = self.spec
        size, batches = spec.train.batch_size, spec.eval.batches
        if self.batch_record is not None:  # "auto": the same sequences as batches of the target, in micro-batches
            size, batches = self.micro, batches * spec.train.grad_accum
        r = evaluate(self.model, self.eval_objective, self.data, spec.eval.split, spec.objective.unit(),
                     size, batches, self.device, spec.objective.bpb, self.autocast, spec.seed)
        m = {"eval/loss": r["loss"], "eval/ppl": r["ppl"], **({"eval/bpb": r["bpb"]} if "bpb" in r else {}),
             **({"eval/accuracy": r["accuracy"]} if "accuracy" in r else {}), "eval/tokens_seen": self.tokens_seen}
        if self.is_main:
            self.log(m, self.step)
            write_samples(spec, self.model, self.tokenizer, self.run_dir, self.step, self.logger)
            self._analyzers("eval")
        get_manager().hook.kinlm_eval(run=self.ctx, step=self.step, metrics=m)
        return m

    def _keep_best(self, e: dict) -> None:
        """train.keep_best: when this evaluation beats the best so far, its weights become best/ (written
        like a checkpoint: atomically, with a manifest); ``self.best`` is saved in every checkpoint, so a
        resumed run compares with the best before the interruption."""
        metric = self.spec.train.keep_best
        if metric is None:
            return
        if metric not in e:
            have = ", ".join(k for k in e if k != "eval/tokens_seen")
            raise RunError(f"train.keep_best: {metric} is not among this run's evaluation metrics ({have})")
        v = float(e[metric])
        if not math.isfinite(v):
            return
        if self.best is not None and not (v < self.best["value"] if BEST_METRICS[metric] == "min"
                                          else v > self.best["value"]):
            return
        self.best = {"metric": metric, "step": self.step, "value": v}
        if self.is_main:
            try:
                ckpt.save_best(self.run_dir / "best", self.step, self.model, dict(self.best))
            except ckpt.CheckpointWriteError as err:
                self.status = f"stopped: cannot write best/ at step {self.step}"
                raise RunStopped(str(err)) from None

    def _record(self) -> dict:
        """result.json's precision, batch and best-checkpoint entries."""
        return {**self._choices(), **({"best": self.best} if getattr(self, "best", None) else {}),
                **({"skipped_steps": self.skipped_steps} if self.scaler.is_enabled() else {})}

    def _wall(self) -> float:
        return self.wall_seconds + time.perf_counter() - self._wall0

    def _early_stop(self, loss: float) -> bool:
        """True when eval.early_stop_patience evaluations in a row have not improved on the best."""
        patience = self.spec.eval.early_stop_patience
        if loss < self.best_eval - self.spec.eval.early_stop_min_delta:
            self.best_eval, self.bad_evals = loss, 0
        else:
            self.bad_evals += 1
        return patience is not None and self.bad_evals >= patience

    def _analyzers(self, when: str) -> None:
        if not any(when in a.at for a in self.spec.analyzers):
            return
        texts = [self.tokenizer.decode(row[:-1].tolist()) for row in self.data.blocks(self.spec.eval.split)[:ANALYZER_TEXTS]]
        with self._interruptible():
            run_analyzers(self.spec, self.model, self.tokenizer, texts, self.run_dir, self.step, when, self.logger)

    def export(self) -> str:
        from .export import export_final

        facts = {**self.last_eval, "status": "finished", "step": self.step, "params": self.n_params,
                 "tokens_seen": self.tokens_seen}  # result.json is written after the export: the card's facts
        return export_final(self.model, self.spec, self.tokenizer, self.run_dir / "final", run_dir=self.run_dir,
                            result=facts)

    # ---- the loop ---------------------------------------------------------------------------------------
    def run(self) -> dict:
        """setup, then one iteration per optimizer step until max_steps or the curriculum's end, then
        the end-of-run outputs. Whatever happens, result.json says how the run ended."""
        self.setup()
        self.status, self.early = "finished", False
        final: dict = {}
        with self._signals_save_and_stop():
            try:
                self.start()
                if self.eval_pending:  # resumed from a checkpoint whose evaluation a signal stopped: redo it
                    self.eval_and_checkpoint(self.step >= self.spec.train.max_steps or self.done)
                while self.step < self.spec.train.max_steps and not self.done:
                    pr = self.phase_runs[self.cur]
                    m = self.timed_step(pr)
                    self.check_finite(m)
                    self.advance_phase(pr, m)
                    last = self.step >= self.spec.train.max_steps or self.done
                    self.log_step(pr, m, last)
                    last = self.eval_and_checkpoint(last)
                    if self.stop_signal and not last:
                        self.preempt()
                        break
                self.close_progress()
                final = self.finish()
                return final
            except _Preempted:  # a signal during an evaluation, an analyzer or the export
                self.close_progress()
                self.preempt()
                final = self.finish()
                return final
            except OSError as e:
                if e.errno not in DISK_FULL:
                    self.status = f"failed: {type(e).__name__}: {str(e)[:200]}"
                    raise
                self.status = "stopped: disk full"
                kept = ckpt.latest(self.run_dir / "checkpoints")
                raise RunStopped(f"{self.run_dir}: disk full ({e.strerror}) at step {self.step}; stopped; "
                                 + (f"the last checkpoint {kept} is kept" if kept else "no checkpoint was written")
                                 ) from None
            except BaseException as e:
                if self.status == "finished":  # an unexpected error: never reported as a finished run
                    self.status = f"failed: {type(e).__name__}: {str(e)[:200]}"
                raise
            finally:
                self.end(final)

    @contextmanager
    def _signals_save_and_stop(self):
        """SIGTERM/SIGINT set stop_signal: the loop saves a checkpoint and stops after the step."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _on_signal(self, signum, frame):
        self.stop_signal = signal.Signals(signum).name
        if self._interruptible_now:
            self._interruptible_now = False
            raise _Preempted()

    @contextmanager
    def _interruptible(self):
        """Evaluations, analyzers and the export stop at once on SIGTERM/SIGINT (and do not start after
        one), instead of running to their end first; the loop then saves a resumable checkpoint. Under
        torchrun (several ranks, collective operations) they finish first, as training steps do."""
        if self.world > 1:
            yield
            return
        if self.stop_signal:
            raise _Preempted()
        before, self._interruptible_now = self._interruptible_now, True
        try:
            yield
        finally:
            self._interruptible_now = before

    def _say(self, msg: str) -> None:
        if self.is_main:
            self.bar.write(msg) if self.bar is not None else self.echo(msg)

    def start(self) -> None:
        """The run's first line, the run-start hook, the start analyzers, the progress bar."""
        tc = self.spec.train
        self.nonfinite, self.perf = NonFiniteWatch(), self._throughput()
        use_async = tc.async_checkpoint if tc.async_checkpoint is not None else self.device.type == "cuda"
        self.saver = ckpt.AsyncSaver() if use_async and self.is_main else None
        if self.is_main:
            self.echo(f"{self.spec.name}: {self.n_params / 1e6:.2f}M parameters, vocab {self.tokenizer.vocab_size}, "
                      f"{len(self.data.blocks('train'))} train blocks of {tc.block_size}, device {self.device}"
                      + (f", {self.world} ranks" if self.world > 1 else ""))
        get_manager().hook.kinlm_run_start(run=self.ctx)
        if self.is_main and self.step == 0:
            self._analyzers("start")
        self.bar = None
        if self.progress and self.is_main:
            from tqdm import tqdm

            self.bar = tqdm(total=tc.max_steps, initial=self.step, desc=self.spec.name, dynamic_ncols=True)
        self.model.train()
        self._log_t0, self._log_tokens0 = time.perf_counter(), self.tokens_seen

    def _throughput(self) -> Throughput:
        """The steady-state tokens/s and MFU meter of this process (perf.py)."""
        mc = self.spec.model.model_dump()  # the attention term where the model's options name its depth and width
        ftok = flops_per_token(self.n_params, mc.get("n_layer") or 0, mc.get("d_model") or 0,
                               self.spec.train.block_size)
        peak, note = device_peak(self.device, half_precision=self.autocast is not nullcontext)
        meter = Throughput(self.device, ftok, peak, note)
        meter.start(self.tokens_seen)
        return meter

    def timed_step(self, pr: PhaseRun) -> dict:
        ts = time.perf_counter()
        m = self.train_step(pr)
        if self.step % self.spec.train.log_every == 0 or self.step >= self.spec.train.max_steps:
            m = to_host(m)  # a logging step reads the step's scalars (and waits for the device) here
        dt = time.perf_counter() - ts
        self.train_seconds += dt
        self.perf.step(dt, self.tokens_seen)
        m["train/phase"] = self.cur
        return m

    def check_finite(self, m: dict) -> None:
        """Record a non-finite loss on the device (no host sync); read the record at logging steps."""
        self.nonfinite.update(self.step, m.get("train/loss", 0.0))
        if self.step % self.spec.train.log_every == 0:
            self.stop_if_nonfinite()

    def stop_if_nonfinite(self) -> None:
        """Stop (RunStopped) when a step since the start had a non-finite loss; called at logging steps
        and before every evaluation and checkpoint, so the last checkpoint kept is a good one."""
        bad = self.nonfinite.read()
        if bad is not None:
            step, loss = bad
            self.status = "stopped: non-finite loss"
            self.wait_for_checkpoint(quiet=True)  # the checkpoint named below is whole
            kept = ckpt.latest(self.run_dir / "checkpoints")
            raise RunStopped(f"step {step}: loss is {loss}; stopped. "
                             + (f"The last good checkpoint is kept: {kept}" if kept else
                                f"No checkpoint was written (the first was due at step {self.spec.train.checkpoint_every})")
                             + " (try a lower train.lr)")

    def advance_phase(self, pr: PhaseRun, m: dict) -> None:
        if pr.phase.until is not None:  # the phase's condition reads the metrics: one host sync per step
            m.update(to_host(m))
        if self._phase_ended(pr, m):
            self._end_phase()

    def log_step(self, pr: PhaseRun, m: dict, last: bool) -> None:
        """Every log_every steps (and the last): train/*, perf/* to metrics.jsonl and TensorBoard; a
        phase's own step function logs its scalars every step. Then the step-end hook and the bar."""
        tc = self.spec.train
        logging_step = self.step % tc.log_every == 0 or last
        if logging_step:
            m.update(to_host(m))
        loss = m.get("train/loss", 0.0)
        if logging_step:
            dt = time.perf_counter() - self._log_t0
            m["perf/tokens_per_s"] = (self.tokens_seen - self._log_tokens0) / max(dt, 1e-9)
            if self.perf.mfu(m["perf/tokens_per_s"]) is not None:
                m["perf/mfu"] = self.perf.mfu(m["perf/tokens_per_s"])
            m["perf/peak_mem_mb"] = peak_memory_mb(self.device)
            m["perf/tokens_seen"] = self.tokens_seen
            self._log_t0, self._log_tokens0 = time.perf_counter(), self.tokens_seen
            if self.is_main:
                self.log(m, self.step)
                if self.bar is None:
                    self.echo(f"step {self.step}/{tc.max_steps} loss {loss:.4f} lr {m['train/lr']:.2e} "
                              f"{m['perf/tokens_per_s']:.0f} tok/s")
        elif pr.phase.step is not None and self.is_main:
            self.log(to_host({k: v for k, v in m.items() if k.startswith(f"{pr.name}/")}), self.step)
        get_manager().hook.kinlm_step_end(run=self.ctx, step=self.step, metrics=m)
        if self.bar is not None:
            self.bar.update(1)
            if logging_step:
                self.bar.set_postfix(loss=f"{loss:.3f}")

    def eval_and_checkpoint(self, last: bool) -> bool:
        """After a step: the evaluation and the checkpoint that are due; returns ``last`` (true after an early stop)."""
        last = self.maybe_eval(last)
        self.maybe_checkpoint(last)
        return last

    def maybe_eval(self, last: bool) -> bool:
        """Evaluate every eval.every steps and at the end; returns ``last``, true after an early stop.
        A signal stops the evaluation at once; its checkpoint says so (``eval_pending``) and a resume
        evaluates again."""
        if not (self.step % self.spec.eval.every == 0 or last):
            return last
        self.stop_if_nonfinite()
        self.eval_pending, self._rng_before_eval = True, torch.get_rng_state()
        with self._interruptible():
            e = self.run_eval()
        self.last_eval, self.eval_pending = e, False
        self._keep_best(e)
        self._say(f"step {self.step}: eval loss {e['eval/loss']:.4f} ppl {e['eval/ppl']:.2f}"
                  + (f" bpb {e['eval/bpb']:.3f}" if "eval/bpb" in e else ""))
        if self._early_stop(e["eval/loss"]) and not last:
            self.early, self.done = True, True
            self._say(f"step {self.step}: early stop (no eval improvement in "
                      f"{self.spec.eval.early_stop_patience} evaluations)")
            return True
        return last

    def maybe_checkpoint(self, last: bool) -> None:
        self.checkpoint_written()
        if self.step % self.spec.train.checkpoint_every == 0 or last:
            self.save_checkpoint()

    def checkpoint_written(self, wait: bool = False) -> None:
        """With asynchronous checkpoints: when the write in flight is done (or, ``wait``, once it is),
        raise its error as RunStopped or fire ``kinlm_checkpoint`` for it, on this thread."""
        saver = self.saver
        if saver is None or (saver.busy() and not wait):
            return
        try:
            saver.join()
        except ckpt.CheckpointWriteError as e:
            self.status = f"stopped: cannot write the checkpoint of step {saver.step}"
            raise RunStopped(str(e)) from None
        done = saver.poll()
        if done is not None:
            get_manager().hook.kinlm_checkpoint(run=self.ctx, step=done[0], path=done[1])

    def wait_for_checkpoint(self, quiet: bool = False) -> None:
        """Wait for an asynchronous checkpoint write; ``quiet``: on a run already stopping, a failed
        write is only reported."""
        try:
            self.checkpoint_written(wait=True)
        except RunStopped as e:
            if not quiet:
                raise
            self.echo(f"warning: {e}")

    def preempt(self) -> None:
        """Stop on a signal: a checkpoint of this step (unless one was just saved), status ``preempted``."""
        if self._saved_at != self.step or self.eval_pending:
            self.save_checkpoint()
        self.wait_for_checkpoint()
        self.status = f"preempted ({self.stop_signal}) at step {self.step}"
        if self.is_main:
            redo = " (its evaluation was stopped and is done again on resume)" if self.eval_pending else ""
            self.echo(f"{self.stop_signal}: checkpoint saved at step {self.step}{redo}; "
                      f"continue with: kinlm run {self.run_dir / 'spec.json'} --resume {self.run_dir}")

    def close_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def finish(self) -> dict:
        """A finished run's end analyzers and export; the result every rank returns."""
        export_msg = None
        self.wait_for_checkpoint()
        self._say_throughput()
        if self.status == "finished" and self.is_main:
            self._analyzers("end")
            if self.spec.train.export_final:
                with self._interruptible():
                    export_msg = self.export()
        return {**self.last_eval, "status": self.status, "step": self.step, "params": self.n_params,
                "objective": self.spec.objective.type, "tokens_seen": self.tokens_seen,
                "train_seconds": self.train_seconds, "wall_seconds": self._wall(),
                "tokens_per_s": self.tokens_seen / max(self.train_seconds, 1e-9), **self.perf.summary(),
                "early_stopped": self.early,
                "curriculum_done": self.done and not self.early, **self._schedule_record(), **self._record(),
                **({"export": export_msg} if export_msg else {})}

    def _say_throughput(self) -> None:
        """One log line: warm-up and compile seconds apart from the steady tokens/s and MFU (perf.py)."""
        p = self.perf.summary()
        if p["steady_tokens_per_s"] is None:
            return
        mfu = f"MFU {p['mfu']:.1%}" if p["mfu"] is not None else f"MFU n/a ({p['mfu_note']})"
        self._say(f"throughput: {p['steady_tokens_per_s']:,.0f} tok/s steady after {p['warmup_steps']} warm-up steps "
                  f"({p['warmup_seconds']:.1f} s, {p['compile_seconds']:.1f} s beyond steady); {mfu}")

    def end(self, final: dict) -> None:
        """Always: the run-end hook, hparams and result.json (rank 0), the process group closed."""
        self.wait_for_checkpoint(quiet=True)
        if not final:
            final = {**self.last_eval, "status": self.status, "step": self.step,
                     "objective": self.spec.objective.type, **self._schedule_record(),
                     **(self._record() if hasattr(self, "scaler") else {})}
        get_manager().hook.kinlm_run_end(run=self.ctx, metrics=final)
        if self.is_main and self.logger is not None:
            try:
                write_result(self.run_dir, self.spec, final, self.last_eval, self.logger)
                self.logger.close()
            except OSError as e:  # a full disk: the earlier result.json (if any) stays whole
                self.echo(f"{self.run_dir / 'result.json'}: not written ({e.strerror or e})")
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def run(spec, run_dir: Path, resume: bool = False, progress: bool | None = None, log=None,
        extend: bool = False, strict_checkpoint: bool = False) -> dict:
    return Trainer(spec, run_dir, resume=resume, progress=progress, log=log, extend=extend,
                   strict_checkpoint=strict_checkpoint).run()
