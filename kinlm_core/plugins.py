"""The plugin manager and the component registry.

One module-level ``pluggy.PluginManager("kinlm")``. The core's own components are registered
through the same hooks as any plugin (``kinlm_core.builtins``), then every entry point in the
group ``kinlm`` is loaded, each inside its own try/except: a plugin that fails to import or
implements a hook that matches no spec is recorded with its error and skipped, so unrelated
commands keep working.

Debugging:
  KINLM_TRACE=1                  print every hook call, its arguments and results, to stderr
  KINLM_LOAD_PLUGINS=a,b         load only these entry-point distributions ("" loads none)
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import logging
import os
from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from .api import BASES, COMPONENT_KINDS, KINDS

hookimpl = pluggy.HookimplMarker("kinlm")

CORE_DIST = "kinlm-core"
DEFAULT_PLUGINS = ("kinlm_core.builtins.plugin",)
_HOOK_OF_KIND = {k.name: k.hook for k in COMPONENT_KINDS}
TRACE_LOG = logging.getLogger("kinlm.trace")


from .errors import RegistryError  # noqa: E402,F401 - raised here, public in kinlm_core


@dataclass
class PluginInfo:
    name: str  # distribution name
    version: str
    module: str | None = None
    error: str | None = None
    components: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "module": self.module,
                "components": self.components, "error": self.error}


@dataclass
class Registered:
    config: type
    dist: str


class Manager:
    """Loads plugins once and answers 'which components exist' questions."""

    def __init__(self, entry_points: bool = True):
        self.pm = pluggy.PluginManager("kinlm")
        self.pm.add_hookspecs(hookspecs)
        self.infos: list[PluginInfo] = []
        self._registry: dict[str, dict[str, Registered]] = {k: {} for k in KINDS}
        self.clashes: list[str] = []
        self.trace = bool(os.environ.get("KINLM_TRACE"))
        if self.trace:  # KINLM_TRACE=1: every hook call and result on the kinlm.trace logger (stderr)
            if not TRACE_LOG.handlers:
                handler = logging.StreamHandler()
                handler.setFormatter(logging.Formatter("%(message)s"))
                TRACE_LOG.addHandler(handler)
            TRACE_LOG.setLevel(logging.DEBUG)
            self.pm.trace.root.setwriter(lambda msg: TRACE_LOG.debug(msg.rstrip("\n")))
            self.pm.enable_tracing()
        for modname in DEFAULT_PLUGINS:
            self._register(CORE_DIST, _dist_version(CORE_DIST), modname, importlib.import_module, modname)
        if entry_points:
            self._load_entry_points()

    # -- loading ----------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        only = os.environ.get("KINLM_LOAD_PLUGINS")
        allowed = None if only is None else {n.strip().lower() for n in only.split(",") if n.strip()}
        seen = set()
        for ep in md.entry_points(group="kinlm"):
            dist = ep.dist.name if ep.dist else ep.name
            version = ep.dist.version if ep.dist else "?"
            if (dist, ep.value) in seen:
                continue
            seen.add((dist, ep.value))
            if dist == CORE_DIST or (allowed is not None and _norm(dist) not in {_norm(a) for a in allowed}):
                continue
            self._register(dist, version, ep.value, lambda _v, ep=ep: ep.load(), ep.value)

    def _register(self, dist: str, version: str, module: str, loader, arg) -> None:
        info = PluginInfo(name=dist, version=version, module=module)
        self.infos.append(info)
        try:
            plugin = loader(arg)
        except BaseException as e:  # noqa: BLE001 - a broken plugin must never break kinlm
            info.error = f"import failed: {type(e).__name__}: {e}"
            return
        try:
            self.pm.register(plugin, name=dist)
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            info.error = f"invalid hook implementation in {dist}: {e}"
            return
        try:
            found = self._components_of(plugin)
        except Exception as e:  # noqa: BLE001
            self.pm.unregister(plugin)
            info.error = f"registering components failed: {type(e).__name__}: {e}"
            return
        for kind, classes in found.items():
            names = info.components.setdefault(kind, [])
            for cls in classes:
                name = cls.component_name()
                names.append(name)
                prev = self._registry[kind].get(name)
                if prev is not None and prev.dist != dist:
                    msg = (f"{kind} '{name}' is registered by two distributions: {prev.dist} and {dist}; "
                           f"uninstall one of them")
                    self.clashes.append(msg)
                    info.error = msg
                    continue
                self._registry[kind][name] = Registered(cls, dist)

    def _components_of(self, plugin) -> dict[str, list[type]]:
        out: dict[str, list[type]] = {}
        for kind, hook in _HOOK_OF_KIND.items():
            impl = getattr(plugin, hook, None)
            if impl is None:
                continue
            classes = list(impl() or [])
            if self.trace:
                TRACE_LOG.debug(f"kinlm trace: {hook}() [{self.pm.get_name(plugin)}] -> {classes!r}")
            base = BASES[kind]
            for c in classes:
                if not (isinstance(c, type) and issubclass(c, base)):
                    raise TypeError(f"{hook} returned {c!r}, not a subclass of kinlm_core.api.{base.__name__}")
                if "type" not in c.model_fields or not isinstance(c.model_fields["type"].default, str):
                    raise TypeError(f"{c.__name__} needs a field type: Literal['name'] = 'name'")
            out[kind] = classes
        return out

    # -- the registry -----------------------------------------------------------------------
    def registry(self) -> dict[str, dict[str, Registered]]:
        """kind -> component name -> Registered(config class, distribution)."""
        if self.clashes:
            raise RegistryError("; ".join(self.clashes))
        return self._registry

    def components(self, kind: str) -> dict[str, type]:
        return {n: r.config for n, r in self.registry()[kind].items()}

    def get(self, kind: str, name: str) -> type:
        comps = self.components(kind)
        if name not in comps:
            raise RegistryError(unknown_message(kind, name, comps, self.failed()))
        return comps[name]

    def plugins(self) -> list[PluginInfo]:
        return list(self.infos)

    def failed(self) -> list[PluginInfo]:
        """Installed plugins that could not be loaded (their ``error`` says why)."""
        return [p for p in self.infos if p.error and not p.components]

    @property
    def hook(self):
        return self.pm.hook


def unknown_message(kind: str, name: str, known, failed=()) -> str:
    """``unknown model type 'x'; known: ...`` plus a suggestion, and, when installed plugins
    failed to load, which one (the one whose name contains ``name``, else all) and why."""
    known = sorted(known)
    msg = f"unknown {kind} type '{name}'; known: {', '.join(known) or '(none installed)'}"
    close = difflib.get_close_matches(str(name), known, n=1)
    failed = list(failed)
    tag = _norm(str(name))
    likely = [p for p in failed  # 'cumavg' or 'cumavg_penalty' from kinlm-cumavg
              if tag in _norm(p.name) or tag in _norm(p.module or "") or _norm(p.name).removeprefix("kinlm-") in tag]
    if likely:
        p = likely[0]
        msg += f"; it is probably provided by the plugin {p.name} {p.version}, which failed to load: {p.error}"
    else:
        if close:
            msg += f"; did you mean '{close[0]}'?"
        if failed:
            msg += "; plugins that failed to load: " + "; ".join(f"{p.name} ({p.error})" for p in failed[:3])
    if failed:
        msg += " (kinlm plugins lists them)"
    return msg


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _dist_version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        from . import __version__
        return __version__


_manager: Manager | None = None


def get_manager() -> Manager:
    """The process-wide manager (built on first use)."""
    global _manager
    if _manager is None:
        _manager = Manager()
    return _manager
