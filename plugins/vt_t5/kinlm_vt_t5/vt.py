"""VT ("vector transition") embeddings around any kinlm model's input embedding.

Shapes: B batch, T time, C embedding width. e_t is the input embedding of token t; a "first
position" is the row's first, a document's first or the first after padding (when the batch says
where those are):

    add:            e'_t = e_t + w (e_t - e_{t-1}),  e_{-1} = 0 (so e'_0 = (1 + w) e_0)     the source's T5
    concat_project: v_t = e_t - e_{t-1}, a_t = v_t - v_{t-1}, both 0 at first positions     the source's probes
                    e'_t = W [e_t; v_t] (+ a_t) + b      W: (C, 2C or 3C), torch's default init (the
                    source's new Linear), or with proj_init "identity" [I 0 (0)]: e'_t = e_t at start
    replace:        e'_t = v_t  (as in concat_project, 0 at first positions)                ablation

All (B, T, C). add and replace add no parameters (a learnable w adds one).

The wrapper replaces the output of the inner model's input embedding module (and of the modules
tied to it) while the inner model runs (the core's ``ModelWrapper``), so the inner model runs
unchanged; for T5 the shared table feeds both the encoder and the decoder, and both get VT. Which
id tensor an embedding call embeds (input_ids or decoder_input_ids) picks that tensor's masks.
A learnable w is clamped into ``w_range`` after every optimizer step (``clamp_w``, called from the
plugin's ``kinlm_step_end`` hook), never inside forward.
"""

from __future__ import annotations

from importlib import resources

import torch
import torch.nn as nn

from kinlm_core import GPT, HFExport, ModelOutput, ModelWrapper, gpt_hf_export


def find_input_embedding(model: nn.Module) -> nn.Module:
    """The module that maps token ids to input vectors: ``get_input_embeddings()`` (the capability
    contract: every kinlm model that declares ``input_embeddings``, every transformers model, also one
    held as ``hf``/``model``), else a ``wte`` / ``embed_tokens`` / ``tok_emb`` embedding."""
    for obj in (model, getattr(model, "hf", None), getattr(model, "model", None)):
        if obj is not None and hasattr(obj, "get_input_embeddings"):
            try:
                emb = obj.get_input_embeddings()
            except NotImplementedError:
                emb = None
            if isinstance(emb, nn.Module):
                return emb
    for name in ("wte", "embed_tokens", "tok_emb", "token_embedding"):
        if isinstance(getattr(model, name, None), nn.Embedding):
            return getattr(model, name)
    raise ValueError(f"vt_embeddings: cannot find the input embedding of {type(model).__name__}; the model needs "
                     "get_input_embeddings() or an nn.Embedding attribute named wte")


def embedding_width(emb: nn.Module) -> int:
    """C of an input embedding module: its ``embedding_dim``, else its weight's second dimension."""
    dim = getattr(emb, "embedding_dim", None)
    return int(dim) if dim is not None else int(emb.weight.shape[1])


def input_embedding_modules(model: nn.Module) -> list[nn.Module]:
    """The input embedding and every other embedding module that shares its table (transformers' T5
    keeps encoder.embed_tokens and decoder.embed_tokens tied to ``shared``: those are the ones called).
    A module without a weight of its own (cvfp's table lookup) is the only one."""
    emb = find_input_embedding(model)
    w = getattr(emb, "weight", None)
    if not isinstance(w, torch.Tensor):
        return [emb]
    tied = [m for m in model.modules() if isinstance(m, nn.Embedding) and m is not emb
            and m.weight.shape == w.shape and m.weight.data_ptr() == w.data_ptr()]
    return [emb, *tied]


def restarts(ids: torch.Tensor, attention_mask=None, document_ids=None) -> torch.Tensor:
    """(B, T) bool: positions whose predecessor counts as 0 (row start, document start, after padding)."""
    r = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    r[:, 0] = True
    if document_ids is not None:
        r[:, 1:] |= document_ids[:, 1:] != document_ids[:, :-1]
    if attention_mask is not None:
        r[:, 1:] |= attention_mask[:, :-1] == 0
    return r


