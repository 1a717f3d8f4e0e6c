"""The raw archive (#30 item 8): every run a page uses, as JSON lines, and the seam the report reads
runs through, so that a page can be rebuilt from the archive alone.

**The seam.** Everything the report (:mod:`.card`, :mod:`.arms`, :mod:`.metrics`,
:mod:`.controls`, :mod:`.registration`, the curves figure) reads of run directories and spec files
goes through four calls of the current source: :func:`read_json` (result.json, spec.json, the
registration stamp, the kept test and untrained evaluations, an analyzer's metrics.json, an arm's
params.json and n-gram figures, a spec file), :func:`records` (a run's metrics.jsonl),
:func:`listing` (a folder's ``seed_*`` runs, an analyzer's steps) and :func:`stale` (whether a run
was made from the arm's spec as it is today). The default source is the disk. Inside
:func:`recording` the disk's answers are also kept; :func:`write` turns them into the archive.
Inside :func:`replaying` the same calls are answered from an archive: nothing else is read, nothing
is evaluated or trained (a question the archive cannot answer reads as a missing file).

**The archive** (``docs/results/archive.jsonl``), one JSON object a line, sorted, each with a
``kind``:

- ``page``: the page's environment (machine, CPU cores, torch and Python versions, the tier and
  the runs folder) and ``compare``: the runs table ``kinlm compare`` wrote for the page;
- ``claim``: a claim as it was reported: its document, file, plugin and registration hash;
- ``run``: one run: its path, seed, tokens seen, parameters, ``values`` (the metric per claim that
  uses it: the per-seed values the tests ran on), its spec.json (``spec``), environment
  (env.json), result.json, registration stamps, kept evaluations (test split, untrained weights),
  analyzers' figures, the metrics.jsonl records the report reads (only the keys it reads) and
  whether its spec is the arm's today;
- ``file``: any other file the report read (a spec file, an arm's params.json, its n-gram control's
  figures), ``listing``: a folder's entries.

Paths inside the repository are kept relative to it, so an archive reads the same anywhere.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from .discovery import REPO

KIND_ORDER = {"page": 0, "compare": 1, "claim": 2, "run": 3, "file": 4, "listing": 5}


def key(path) -> str:
    """A path as the archive names it: relative to the repository when inside it."""
    p = Path(path)
    if p.is_absolute():
        try:
            return str(p.relative_to(REPO))
        except ValueError:
            return str(p)
    return str(p)


class Disk:
    """Reads the disk; with ``keep``, remembers every answer (for :func:`write`)."""

    replay = False

    def __init__(self, keep: bool = False):
        self.keep = keep
        self.files: dict[str, object] = {}
        self.records: dict[str, list] = {}
        self.listings: dict[str, list[str]] = {}
        self.stale: dict[str, list[str]] = {}

    def read_json(self, path):
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            data = None
        if self.keep:
            self.files[key(path)] = data
        return data

    def remember(self, path, data) -> None:
        if self.keep:
            self.files[key(path)] = data

    def read_records(self, run) -> list[dict]:
        out = []
        f = Path(run) / "metrics.jsonl"
        for line in (f.read_text().splitlines() if f.exists() else []):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        if self.keep:
            self.records[key(run)] = out
        return out

    def list(self, folder, pattern: str) -> list[str]:
        names = sorted(p.name for p in Path(folder).glob(pattern))
        if self.keep:
            self.listings[f"{key(folder)}|{pattern}"] = names
        return names

    def stale_keys(self, run, spec, overrides, compute) -> list[str]:
        keys = compute()
        if self.keep:
            self.stale[f"{key(run)}|{json.dumps([key(spec), list(overrides)])}"] = keys
        return keys


class Replay:
    """Answers the seam's calls from an archive's lines."""

    replay = True

    def __init__(self, lines: list[dict]):
        self.files, self.records, self.listings, self.stale = {}, {}, {}, {}
        for d in lines:
            if d["kind"] == "file":
                self.files[d["path"]] = d["data"]
            elif d["kind"] == "listing":
                self.listings[f"{d['folder']}|{d['pattern']}"] = d["entries"]
            elif d["kind"] == "run":
                for name, data in d["files"].items():
                    self.files[f"{d['run']}/{name}"] = data
                self.records[d["run"]] = d["metrics"]
                for k, v in d["stale"].items():
                    self.stale[f"{d['run']}|{k}"] = v

    def read_json(self, path):
        return self.files.get(key(path))

    def remember(self, path, data) -> None:
        pass

    def read_records(self, run) -> list[dict]:
        return self.records.get(key(run), [])

    def list(self, folder, pattern: str) -> list[str]:
        return self.listings.get(f"{key(folder)}|{pattern}", [])

    def stale_keys(self, run, spec, overrides, compute) -> list[str]:
        return self.stale.get(f"{key(run)}|{json.dumps([key(spec), list(overrides)])}", ["(not in the archive)"])


_SOURCE: Disk | Replay = Disk()


def source() -> Disk | Replay:
    return _SOURCE


def read_json(path):
    """A JSON file's content (None when missing or unreadable), from the current source."""
    return _SOURCE.read_json(path)


