"""lm-evaluation-harness from kinlm (``kinlm eval RUN --lm-eval TASKS``; the optional extra
``kinlm-core[lmeval]``).

The run's model is exported (:func:`kinlm_core.engine.export.export_final`) into a temporary folder
and scored by the harness's own ``hf`` model on that folder (``trust_remote_code=True`` for
custom-code exports), so the numbers are the ones anyone gets from the exported model.

kinlm's shipped BLiMP paradigms are harness tasks as well: ``kinlm_blimp_<paradigm>`` (and the group
``kinlm_blimp``), the harness's own ``blimp_*`` task definition (empty context, the grammatical
sentence as choice 0, accuracy) reading ``kinlm_core/data/blimp/<paradigm>.jsonl.gz`` through the
datasets ``json`` builder, so they need no hub. Their YAMLs are written into a temporary include
folder on each call (:func:`write_blimp_tasks`); ``include`` adds a folder of one's own task YAMLs.
"""

from __future__ import annotations

import json
from pathlib import Path

BLIMP_PREFIX = "kinlm_blimp_"
BLIMP_GROUP = "kinlm_blimp"


def write_blimp_tasks(folder: Path) -> list[str]:
    """One task YAML per shipped BLiMP paradigm plus the group's, into ``folder``; returns the task names.
    (JSON is YAML: the files are written with json.dumps.)"""
    from .blimp import DATA, PARADIGMS

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for p in sorted(PARADIGMS):
        task = BLIMP_PREFIX + p
        cfg = {"task": task, "dataset_path": "json",
               "dataset_kwargs": {"data_files": {"train": str(DATA / f"{p}.jsonl.gz")}},
               "output_type": "multiple_choice", "test_split": "train", "doc_to_text": "", "doc_to_target": 0,
               "doc_to_choice": "{{[sentence_good, sentence_bad]}}", "num_fewshot": 0,
               "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
               "metadata": {"version": 1.0, "source": "kinlm_core/data/blimp (BLiMP, Warstadt et al. 2020, CC BY 4.0)"}}
        (folder / f"{task}.yaml").write_text(json.dumps(cfg, indent=1) + "\n")
        names.append(task)
    group = {"group": BLIMP_GROUP, "task": names,
             "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
             "metadata": {"version": 1.0}}
    (folder / f"_{BLIMP_GROUP}.yaml").write_text(json.dumps(group, indent=1) + "\n")
    return names


def available() -> str | None:
    """None when lm-evaluation-harness is importable, else why not (one line)."""
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        return (f"lm-evaluation-harness is not installed ({e}); install it with: "
                "pip install 'kinlm-core[lmeval]'")
    return None


def evaluate(folder: Path, tasks: list[str], include: Path | None = None, limit: int | None = None,
             device: str = "cpu", batch_size: int = 8) -> dict:
    """``lm_eval.simple_evaluate`` with the ``hf`` model on the export ``folder``; returns its result
    (without per-sample records). ``limit``: the first N documents of each task."""
    import tempfile

    import lm_eval
    from lm_eval.tasks import TaskManager

    config = json.loads((Path(folder) / "config.json").read_text())
    model_args = {"pretrained": str(folder), "trust_remote_code": True, "dtype": "float32", "device": device,
                  "backend": "seq2seq" if config.get("is_encoder_decoder") else "causal"}
    with tempfile.TemporaryDirectory(prefix="kinlm-lm-eval-") as tmp:
        write_blimp_tasks(Path(tmp) / "kinlm_blimp")
        paths = [str(Path(tmp))] + ([str(include)] if include is not None else [])
        manager = TaskManager(include_path=paths)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise ValueError(f"unknown lm-eval task(s): {', '.join(unknown)} (kinlm's BLiMP: {BLIMP_GROUP}, "
                             f"{BLIMP_PREFIX}<paradigm>; --lm-eval-include adds a folder of task YAMLs)")
        out = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=list(tasks), limit=limit,
                                      batch_size=batch_size, task_manager=manager, log_samples=False,
                                      bootstrap_iters=0)
    out.pop("samples", None)
    return out


def table(result: dict) -> str:
    """The harness's own results table (markdown)."""
    from lm_eval.utils import make_table

    text = make_table(result)
    if result.get("groups"):
        text += "\n" + make_table(result, "groups")
    return text


def to_json(result: dict) -> str:
    from lm_eval.utils import handle_non_serializable

    return json.dumps(result, indent=2, default=handle_non_serializable) + "\n"


def scores(result: dict) -> dict[str, float]:
    """{"<task>/<metric>": value} for each task and group's metrics (those the harness lists in
    ``higher_is_better``; stderr and sample counts left out); the "none" filter suffix is dropped."""
    out = {}
    better = result.get("higher_is_better") or {}
    for task, metrics in (result.get("results") or {}).items():
        if not isinstance(metrics, dict):
            continue
        names = better.get(task)
        for key, value in metrics.items():
            name, _, flt = key.partition(",")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or "stderr" in name:
                continue
            if (names is not None and name not in names) or name in ("alias", "samples", "sample_len"):
                continue
            out[f"{task}/{name}" + (f",{flt}" if flt and flt != "none" else "")] = float(value)
    return out
