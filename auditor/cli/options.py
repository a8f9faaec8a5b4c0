"""Options shared by the commands that scan (``scan``, ``evaluate``).

Nothing here is declared by hand: the options, :func:`scan_config` (options -> the
:class:`ScanConfig`), :func:`scan_argv` (its inverse, for the rescan) and
:func:`options_markdown` (the docs' tables) all walk the settings fields of
:class:`ScanConfig` and their ``cli`` metadata (:class:`~auditor.config.CliOption`). A new
setting is one field with ``metadata=cli(...)`` in :mod:`auditor.config`.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, fields, is_dataclass
from typing import Any, NamedTuple

import click

from auditor.cli.help import SectionOption, command_markdown
from auditor.config import CLI, CliCopy, CliOption, DataArgs, ScanConfig
from auditor.errors import ConfigError
from auditor.influence.solvers import SOLVER_NAMES
from auditor.models import MODEL_NAMES

Decorator = Callable[[Callable], Callable]

#: The names each registry a :class:`CliOption`'s ``registry`` names accepts (the
#: config may not import the registries; the CLI may).
REGISTRIES: dict[str, tuple[str, ...]] = {"solvers": SOLVER_NAMES, "models": MODEL_NAMES}


class Binding(NamedTuple):
    """Which :class:`ScanConfig` field a scan option sets, and how a rescan writes it back."""

    #: The option (``--seed``).
    option: str
    #: The field of :class:`ScanConfig` that holds the setting (``data``, ``model``,
    #: ``solver``, ``rule``), or ``None`` for a field of ScanConfig itself.
    group: str | None
    #: The setting's field in that group.
    name: str
    #: Value -> text for the rescan; ``None``: not repeated (where the data comes from,
    #: given to :func:`scan_argv` apart, and the solver's copy of --seed: the data's
    #: repeats it).
    text: Callable[[Any], str] | None


class _Setting(NamedTuple):
    group: str | None
    field: Field
    hint: Any
    declaration: CliOption | CliCopy


def _groups() -> dict[str | None, type | None]:
    """The settings dataclass of each group (``None``: ScanConfig's own fields)."""
    hints = typing.get_type_hints(ScanConfig)
    return {
        None: None,
        **{f.name: hints[f.name] for f in fields(ScanConfig) if is_dataclass(hints[f.name])},
    }


def _settings() -> Iterator[_Setting]:
    """Every field of :class:`ScanConfig` (its own and its groups') that has ``cli``
    metadata, in declaration order."""
    hints = typing.get_type_hints(ScanConfig)
    for f in fields(ScanConfig):
        if is_dataclass(cls := hints[f.name]):
            inner = typing.get_type_hints(cls)
            for g in fields(cls):
                if CLI in g.metadata:
                    yield _Setting(f.name, g, inner[g.name], g.metadata[CLI])
        elif CLI in f.metadata:
            yield _Setting(None, f, hints[f.name], f.metadata[CLI])


def _plain_type(flag: str, hint: Any) -> type:
    """``int``, ``float`` or ``str`` from a field's annotation (``float | None`` -> float)."""
    args = [hint]
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1 and args[0] in (int, float, str):
        return args[0]
    raise TypeError(f"{flag}: a {hint} field needs parse= in its cli metadata")


def _parser(
    parse: Callable[[str], Any],
) -> Callable[[click.Context, click.Parameter, str | None], Any]:
    """A Click callback that parses the typed text (a :class:`ConfigError` is a usage
    error of the option)."""

    def callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def _click_option(option: CliOption, setting: _Setting) -> Decorator:
    """The ``click.option`` decorator the setting ``option`` declares describes."""
    default = None if setting.field.default is MISSING else setting.field.default
    attrs: dict[str, Any] = {
        "cls": SectionOption,
        "section": option.section,
        "help": option.help,
        "metavar": option.metavar,
    }
    if option.parse is not None:
        attrs["type"] = str
        attrs["callback"] = _parser(option.parse)
        if option.default_text is not None:
            default = option.default_text
        elif default is not None:
            default = option.to_text(default) if option.to_text else str(default)
    elif option.registry is not None:
        attrs["type"] = click.Choice(list(REGISTRIES[option.registry]))
    elif option.choices is not None:
        attrs["type"] = click.Choice(list(option.choices))
    elif option.minimum is not None:
        attrs["type"] = click.IntRange(min=option.minimum)
    else:
        attrs["type"] = _plain_type(option.flag, setting.hint)
    if default is not None:
        attrs.update(default=default, show_default=True)
    return click.option(option.flag, **attrs)


def _tables() -> tuple[list[Binding], dict[str, CliOption], list[tuple[str, Decorator]]]:
    """The bindings, the declarations by option, and the ``(option, click.option)`` list."""
    bindings: list[Binding] = []
    declared: dict[str, CliOption] = {}
    options: list[tuple[str, Decorator]] = []
    settings = list(_settings())
    for s in settings:
        if isinstance(option := s.declaration, CliOption):
            if option.flag in declared:
                raise TypeError(f"{option.flag} is declared twice")
            declared[option.flag] = option
            options.append((option.flag, _click_option(option, s)))
    for s in settings:
        flag = s.declaration.flag
        if flag not in declared:
            raise TypeError(f"{s.group}.{s.field.name} copies {flag}, which no field declares")
        text = s.declaration.to_text if isinstance(s.declaration, CliOption) else None
        bindings.append(Binding(flag, s.group, s.field.name, text))
    return bindings, declared, options


#: ``_FIELDS``: which :class:`ScanConfig` field each scan option sets, one :class:`Binding`
#: per field (``--seed`` sets the data's and the solver's seed). ``_DECLARED``: each
#: option's declaration. ``_SCAN_OPTIONS``: ``(option, click.option)`` of every option of
#: ``auditor scan`` that builds its :class:`ScanConfig`, in declaration order.
_FIELDS, _DECLARED, _SCAN_OPTIONS = _tables()

#: The settings a rescan repeats: all of :data:`_FIELDS` but where the data comes from.
_REPEATED = [b for b in _FIELDS if b.text is not None]


def scan_options(*, without: tuple[str, ...] = ()) -> Decorator:
    """Every option of ``auditor scan`` that builds its :class:`ScanConfig`, but the
    options named in ``without`` (e.g. ``("--seed",)``)."""
    unknown = set(without) - set(_DECLARED)
    if unknown:
        raise ValueError(f"no scan option {', '.join(sorted(unknown))}")

    def decorate(func: Callable) -> Callable:
        for name, option in reversed(_SCAN_OPTIONS):
            if name not in without:
                func = option(func)
        return func

    return decorate


def _param(option: str) -> str:
    """Click's parameter name of an option: ``--test-split`` -> ``test_split``."""
    return option[2:].replace("-", "_")


def scan_config(opts: dict) -> ScanConfig:
    """The :class:`ScanConfig` the parsed ``scan_options`` describe (through
    :data:`_FIELDS`); a field whose option was left out (``evaluate`` has no --seed)
    keeps its default."""
    groups = _groups()
    values: dict[str | None, dict[str, Any]] = {group: {} for group in groups}
    for option, group, name, _text in _FIELDS:
        if _param(option) in opts:
            values[group][name] = opts[_param(option)]
    nested: dict[str, Any] = {
        group: cls(**values[group])
        for group, cls in groups.items()
        if group is not None and cls is not None
    }
    return ScanConfig(**nested, **values[None])


def _value(config: ScanConfig, group: str | None, name: str) -> Any:
    return getattr(config if group is None else getattr(config, group), name)


def scan_argv(config: ScanConfig, train: str, test: str | None) -> list[str]:
    """The ``auditor scan`` argv that repeats ``config`` on the data ``train`` (and
    ``test``): the inverse of :func:`scan_config`, naming each option whose value is not
    the default, and those declared ``always`` (``--solver``)."""
    default = ScanConfig(DataArgs(train=train))
    argv = ["auditor", "scan", "--train", train, *(["--test", test] if test else [])]
    for option, group, name, text in _REPEATED:
        value, stock = _value(config, group, name), _value(default, group, name)
        if text and value is not None and (value != stock or _DECLARED[option].always):
            argv += [option, text(value)]
    return argv


def options_markdown() -> str:
    """``auditor scan``'s options as markdown, one table per section (``scripts/docs``
    writes it into docs/usage.md)."""
    from auditor.cli.commands import scan  # imported here: commands imports this module

    return command_markdown(scan)
