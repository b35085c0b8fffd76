"""The plugin registry: sources, sinks and preprocessors found through entry points.

The built-ins register exactly like a third party's plugin, in connector's own pyproject.toml:

    [project.entry-points."connector.sources"]
    files = "connector.sources.files:FilesSource"

The entry point's name is the `type` a config uses (`source: {type: files, ...}`) and its value
names the class: a `Source`, `Sink` or `Preprocessor` subclass (see their docstrings for what the
class must provide). Entry points are read on every lookup, and a plugin is imported only when it
is used (or listed by `connector plugins`). A plugin that fails to import is reported with a
warning naming it and the error; it never stops the others from loading.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from connector.errors import ConfigError
from connector.preprocess.base import Preprocessor
from connector.sinks.base import Sink
from connector.sources.base import Source

log = logging.getLogger("connector.plugins")

SOURCES, SINKS, PREPROCESSORS = "connector.sources", "connector.sinks", "connector.preprocessors"
# group -> (base class every plugin of the group subclasses, what the config calls it)
GROUPS = {SOURCES: (Source, "source"), SINKS: (Sink, "sink"), PREPROCESSORS: (Preprocessor, "preprocessor")}


@dataclass
class PluginInfo:
    """One entry point of a group, and whether it loaded."""

    group: str
    name: str
    module: str  # the entry point's value, 'package.module:Class'
    distribution: str | None
    version: str | None
    ok: bool | None = None  # None: not imported yet
    error: str | None = None
    cls: type | None = None

    def to_json(self) -> dict:
        return {"group": self.group, "name": self.name, "module": self.module, "distribution": self.distribution,
                "version": self.version, "status": "ok" if self.ok else "failed", "error": self.error}


_loaded: dict[tuple[str, str, str, str | None], PluginInfo] = {}  # each entry point is imported once


def _info(ep: EntryPoint) -> PluginInfo:
    dist = getattr(ep, "dist", None)
    return PluginInfo(ep.group, ep.name, ep.value, dist.name if dist else None, dist.version if dist else None)


def entries(group: str) -> dict[str, PluginInfo]:
    """The group's entry points by name, none imported. A name two distributions register is
    taken from the first one found on sys.path, with a warning."""
    found: dict[str, PluginInfo] = {}
    for ep in entry_points(group=group):
        info = _info(ep)
        first = found.get(ep.name)
        if first is None:
            found[ep.name] = _loaded.get((group, info.name, info.module, info.distribution), info)
        elif (first.module, first.distribution) != (info.module, info.distribution):
            _warn(f"connector plugin {group} '{ep.name}' is registered by both {first.distribution} ({first.module}) "
                  f"and {info.distribution} ({info.module}); using {first.distribution}")
    return found


def _import(info: PluginInfo) -> PluginInfo:
    if info.ok is not None:
        return info
    base, _ = GROUPS[info.group]
    try:
        obj = EntryPoint(info.name, info.module, info.group).load()
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise TypeError(f"{info.module} is not a {base.__name__} subclass")
        info.ok, info.cls = True, obj
    except Exception as err:  # noqa: BLE001 - a broken plugin must not break the connector
        info.ok, info.error = False, f"{type(err).__name__}: {err}"
        _warn(f"connector plugin {info.group} '{info.name}' ({info.module}, from {info.distribution}) "
              f"failed to load: {info.error}")
    _loaded[(info.group, info.name, info.module, info.distribution)] = info
    return info


def _warn(message: str) -> None:
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def available(group: str) -> dict[str, PluginInfo]:
    """Every plugin of the group, imported, by name: `ok` says whether it loaded, `error` why not."""
    return {name: _import(info) for name, info in sorted(entries(group).items())}


def load(group: str, name: str) -> type:
    """The class registered as `name` in `group`. Raises ConfigError (exit 2) when no plugin
    provides that type, listing the types that are available, or when the plugin fails to load."""
    _, kind = GROUPS[group]
    found = entries(group)
    if name not in found:
        usable = [n for n, info in available(group).items() if info.ok]
        raise ConfigError(
            f"unknown {kind} type {name!r}; available: {', '.join(usable) or '(none)'}. Check the spelling, or "
            f"install the plugin that provides it (`connector plugins` lists what is installed)"
        )
    info = _import(found[name])
    if not info.ok:
        raise ConfigError(f"{kind} type {name!r} comes from the plugin {info.module} ({info.distribution}), "
                          f"which failed to load: {info.error}")
    return info.cls
