"""The step functions of the ``cvfp_two_phase`` curriculum (one call = one optimizer step).

Everything that changes during training lives in ``ctx.state`` (saved in every checkpoint and
restored on resume), never in the model:

phase 1 ("fixed_point") state
    C_prev     (N, d)  the previous iteration's last-layer contexts (iteration 0: the sequential C_0)
    C0         (N, d)  C_0, kept only for ``target="initial"``
    carry      (d,)    the incoming context of token 0 in the latest iteration: the previous
                       iteration's last context (never reset to zero after iteration 0)
    iteration  int     parallel iterations done (= optimizer steps of this phase)
    convergence_rate float  of the latest iteration (read by the end condition)

    iteration n >= 1:  incoming_i = C_prev[i-1] (+ noise)      (parallel; token 0: carry)
                       incoming_i = C_n[i-1]    (+ noise)      (sequential: this iteration's)
                       C_n = ContextBlock(incoming, e)^K        (N, d)
                       per chunk b of n_chunks:
                       loss_b = ((1 - w) mean (C_b - target_b)^2 + w diversity(C_b)) / n_chunks
                       one optimizer step; C_prev <- C_n.detach()
                       stop when n + 1 >= min_iterations and the convergence rate >= convergence_rate

The training stream is the first ``train_tokens`` tokens of the train split, less its last
``validation_fraction`` when ``validation="train_tail"`` (that tail is phase 2's validation stream).

phase 2 ("token_prediction") state
    train_contexts (K, N, d), val_contexts (K, N_val, d): the frozen ContextBlock's outputs, computed
    once sequentially from zero; epoch, cursor (minibatches done in this epoch), best_val,
    bad_epochs, best (the best epoch's trainable weights), done.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from kinlm_core import available_memory, perplexity

from .losses import convergence_rate, diversity, effective_rank

PHASE1, PHASE2 = "fixed_point", "token_prediction"


# --- helpers shared with the analyzers, the benchmark and the tests ---------------------------------


def _tensor(toks, what: str, device):
    if len(toks) < 2:
        raise ValueError(f"cvfp: the {what} stream has {len(toks)} tokens; it needs at least 2")
    return torch.as_tensor(np.asarray(toks, dtype=np.int64), device=device)


def streams(cfg, data, device):
    """(train ids (N,), validation ids (N_val,)) as the curriculum reads them from ``data.tokens``:
    the first ``train_tokens`` of the train split; validation its last ``validation_fraction``
    ("train_tail", then cut from the training stream) or the validation split's first
    ``validation_tokens`` ("split")."""
    toks = data.tokens("train")
    if cfg.train_tokens is not None:
        toks = toks[:cfg.train_tokens]
    if cfg.validation == "train_tail":
        n_val = max(2, int(round(len(toks) * cfg.validation_fraction)))
        return _tensor(toks[:len(toks) - n_val], "train", device), _tensor(toks[len(toks) - n_val:], "validation tail", device)
    val = data.tokens("validation")
    if cfg.validation_tokens is not None:
        val = val[:cfg.validation_tokens]
    return _tensor(toks, "train", device), _tensor(val, "validation", device)


def shifted_incoming(C_prev):
    """The parallel sweep's incoming contexts: token i gets C_prev[i-1], token 0 gets C_prev[N-1]
    (the previous iteration's last context: carried, never reset). (N, d) -> (N, d)."""
    return torch.cat([C_prev[-1:], C_prev[:-1]])


def chunk_loss(C, target, w: float, n_chunks: int):
    """One chunk's share of the phase-1 loss, as the source accumulates it: C, target (L, d) ->
    (loss, mse, diversity), loss = ((1 - w) mse + w diversity) / n_chunks, mse = mean (C - target)^2,
    diversity = -||C - mean_rows(C)||_F / L (the chunk's own centroid and token count)."""
    mse = (C - target).pow(2).mean()
    div = diversity(C)
    return ((1 - w) * mse + w * div) / n_chunks, mse, div


@torch.no_grad()
def sequential_contexts(model, ids, c0=None) -> list:
    """Run the ContextBlock over the stream ids (N,) token by token from c0 (d,) (None: zeros).
    Returns the K per-layer contexts, each (N, d)."""
    e = model.embed(ids)[None]
    cs = model.context_block.run(e, None if c0 is None else c0[None])
    return [c[0] for c in cs]


def parallel_iteration(model, e, incoming):
    """Every token at once: e (N, d), incoming (N, d) -> C (N, d) = ContextBlock(incoming, e)^K."""
    return model.context_block(incoming, e)[-1]


def sequential_iteration(model, e, c_start, noise=None, through_time: bool = False):
    """Token by token: token i's incoming context is this iteration's output for token i-1; token
    0's is c_start. Detached between tokens (the gradient does not flow through time, as in the
    parallel version), or with ``through_time`` kept in the graph, so a token's loss backpropagates
    through every earlier token's step (BPTT, the source's sequential baseline).
    e (N, d), c_start (d,), noise (N, d) or None -> (C (N, d), incoming (N, d))."""
    c, outs, ins = c_start, [], []
    for i in range(e.size(0)):
        inc = c if noise is None else c + noise[i]
        ins.append(inc)
        out = model.context_block(inc[None], e[i:i + 1])[-1][0]
        outs.append(out)
        c = out if through_time else out.detach()
    return torch.stack(outs), torch.stack(ins)


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def noise_for(cfg, iteration: int, shape, device):
    """Gaussian noise on the incoming contexts, drawn from (noise_seed, iteration): resume-exact."""
    if cfg.noise_std <= 0:
        return None
    g = torch.Generator().manual_seed(cfg.noise_seed * 1_000_003 + iteration)
    return (torch.randn(shape, generator=g) * cfg.noise_std).to(device)


def _gather_rows(ctx, full):
    """Assemble a (N, d) tensor each rank filled in part (zeros elsewhere) on every rank."""
    if ctx.world == 1:
        return full
    return ctx.all_reduce_mean(full) * ctx.world


# --- phase 1: fixed-point learning ---------------------------------------------------------------


def phase1_step(cfg, ctx) -> dict:
    """One iteration n >= 1 of fixed-point learning (the first call also runs iteration 0)."""
    model, st = ctx.raw_model, ctx.state
    ids, _ = streams(cfg, ctx.data, ctx.device)
    N, d = ids.numel(), model.d_model
    out: dict = {}
    if "C_prev" not in st:  # iteration 0: sequential from zero, no gradient
        with ctx.autocast():
            C0 = sequential_contexts(model, ids)[-1].float()
        st["C_prev"], st["iteration"] = C0.cpu(), 0
        if cfg.target == "initial":
            st["C0"] = C0.cpu()
        er0 = effective_rank(C0)
        out.update({"initial_effective_rank": er0, "initial_effective_rank_pct": 100 * er0 / d})
    C_prev = st["C_prev"].to(ctx.device)
    target = st["C0"].to(ctx.device) if cfg.target == "initial" else C_prev
    n = int(st["iteration"]) + 1
    carry = C_prev[-1]  # the previous iteration's last context: never reset
    noise = noise_for(cfg, n, (N, d), ctx.device)
    with torch.no_grad():
        e_all = model.embed(ids)
    w = cfg.dist_reg_weight
    C_new = torch.zeros_like(C_prev)
    sums = {"loss": 0.0, "mse": 0.0, "diversity": 0.0}
    all_chunks = chunks(N, cfg.chunk_tokens)
    if cfg.mode == "parallel":
        incoming = shifted_incoming(C_prev)                                  # (N, d), token 0: carry
        if noise is not None:
            incoming = incoming + noise
        for a, b in all_chunks[ctx.rank::ctx.world]:
            with ctx.autocast():
                C = parallel_iteration(model, e_all[a:b], incoming[a:b]).float()
            sums = _accumulate(ctx, C, target[a:b], w, len(all_chunks), sums, scale=ctx.world)
            C_new[a:b] = C.detach()
        C_new = _gather_rows(ctx, C_new)
        for k in sums:  # every rank reports the global sums
            sums[k] = float(ctx.all_reduce_mean(torch.tensor(sums[k], device=ctx.device))) * ctx.world
    else:  # sequential: inherently one pass; every rank computes the same gradient
        c = carry
        for a, b in all_chunks:
            with ctx.autocast():
                C, _ = sequential_iteration(model, e_all[a:b], c, None if noise is None else noise[a:b],
                                            through_time=cfg.through_time)
                C = C.float()
            sums = _accumulate(ctx, C, target[a:b], w, len(all_chunks), sums)
            C_new[a:b] = C.detach()
            c = C_new[b - 1]
    rate = convergence_rate(C_new, C_prev, cfg.convergence_threshold)
    gnorm = ctx.optimizer_step()
    ctx.count_tokens(N)  # one iteration trains on the whole stream
    er = effective_rank(C_new)
    st.update({"C_prev": C_new.cpu(), "carry": carry.cpu(), "iteration": n, "convergence_rate": rate})
    out.update({**sums, "convergence_rate": rate, "effective_rank": er, "effective_rank_pct": 100 * er / d,
                "iteration": float(n), "grad_norm": float(gnorm), "carry_norm": float(carry.norm())})
    return out


def _accumulate(ctx, C, target, w, n_chunks, sums, scale: int = 1):
    """Backward one chunk's share of the loss (``chunk_loss``); the scalars reported are the means
    over chunks. Under torchrun each rank holds some chunks and optimizer_step() averages the
    gradients over ranks, so a rank backpropagates ``scale`` = world times its share (the mean of
    those = the sum)."""
    loss, mse, div = chunk_loss(C, target, w, n_chunks)
    ctx.backward(loss * scale, sync=False)
    return {"loss": sums["loss"] + float(loss.detach()), "mse": sums["mse"] + float(mse.detach()) / n_chunks,
            "diversity": sums["diversity"] + float(div.detach()) / n_chunks}


def phase1_until(cfg, state, metrics) -> bool:
    """Stop when iteration n + 1 >= min_iterations (the source counts iteration 0) and the
    convergence rate has reached its target."""
    return int(state.get("iteration", 0)) + 1 >= cfg.min_iterations and \
        float(state.get("convergence_rate", 0.0)) >= cfg.convergence_rate


# --- phase 2: token prediction on the frozen ContextBlock's cached contexts ---------------------


def _batches(n_positions: int, size: int) -> int:
    return math.ceil(n_positions / size)


def _trainable(model) -> dict:
    return {k: v for k, v in model.named_parameters() if v.requires_grad}


@torch.no_grad()
def _stream_loss(model, ids, contexts, size: int, device) -> float:
    """Mean next-token cross-entropy over a stream given its cached contexts (K, N, d)."""
    total, count = 0.0, 0
    for a in range(0, ids.numel() - 1, size):
        b = min(a + size, ids.numel() - 1)
        cs = [c[a:b][None].to(device) for c in contexts]
        logits = model(ids[a:b][None], contexts=cs).logits[0].float()
        total += float(F.cross_entropy(logits, ids[a + 1:b + 1], reduction="sum"))
        count += b - a
    return total / max(count, 1)


SOURCE_BATCH_RANGE = (256, 16384)  # the source's clamp of its free-memory phase-2 batch
SOURCE_BYTES_PER_TOKEN = 4 * 3.5  # x V: the source's estimate of a position's memory in phase 2 (logits and more)


def free_memory_batch(vocab_size: int, device) -> int:
    """The source's phase-2 batch (B5): free MB x 0.5 x 0.5 / per-token MB (V x 4 B x 3.5), clamped to
    [256, 16384] and to int(memory GB x 500 x 0.8). Free = total - allocated on a GPU; on CPU the memory
    the system reports available (total and free alike)."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        free = total - torch.cuda.memory_allocated(device)
    else:
        free = total = available_memory() or 2**30
    per_token = vocab_size * SOURCE_BYTES_PER_TOKEN
    batch = int(free * 0.5 * 0.5 / per_token)
    lo, hi = SOURCE_BATCH_RANGE
    return max(lo, min(batch, hi, int(total / 1e9 * 500 * 0.8)))


def _minibatch_backward(ctx, ids, contexts, a: int, b: int, micro: int) -> torch.Tensor:
    """Backward of the mean next-token cross-entropy over positions [a, b), ``micro`` positions per pass
    (each pass's summed loss divided by b - a); returns that mean."""
    if micro >= b - a:  # one pass, exactly as without accumulation
        cs = [c[a:b][None].to(ctx.device) for c in contexts]
        with ctx.autocast():
            logits = ctx.model(ids[a:b][None], contexts=cs).logits[0].float()
        loss = F.cross_entropy(logits, ids[a + 1:b + 1])
        ctx.backward(loss)
        return loss.detach()
    total = torch.zeros((), device=ctx.device)
    for s in range(a, b, micro):
        e = min(s + micro, b)
        cs = [c[s:e][None].to(ctx.device) for c in contexts]
        with ctx.autocast():
            logits = ctx.model(ids[s:e][None], contexts=cs).logits[0].float()
        loss = F.cross_entropy(logits, ids[s + 1:e + 1], reduction="sum") / (b - a)
        ctx.backward(loss)
        total += loss.detach()
    return total


def _oom_cleanup(ctx) -> None:
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


def _pick_micro(cfg, ctx, ids, contexts, bt: int) -> int:
    """micro_tokens: None -> the whole minibatch; a number -> it; "auto" -> the largest of bt, bt/2, ...
    that fits: on CPU only those whose memory by the source's per-token estimate fits half the available
    memory, each tried with one forward and backward pass (out-of-memory: the next)."""
    if cfg.micro_tokens is None:
        return bt
    if cfg.micro_tokens != "auto":
        return min(int(cfg.micro_tokens), bt)
    sizes, m = [], bt
    while True:
        sizes.append(m)
        if m == 1:
            break
        m = math.ceil(m / 2)
    if ctx.device.type == "cpu":
        avail = available_memory()
        per = ctx.raw_model.vocab_size * SOURCE_BYTES_PER_TOKEN
        if avail is not None:
            sizes = [m for m in sizes if m * per <= 0.5 * avail] or [1]
    n = min(bt, ids.numel() - 1)
    for m in sizes:
        try:
            _minibatch_backward(ctx, ids, contexts, 0, min(m, n), m)
            return m
        except torch.OutOfMemoryError:
            pass
        finally:
            _oom_cleanup(ctx)
    raise torch.OutOfMemoryError("cvfp phase 2: not even one position per pass fits on the device")


def phase2_step(cfg, ctx) -> dict:
    """One minibatch of contiguous positions: cross-entropy of the TokenBlock (and untied head) on the
    frozen ContextBlock's cached contexts, in passes of micro_tokens positions; at each epoch's end,
    the held-out validation loss."""
    model, st = ctx.raw_model, ctx.state
    ids, val_ids = streams(cfg, ctx.data, ctx.device)
    if "train_contexts" not in st:
        with ctx.autocast():
            st["train_contexts"] = torch.stack(sequential_contexts(model, ids)).float().cpu()
            st["val_contexts"] = torch.stack(sequential_contexts(model, val_ids)).float().cpu()
        st.update({"epoch": 0, "cursor": 0, "best_val": float("inf"), "bad_epochs": 0, "done": False})
    if "batch_tokens" not in st:  # fixed for the phase (and saved), so a resume continues with it
        st["batch_tokens"] = (free_memory_batch(model.vocab_size, ctx.device) if cfg.batch_tokens == "free_memory"
                              else int(cfg.batch_tokens))
    bt = int(st["batch_tokens"])
    if "micro_tokens" not in st:
        st["micro_tokens"] = _pick_micro(cfg, ctx, ids, st["train_contexts"], bt)
    nb = _batches(ids.numel() - 1, bt)
    epoch, cursor = int(st["epoch"]), int(st["cursor"])
    order = (np.arange(nb) if cfg.phase2_order == "stream"
             else np.random.default_rng([cfg.phase2_seed, epoch]).permutation(nb))
    j = int(order[(cursor + ctx.rank) % nb])
    a, b = j * bt, min((j + 1) * bt, ids.numel() - 1)
    micro = int(st["micro_tokens"])
    try:
        loss = _minibatch_backward(ctx, ids, st["train_contexts"], a, b, micro)
    except torch.OutOfMemoryError:  # "auto": back off once (half the positions per pass) and redo the step
        if cfg.micro_tokens != "auto" or st.get("backed_off_at") is not None or micro == 1:
            raise
        _oom_cleanup(ctx)
        st["micro_tokens"], st["backed_off_at"] = math.ceil(micro / 2), ctx.step + 1
        loss = _minibatch_backward(ctx, ids, st["train_contexts"], a, b, int(st["micro_tokens"]))
    gnorm = ctx.optimizer_step()
    ctx.count_tokens((b - a) * ctx.world)
    out = {"loss": float(ctx.all_reduce_mean(loss.detach())), "grad_norm": float(gnorm), "epoch": float(epoch),
           "batch_tokens": float(bt), "micro_tokens": float(st["micro_tokens"])}
    cursor += ctx.world
    if cursor >= nb:  # epoch end: held-out validation, early stop, best weights
        epoch, cursor = epoch + 1, 0
        with ctx.autocast():
            val = _stream_loss(model, val_ids, st["val_contexts"], min(bt, int(st["micro_tokens"])), ctx.device)
        if val < st["best_val"]:
            st.update({"best_val": val, "bad_epochs": 0,
                       "best": {k: v.detach().cpu().clone() for k, v in _trainable(model).items()}})
        else:
            st["bad_epochs"] = int(st["bad_epochs"]) + 1
        if st["bad_epochs"] >= cfg.patience or epoch >= cfg.max_epochs:
            with torch.no_grad():
                for k, v in _trainable(model).items():
                    v.copy_(st["best"][k].to(v.device))
            st["done"] = True
        out.update({"val_loss": val, "val_ppl": perplexity(val), "best_val_loss": float(st["best_val"]),
                    "epochs_done": float(epoch)})
    st.update({"epoch": epoch, "cursor": cursor})
    return out


def phase2_until(cfg, state, metrics) -> bool:
    return bool(state.get("done", False))
