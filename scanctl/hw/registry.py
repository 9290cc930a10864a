"""Choose a subsystem implementation by URL, in the manner of ``serial.serial_for_url``.

``open_subsystem("gradient", "sim://?fault=trip@3.5s", context)`` looks up the entry point
``gradient.sim`` in the group ``scanctl.subsystems`` (declared in pyproject.toml) and builds it with
:meth:`from_url`. Construction does no I/O; call ``connect()``. The core never imports a concrete
driver or simulator: new ones register an entry point.

URL options are ``?key=value&key=value``; each implementation declares the options it accepts
(``OPTIONS``: name -> converter) and anything else is a :class:`ConfigError`.

Typing: :func:`open_subsystem` returns the interface of its kind (:data:`INTERFACES`), so mypy checks what
callers do with a subsystem against the Protocols. The class an entry point names is out of mypy's sight
here: ``drivers/__init__.py`` and ``simulators/__init__.py`` assign each class their entry points name to a
``Factory`` of its interface, which makes mypy check that it meets the Protocol, and tests/test_registry.py
checks every registered class at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast, overload
from urllib.parse import parse_qsl, urlsplit

from scanctl.errors import ConfigError
from scanctl.hw.interfaces import GradientSystem, RFSystem, Subsystem, TableSystem

if TYPE_CHECKING:  # a type only: the hardware layer imports no configuration
    from scanctl.config.profile import SystemProfile

#: The interface each kind of subsystem meets (``dict[str, type]``: mypy takes ``type[Subsystem]`` for a
#: concrete class, never a Protocol).
INTERFACES: dict[str, type] = {"gradient": GradientSystem, "rf": RFSystem, "table": TableSystem}
KINDS = tuple(INTERFACES)
GROUP = "scanctl.subsystems"

#: A URL option's converter: the option's text to its value; raises ValueError (or ConfigError) saying why not.
Converter = Callable[[str], Any]
S_co = TypeVar("S_co", bound=Subsystem, covariant=True)


@dataclass(frozen=True)
class SubsystemURL:
    """A parsed subsystem URL: ``scheme://location?options``."""

    url: str
    scheme: str
    location: str  # host[:port] and/or path, as the scheme defines
    options: dict[str, str]


class Factory(Protocol[S_co]):
    """What an entry point of :data:`GROUP` names (a class): the URL options it accepts, and how it is built
    from a URL (without I/O) into a subsystem of interface ``S_co``."""

    @property
    def OPTIONS(self) -> Mapping[str, Converter]: ...

    def from_url(self, url: SubsystemURL, options: dict[str, Any], profile: SystemProfile) -> S_co: ...


def parse_url(url: str) -> SubsystemURL:
    """Split a subsystem URL. Raises ConfigError for a malformed one."""
    parts = urlsplit(url)
    if not parts.scheme or "://" not in url:
        raise ConfigError(f"subsystem URL {url!r} has no scheme (expected e.g. 'sim://')")
    try:
        options = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ConfigError(f"subsystem URL {url!r}: malformed options: {exc}") from exc
    seen: dict[str, str] = {}
    for key, value in options:
        if key in seen:
            raise ConfigError(f"subsystem URL {url!r}: option {key!r} given twice")
        seen[key] = value
    return SubsystemURL(url, parts.scheme, parts.netloc + parts.path, seen)


def available(kind: str) -> list[str]:
    """The URL schemes registered for a subsystem kind."""
    from importlib.metadata import entry_points  # here, not at import: 10 ms that `scanctl check` never needs

    return sorted(ep.name.split(".", 1)[1] for ep in entry_points(group=GROUP) if ep.name.startswith(f"{kind}."))


@overload
def open_subsystem(kind: Literal["gradient"], url: str, profile: SystemProfile) -> GradientSystem: ...
@overload
def open_subsystem(kind: Literal["rf"], url: str, profile: SystemProfile) -> RFSystem: ...
@overload
def open_subsystem(kind: Literal["table"], url: str, profile: SystemProfile) -> TableSystem: ...
@overload
def open_subsystem(kind: str, url: str, profile: SystemProfile) -> Subsystem: ...


def open_subsystem(kind: str, url: str, profile: SystemProfile) -> Subsystem:
    """Build (without connecting) the ``kind`` subsystem that ``url`` names: a subsystem of the interface
    ``INTERFACES[kind]``. Raises ConfigError."""
    if kind not in KINDS:
        raise ConfigError(f"unknown subsystem kind {kind!r} (known: {', '.join(KINDS)})")
    parsed = parse_url(url)
    from importlib.metadata import entry_points

    matches = [ep for ep in entry_points(group=GROUP) if ep.name == f"{kind}.{parsed.scheme}"]
    if not matches:
        known = ", ".join(f"{s}://" for s in available(kind)) or "none"
        raise ConfigError(f"{kind} URL {url!r}: unknown scheme {parsed.scheme!r} (registered: {known})")
    # The one place a subsystem's type is taken on trust: mypy cannot follow an entry point to its class.
    # drivers/__init__.py and simulators/__init__.py assign each registered class to a Factory of its interface
    # (checked by mypy), and tests/test_registry.py checks every registered class against INTERFACES[kind].
    factory = cast(Factory[Subsystem], matches[0].load())
    options: dict[str, Any] = {}
    for key, raw in parsed.options.items():
        convert = factory.OPTIONS.get(key)
        if convert is None:
            accepted = ", ".join(sorted(factory.OPTIONS)) or "none"
            raise ConfigError(f"{kind} URL {url!r}: unknown option {key!r} (accepted: {accepted})")
        try:
            options[key] = convert(raw)
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"{kind} URL {url!r}: option {key}={raw!r}: {exc}") from exc
    return factory.from_url(parsed, options, profile)


def is_remote(world: str) -> bool:
    """True for a ``world`` option (``sim://?world=...``) that is an endpoint (``tcp://HOST:PORT``,
    ``ipc://PATH``): a world across processes; False for a name, a world inside one process. Here, not in
    :mod:`scanctl.simulators.world`, because the launcher asks too and the core imports no simulator."""
    return "://" in world


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


def nonnegative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number >= 0")
    return value


def flag(text: str) -> bool:
    """A converter for on/off options: ``1``/``true`` or ``0``/``false``."""
    if text not in ("0", "1", "true", "false"):
        raise ValueError("must be 0 or 1")
    return text in ("1", "true")


def fault_spec(kinds: tuple[str, ...]) -> Callable[[str], tuple[str, float]]:
    """A converter for ``fault=KIND@TIMEs`` (e.g. ``trip@3.5s``): returns ``(kind, time_s)``."""

    def convert(text: str) -> tuple[str, float]:
        kind, sep, when = text.partition("@")
        if not sep or kind not in kinds:
            raise ValueError(f"expected KIND@TIME with KIND one of {', '.join(kinds)}, e.g. {kinds[0]}@2.5s")
        return kind, nonnegative_float(when.removesuffix("s"))

    return convert