def remember(path, data) -> None:
    """A file the report just wrote (a kept evaluation): recorded like one it read."""
    _SOURCE.remember(path, data)


def records(run) -> list[dict]:
    """A run's metrics.jsonl records, from the current source."""
    return _SOURCE.read_records(run)


def listing(folder, pattern: str) -> list[str]:
    """The names in ``folder`` matching ``pattern``, sorted, from the current source."""
    return _SOURCE.list(folder, pattern)


def stale(run, spec, overrides, compute) -> list[str]:
    """:func:`.arms.stale_keys`'s answer (``compute`` on the disk), from the current source."""
    return _SOURCE.stale_keys(run, spec, overrides, compute)


def replaying_now() -> bool:
    """True inside :func:`replaying`: nothing may be evaluated or trained."""
    return _SOURCE.replay


@contextlib.contextmanager
def _using(src):
    global _SOURCE
    old, _SOURCE = _SOURCE, src
    try:
        yield src
    finally:
        _SOURCE = old


def recording():
    """``with recording() as rec:`` the report reads the disk and ``rec`` keeps what it read."""
    return _using(Disk(keep=True))


def replaying(lines: list[dict]):
    """``with replaying(read(path)):`` the report reads the archive instead of the disk."""
    return _using(Replay(lines))


# --- writing and reading the archive ------------------------------------------------------------


def _kept_keys(claims) -> set[str]:
    """The metrics.jsonl keys the report can read for these claims: their metrics', lr grids' and
    controls' keys, tokens seen and peak memory, and every eval/ and test/ key."""
    keep = {"eval/tokens_seen", "perf/tokens_seen", "perf/peak_mem_mb"}
    for c in claims:
        for m in [c.metric, *(ctl.metric for ctl in c.controls if ctl.metric is not None)]:
            if getattr(m, "key", None):
                keep.add(m.key)
        if c.lr_grid:
            keep.add(c.lr_grid.select_on)
    return keep


def _thin(recs: list[dict], keep: set[str]) -> list[dict]:
    out = []
    for r in recs:
        kept = {k: v for k, v in r.items() if k in keep or k.startswith(("eval/", "test/"))}
        if kept:
            out.append({**({"step": r["step"]} if "step" in r else {}), **kept})
    return out


def lines(rec: Disk, installed, cards: list[dict], page: dict, compare: str | None = None) -> list[dict]:
    """The archive's lines from what a report read (``rec``), its claims and cards, the page's
    environment and the runs table."""
    keep = _kept_keys([i.claim for i in installed])
    from .registration import registration_hash

    out: list[dict] = [{"kind": "page", **page}]
    if compare is not None:
        out.append({"kind": "compare", "markdown": compare})
    for i in installed:
        out.append({"kind": "claim", "id": i.claim.id, "file": key(i.path), "plugin": i.dist,
                    "hash": registration_hash(i.claim), "document": i.claim.model_dump(mode="json",
                                                                                      exclude_unset=True)})
    values: dict[str, dict] = {}
    for c in cards:
        for a in c["arms"]:
            for r, v in zip(a["runs"], a["values"]):
                values.setdefault(key(r), {})[c["id"]] = v
    runs = sorted(set(rec.records) | {p for p in values})
    files = dict(rec.files)
    for run in runs:
        mine = {k[len(run) + 1:]: files.pop(k) for k in list(files) if k.startswith(run + "/")}
        spec, result = mine.get("spec.json") or {}, mine.get("result.json") or {}
        env = None
        with contextlib.suppress(OSError, ValueError):
            env = json.loads((REPO / run).joinpath("env.json").read_text())  # a relative path is under the repository
        out.append({"kind": "run", "run": run, "seed": spec.get("seed"), "tokens_seen": result.get("tokens_seen"),
                    "params": result.get("params"), "values": values.get(run, {}), "spec": spec, "environment": env,
                    "files": mine, "metrics": _thin(rec.records.get(run, []), keep),
                    "stale": {k[len(run) + 1:]: v for k, v in rec.stale.items() if k.startswith(run + "|")}})
    out += [{"kind": "file", "path": p, "data": d} for p, d in files.items()]
    out += [{"kind": "listing", "folder": k.split("|", 1)[0], "pattern": k.split("|", 1)[1], "entries": v}
            for k, v in rec.listings.items()]
    return sorted(out, key=lambda d: (KIND_ORDER[d["kind"]], d.get("id") or d.get("run") or d.get("path")
                                      or f"{d.get('folder', '')}|{d.get('pattern', '')}"))


def write(path, archive_lines: list[dict]) -> None:
    Path(path).write_text("".join(json.dumps(d, sort_keys=True, separators=(",", ":")) + "\n"
                                  for d in archive_lines))


def read(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def installed_from(archive_lines: list[dict]):
    """The claims as they were reported (``Installed``, their documents from the archive, their
    files where they were)."""
    from .discovery import Installed
    from .schema import Claim

    return [Installed(claim=Claim.model_validate(d["document"]), path=REPO / d["file"], dist=d["plugin"])
            for d in archive_lines if d["kind"] == "claim"]
