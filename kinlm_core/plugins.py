"""The plugin manager and the component registry.

One module-level ``pluggy.PluginManager("kinlm")``. The core's own components are registered
through the same hooks as any plugin (``kinlm_core.builtins``), then every entry point in the
group ``kinlm`` is loaded, each inside its own try/except: a plugin that fails to import or
implements a hook that matches no spec is recorded with its error and traceback and skipped, so
unrelated commands keep working.

One plugin's fault stays its own:
  - a component name two distributions register is disabled (that name only); using it names the
    distribution installed last (the newcomer). The core's built-ins always win: a plugin's
    ``gpt`` is ignored with a warning naming the plugin.
  - ``blame(exc)`` finds the distribution (and hook) whose code raised an exception, so the CLI
    can name it; ``watch_first_output`` checks a model's first output against its batch.

Debugging:
  KINLM_TRACE=1                  print every hook call, its arguments and results, and the
                                 traceback of every plugin that failed to load, to stderr
  KINLM_LOAD_PLUGINS=a,b         load only these entry-point distributions ("" loads none)
  KINLM_DISABLE_PLUGINS=a,b      load all but these (distribution or entry-point names)
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import inspect
import logging
import os
import traceback
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
    error: str | None = None  # why it failed to load (then it provides nothing)
    components: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # names it registered that are ignored or disabled
    traceback: str | None = None  # of the failure in ``error``
    entry_point: str | None = None
    installed: float | None = None  # mtime of its .dist-info: which of two clashing plugins came last

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "module": self.module,
                "components": self.components, "error": self.error, "warnings": self.warnings,
                "traceback": self.traceback}

    def fail(self, error: str, trace: bool) -> None:
        """Record a load failure, with the traceback of the exception being handled."""
        self.error = error
        self.traceback = traceback.format_exc()
        if trace:
            TRACE_LOG.debug(f"kinlm trace: plugin {self.name} failed to load: {error}\n{self.traceback}")


class PluginFault(Exception):
    """A plugin (or the core) broke the contract of its kind, e.g. a model's output has the wrong
    shape. A bug of that distribution: the CLI prints the message and exits 1."""


@dataclass
class Registered:
    config: type
    dist: str


@dataclass
class Blame:
    """Where an exception came from: a plugin distribution, the hook it ran in, the raising line."""
    dist: PluginInfo
    hook: str | None
    where: str

    def __str__(self) -> str:
        hook = f", hook {self.hook}" if self.hook else ""
        return f"plugin {self.dist.name} {self.dist.version}{hook}, at {self.where}"


class Manager:
    """Loads plugins once and answers 'which components exist' questions."""

    def __init__(self, entry_points: bool = True):
        self.pm = pluggy.PluginManager("kinlm")
        self.pm.add_hookspecs(hookspecs)
        self.infos: list[PluginInfo] = []
        self._registry: dict[str, dict[str, Registered]] = {k: {} for k in KINDS}
        self.disabled: dict[str, dict[str, str]] = {k: {} for k in KINDS}  # kind -> name -> why
        self.turned_off: list[str] = []  # distributions KINLM_DISABLE_PLUGINS turned off
        self.warned = False  # the CLI printed warnings() once
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
        allowed = _names_in("KINLM_LOAD_PLUGINS")
        off = _names_in("KINLM_DISABLE_PLUGINS") or set()
        seen = set()
        for ep in md.entry_points(group="kinlm"):
            dist = ep.dist.name if ep.dist else ep.name
            version = ep.dist.version if ep.dist else "?"
            if (dist, ep.value) in seen:
                continue
            seen.add((dist, ep.value))
            if dist == CORE_DIST or (allowed is not None and _norm(dist) not in allowed):
                continue
            if _norm(dist) in off or _norm(ep.name) in off:
                if dist not in self.turned_off:
                    self.turned_off.append(dist)
                continue
            self._register(dist, version, ep.value, lambda _v, ep=ep: ep.load(), ep.value,
                           entry_point=ep.name, installed=_install_time(ep.dist))

    def _register(self, dist: str, version: str, module: str, loader, arg, entry_point: str | None = None,
                  installed: float | None = None) -> None:
        info = PluginInfo(name=dist, version=version, module=module, entry_point=entry_point, installed=installed)
        self.infos.append(info)
        try:
            plugin = loader(arg)
        except BaseException as e:  # noqa: BLE001 - a broken plugin must never break kinlm
            info.fail(f"import failed: {type(e).__name__}: {e}", self.trace)
            return
        try:
            self.pm.register(plugin, name=dist)
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            info.fail(f"invalid hook implementation in {dist}: {e}{self._hook_suggestions(plugin)}", self.trace)
            return
        try:
            found = self._components_of(plugin)
        except Exception as e:  # noqa: BLE001
            self.pm.unregister(plugin)
            info.fail(f"registering components failed: {e}", self.trace)
            return
        for kind, classes in found.items():
            for cls in classes:
                self._add(kind, cls.component_name(), cls, info)

    def _add(self, kind: str, name: str, cls: type, info: PluginInfo) -> None:
        """Register one component; on a clash the core's built-in wins, and between two plugins
        the name is disabled, blaming the one installed last."""
        dist = info.name
        prev = self._registry[kind].get(name)
        if name in self.disabled[kind]:
            info.warnings.append(f"{kind} '{name}' is disabled: {self.disabled[kind][name]}")
            return
        if prev is None or prev.dist == dist:
            self._registry[kind][name] = Registered(cls, dist)
            info.components.setdefault(kind, []).append(name)
            return
        if prev.dist == CORE_DIST:
            info.warnings.append(f"{kind} '{name}' is a kinlm-core built-in; {dist}'s {kind} '{name}' "
                                 f"({cls.__module__}.{cls.__qualname__}) is ignored: {dist} should rename it")
            return
        old = next(p for p in self.infos if p.name == prev.dist)
        new = info  # the newcomer: the one installed last, else the one loaded last
        known = old.installed is not None and new.installed is not None and old.installed != new.installed
        if known and old.installed > new.installed:
            old, new = new, old
        last = "installed last" if known else "loaded last"
        why = (f"{new.name} {new.version} ({last}) registers the {kind} name '{name}' that "
               f"{old.name} {old.version} already provides; both are off until {new.name} renames it "
               f"(or: kinlm uninstall {new.name})")
        del self._registry[kind][name]
        self.disabled[kind][name] = why
        for p in (old, new):
            if name in p.components.get(kind, []):
                p.components[kind].remove(name)
                if not p.components[kind]:
                    del p.components[kind]
        new.warnings.append(f"{kind} '{name}' is disabled: {why}")

    def _hook_suggestions(self, plugin) -> str:
        """'; did you mean ...?' for each hook implementation of ``plugin`` that matches no hookspec."""
        specs = [n for n, caller in vars(self.pm.hook).items() if caller.spec is not None]
        out = ""
        for attr in dir(plugin):
            opts = self.pm.parse_hookimpl_opts(plugin, attr)
            hook = (opts or {}).get("specname") or attr
            if opts is not None and hook not in specs:
                close = difflib.get_close_matches(hook, specs, n=1, cutoff=0.6)
                if close:
                    out += f"; {hook}: did you mean {close[0]}?"
        return out

    def _components_of(self, plugin) -> dict[str, list[type]]:
        out: dict[str, list[type]] = {}
        for kind, hook in _HOOK_OF_KIND.items():
            impl = getattr(plugin, hook, None)
            if impl is None:
                continue
            try:
                classes = list(impl() or [])
            except Exception as e:  # noqa: BLE001 - said with the hook's name
                raise RuntimeError(f"hook {hook} raised {type(e).__name__}: {e}") from e
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
        return self._registry

    def warnings(self) -> list[str]:
        """One line per ignored or disabled component name, each naming the plugin to blame."""
        return [f"{p.name} {p.version}: {w}" for p in self.infos for w in p.warnings]

    def components(self, kind: str) -> dict[str, type]:
        return {n: r.config for n, r in self.registry()[kind].items()}

    def get(self, kind: str, name: str) -> type:
        comps = self.components(kind)
        if name not in comps:
            raise RegistryError(unknown_message(kind, name, comps, self.failed(), self.disabled.get(kind)))
        return comps[name]

    def plugins(self) -> list[PluginInfo]:
        return list(self.infos)

    def dist_of(self, module: str) -> PluginInfo | None:
        """The plugin distribution whose package holds ``module`` (a module's ``__name__``); None
        for the core and for modules no loaded plugin provides."""
        top = module.split(".")[0]
        if top == "kinlm_core":
            return None
        for info in self.infos:
            if info.error is None and info.name != CORE_DIST and info.module and \
                    info.module.split(":")[0].split(".")[0] == top:
                return info
        for kind, reg in self._registry.items():  # components defined outside the hook's package
            for r in reg.values():
                if r.dist != CORE_DIST and r.config.__module__.split(".")[0] == top:
                    return next((i for i in self.infos if i.name == r.dist), None)
        return None

    def blame(self, exc: BaseException) -> Blame | None:
        """Which plugin raised ``exc``: the innermost frame of its traceback in a plugin's package,
        and the hook being run when that frame is (inside) one of its hook implementations."""
        impls = {}  # the code of every hook implementation -> its hook
        for hook, caller in vars(self.pm.hook).items():
            for impl in caller.get_hookimpls():
                func = inspect.unwrap(impl.function)
                if inspect.isfunction(func) or inspect.ismethod(func):
                    impls[func.__code__] = hook
        found = None
        for frame, lineno in traceback.walk_tb(exc.__traceback__):
            info = self.dist_of(str(frame.f_globals.get("__name__", "")))
            if info is None:
                continue
            if found is None or found.dist is not info:
                found = Blame(info, None, f"{frame.f_code.co_filename}:{lineno} in {frame.f_code.co_name}")
            else:
                found.where = f"{frame.f_code.co_filename}:{lineno} in {frame.f_code.co_name}"
            found.hook = impls.get(frame.f_code, found.hook)
        return found

    def failed(self) -> list[PluginInfo]:
        """Installed plugins that could not be loaded (their ``error`` says why)."""
        return [p for p in self.infos if p.error and not p.components]

    @property
    def hook(self):
        return self.pm.hook


def unknown_message(kind: str, name: str, known, failed=(), disabled=None) -> str:
    """``unknown model type 'x'; known: ...`` plus a suggestion, and, when installed plugins
    failed to load, which one (the one whose name contains ``name``, else all) and why.
    ``disabled``: name -> why, for names two distributions register (``Manager.disabled[kind]``)."""
    if disabled and name in disabled:
        return f"{kind} type '{name}' is disabled: {disabled[name]}"
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


def _names_in(var: str) -> set[str] | None:
    """The comma-separated names in $var, normalised (None when it is unset)."""
    value = os.environ.get(var)
    return None if value is None else {_norm(n.strip()) for n in value.split(",") if n.strip()}


def _install_time(dist) -> float | None:
    """When ``dist`` was installed: the mtime of its metadata folder (None when unknown)."""
    if not isinstance(dist, md.PathDistribution):
        return None
    try:
        return os.stat(dist._path).st_mtime  # its .dist-info folder
    except OSError:
        return None


def _dist_version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        from . import __version__
        return __version__


_manager: Manager | None = None


def loaded() -> bool:
    """Whether this process has loaded the plugins (built the manager)."""
    return _manager is not None


def get_manager() -> Manager:
    """The process-wide manager (built on first use)."""
    global _manager
    if _manager is None:
        _manager = Manager()
    return _manager