def difference(x: torch.Tensor, restart: torch.Tensor, first: str = "zero") -> torch.Tensor:
    """x_t - x_{t-1} along dim 1 (x: (B, T, C)); where ``restart``: 0 (first="zero") or x_t (first="self",
    i.e. x_{-1} = 0)."""
    prev = torch.zeros_like(x)
    prev[:, 1:] = x[:, :-1]
    d = x - prev
    r = restart.unsqueeze(-1)
    return d.masked_fill(r, 0.0) if first == "zero" else torch.where(r, x, d)


class VTEmbeddings(ModelWrapper):
    def __init__(self, cfg, inner: nn.Module):
        embs = input_embedding_modules(inner)
        super().__init__(inner, modules=embs, memory=2 if cfg.acceleration else 1)  # VT reads e_{t-1} (a_t: e_{t-2})
        self.mode, self.reset, self.acceleration = cfg.mode, cfg.reset_at_boundaries, cfg.acceleration
        self.w_range = cfg.w_range if cfg.learnable else None
        C = embedding_width(embs[0])
        if cfg.mode == "add" and cfg.learnable:
            self.w = nn.Parameter(torch.tensor(float(cfg.w)))
        else:
            self.w = float(cfg.w)
        if cfg.mode == "concat_project":
            k = 3 if cfg.acceleration else 2
            self.proj = nn.Linear(k * C, C)  # torch's default init, as the source's new Linear
            if cfg.proj_init == "identity":
                with torch.no_grad():  # start as the identity on e_t: the inner model's own input
                    self.proj.weight.zero_()
                    self.proj.weight[:, :C].copy_(torch.eye(C))
                    self.proj.bias.zero_()

    def forward(self, input_ids, output_hidden_states: bool = False, **batch) -> ModelOutput:
        """The inner model with its input embeddings e replaced by VT(e) (see ``replace``)."""
        with self.outputs_replaced({"input_ids": input_ids, **batch}):
            out = self.call_inner(input_ids, output_hidden_states, **batch)
        if isinstance(self.w, nn.Parameter):
            out.metrics = {**out.metrics, "vt_w": self.w.detach()}
        return out

    def replace(self, i: int, e: torch.Tensor, inputs: tuple, batch: dict) -> torch.Tensor:
        """e (B, T, C), the embedding of ids ``inputs[0]`` -> add: e + w v, concat_project: W [e; v (; a)] + b,
        replace: v, with v_t = e_t - e_{t-1} restarting at first positions."""
        if e.dim() != 3:  # an unbatched call: nothing to difference against
            return e
        r = self.first_positions(inputs[0], e.shape[:2], batch)     # (B, T) bool
        if self.mode == "add":
            return e + self.w * difference(e, r, first="self")      # e_{-1} = 0: e'_0 = (1 + w) e_0
        v = difference(e, r, first="zero")                          # (B, T, C), 0 at first positions
        if self.mode == "replace":
            return v
        parts = [e, v] + ([difference(v, r)] if self.acceleration else [])
        return self.proj(torch.cat(parts, dim=-1))                  # (B, T, 2C or 3C) -> (B, T, C)

    def first_positions(self, ids: torch.Tensor, shape, batch: dict) -> torch.Tensor:
        """(B, T) bool: where e_{t-1} counts as 0: the row start, and with ``reset_at_boundaries`` the
        document starts and the positions after padding of the id tensor being embedded."""
        if self.reset:
            for key, mask, docs in (("input_ids", "attention_mask", "document_ids"),
                                    ("decoder_input_ids", "decoder_attention_mask", None)):
                cand = batch.get(key)
                if cand is not None and cand.shape == ids.shape and (cand is ids or torch.equal(cand, ids)):
                    return restarts(ids, batch.get(mask), batch.get(docs) if docs else None)
        return restarts(torch.empty(shape, dtype=torch.long, device=ids.device))

    def clamp_w(self) -> None:
        """Clamp a learnable w into ``w_range`` (after each optimizer step)."""
        if self.w_range is not None:
            with torch.no_grad():
                self.w.clamp_(*self.w_range)

    def own_no_decay_param_names(self) -> set[str]:
        return {"w"} if isinstance(self.w, nn.Parameter) else set()

    # --- export (issue #33) -----------------------------------------------------------------------
    @property
    def hf_export(self):
        """``hf_export(tokenizer) -> HFExport``: transformers custom code computing this wrapper, around
        a `gpt` (``kinlm_vt_gpt``, the gpt's own export plus VT) or a T5 (``kinlm_vt_t5``, loaded with
        AutoModelForSeq2SeqLM). Around any other model there is no such method (the core then keeps
        safetensors + spec.json)."""
        if isinstance(self.inner, GPT):
            return self._export_gpt
        if _t5_of(self.inner) is not None:
            return self._export_t5
        raise AttributeError(f"vt_embeddings: no transformers export around {type(self.inner).__name__} "
                             "(only around gpt and T5)")

    def _w(self) -> float:
        return float(self.w.detach()) if isinstance(self.w, torch.Tensor) else float(self.w)

    def _vt_fields(self) -> dict:
        return {"vt_mode": self.mode, "vt_w": self._w(), "vt_acceleration": self.acceleration,
                "vt_reset": self.reset}

    def _vt_state(self) -> dict:
        if self.mode != "concat_project":
            return {}
        return {f"vt.proj.{k}": v.detach().to("cpu", torch.float32).clone() for k, v in self.proj.state_dict().items()}

    def _notes(self, inner: str, cache: str) -> str:
        return (f"VT embeddings (kinlm-vt-t5) around {inner}: mode {self.mode}, w {self._w():g}. The input "
                "embeddings e become e + w (e_t - e_{t-1}) (add), W [e; v (; a)] + b (concat_project) or v "
                f"(replace), restarting at the row start and after padding. {cache}")

    def _export_gpt(self, tokenizer) -> HFExport:
        exp = gpt_hf_export(self.inner, tokenizer)
        name = "kinlm_vt_gpt"
        files = {**exp.files, **_hf_files(f"configuration_{name}.py", f"modeling_{name}.py", "vt_equation.py")}
        return HFExport(name=name, config={**exp.config, **self._vt_fields()}, config_class="VTGPTConfig",
                        model_class="VTGPTForCausalLM", files=files, state_dict={**exp.state_dict, **self._vt_state()},
                        readme_notes=self._notes("kinlm's gpt",
                                                 "generate keeps a KV cache and the last embeddings VT reads."))

    def _export_t5(self, tokenizer) -> HFExport:
        hf = _t5_of(self.inner)
        skip = {"model_type", "architectures", "auto_map", "transformers_version", "_name_or_path", "use_cache",
                "dtype", "torch_dtype"}
        config = {k: v for k, v in hf.config.to_dict().items() if k not in skip}
        name = "kinlm_vt_t5"
        state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in hf.state_dict().items()}
        return HFExport(name=name, config={**config, **self._vt_fields()}, config_class="VTT5Config",
                        model_class="VTT5ForConditionalGeneration",
                        files=_hf_files(f"configuration_{name}.py", f"modeling_{name}.py", "vt_equation.py"),
                        state_dict={**state, **self._vt_state()}, task="seq2seq",
                        readme_notes=self._notes("T5", "generate keeps no cache: each step re-runs the decoder's inputs."))


def _t5_of(model: nn.Module):
    """The transformers T5ForConditionalGeneration a kinlm `transformers` / `t5` model holds, else None."""
    hf = getattr(model, "hf", None)
    return hf if type(hf).__name__ == "T5ForConditionalGeneration" else None


def _hf_files(*names: str) -> dict[str, str]:
    """Source text of this plugin's custom-code templates (kinlm_vt_t5/hf)."""
    root = resources.files("kinlm_vt_t5") / "hf"
    return {n: (root / n).read_text(encoding="utf-8") for n in names}


def clamp_all(model: nn.Module) -> None:
    """``clamp_w`` on every VT wrapper inside ``model`` (under DDP too)."""
    for m in model.modules():
        if isinstance(m, VTEmbeddings):
            m.clamp_w()


def wrap(cfg, inner: nn.Module) -> VTEmbeddings:
    return VTEmbeddings(cfg, inner)
