"""The value types of every config model (the service's, each provider's, each DNS plugin's).

Each type is a pydantic field whose validator takes the raw YAML value and returns the clean one,
or fails with the sentence a user reads after the key path (``must be an integer >= 0, got
"five"``): the loader (chalicelib/config.py) prefixes the path and lists every problem at once.
The validators are pydantic ``PlainValidator``s, so pydantic adds no coercion of its own and the
messages stay ours. ``SettingsModel`` is the base of every settings block: unknown keys are kept
aside (``model_extra``) for the loader to warn about, values are frozen, and a model's schema is
built on its first validation (``defer_build``), so a cold start pays only for the blocks it
reads.
"""

from __future__ import annotations

import os
import re
from types import MappingProxyType
from typing import Annotated, Any, Callable, Container, Mapping, NoReturn, Sequence, TypeVar, Union

from pydantic import BaseModel, ConfigDict, PlainValidator, SecretStr, ValidationError
from pydantic_core import PydanticCustomError

from chalicelib.auth.secrets import SecretReference

Checker = Callable[[Any], Any]

# pydantic looks for plugins (importlib.metadata's entry points: every dist-info on the path) when
# it builds a model's first schema. vmpool uses none, and the scan would cost every cold start
# (importlib.metadata itself is deferred: chalicelib/deferred_imports.py).
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")


class SettingsModel(BaseModel):
    """A block of settings: frozen, typed, unknown keys kept in ``model_extra`` (warned, not fatal)."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True, arbitrary_types_allowed=True,
                              hide_input_in_errors=True, revalidate_instances="never", populate_by_name=True)

    @classmethod
    def keys(cls) -> frozenset[str]:
        """The YAML keys of the block (a field's alias when it has one); computed once per model."""
        keys = cls.__dict__.get("_yaml_keys")
        if keys is None:
            keys = frozenset(field.alias or name for name, field in cls.model_fields.items())
            type.__setattr__(cls, "_yaml_keys", keys)
        return keys


Model = TypeVar("Model", bound=SettingsModel)


def key_path(path: str, location: Sequence[Any]) -> str:
    """``path`` followed by a pydantic error location: ``pools[2].size``."""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


class BlockReader:
    """Validates YAML blocks against their models, collecting every problem (with its key path)
    and a warning per unknown key, so a load reports them all at once."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def mapping(self, raw: Any, path: str) -> dict[str, Any] | None:
        """``raw`` when it is a mapping (None: empty), else None and a problem."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problems.append(f"{path}: must be a mapping, got {show(raw)}")
            return None
        return raw

    def model(self, raw: Any, model: type[Model], path: str, also_known: Container[str] = frozenset(),
              skip: frozenset[str] = frozenset()) -> Model | None:
        """``raw`` validated with ``model`` (None and the problems recorded when it is not valid).
        A key written without a value (``key:``) counts as not given, as vmpooler reads it.
        Unknown keys are warned about, except ``also_known`` ones (validated by another model)
        and ``skip`` ones (read by the caller)."""
        block = self.mapping(raw, path)
        if block is None:
            return None
        given = {str(key): value for key, value in block.items() if value is not None and key not in skip}
        keys = model.keys()
        try:
            result = model.model_validate({key: value for key, value in given.items() if key in keys})
        except ValidationError as error:
            for problem in error.errors(include_url=False, include_context=False, include_input=False):
                message = "is required" if problem["type"] == "missing" else problem["msg"]
                self.problems.append(f"{key_path(path, problem['loc'])}: {message}")
            result = None
        for name in given:
            if name not in keys and name not in also_known:
                self.warnings.append(f"{path}.{name}: unknown key, ignored")
        return result


def invalid(problem: str) -> NoReturn:
    """Fail a value with ``problem`` (the loader puts the key path before it)."""
    raise PydanticCustomError("vmpool", "{problem}", {"problem": problem})


def show(value: Any) -> str:
    """A value as a message quotes it: strings in double quotes, the rest as Python writes them."""
    return f'"{value}"' if isinstance(value, str) else repr(value)


def integer(minimum: int | None = None, maximum: int | None = None) -> Checker:
    """An int (or a string of digits, as vmpooler's ``to_i`` accepts) within bounds.

    The message names the rule broken: ``must be an integer >= 0`` for text or a number too
    small, ``must be an integer <= 10000`` for one too large."""
    wanted = "an integer" + (f" >= {minimum}" if minimum is not None else "")

    def check(value: Any) -> int:
        if isinstance(value, bool):
            invalid(f"must be {wanted}, got {show(value)}")
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,18}\s*", value):
            number = int(value)
        elif isinstance(value, int):
            number = value
        else:
            invalid(f"must be {wanted}, got {show(value)}")
        if minimum is not None and number < minimum:
            invalid(f"must be {wanted}, got {show(value)}")
        if maximum is not None and number > maximum:
            invalid(f"must be an integer <= {maximum}, got {show(value)}")
        return number

    return check


def number(minimum: float | None = None) -> Checker:
    """An int or float (or numeric string) at least ``minimum``."""

    def check(value: Any) -> float:
        try:
            if isinstance(value, bool):
                raise ValueError
            result = float(value)
        except (TypeError, ValueError):
            invalid(f"must be a number, got {show(value)}")
        if minimum is not None and result < minimum:
            invalid(f"must be a number >= {minimum}, got {show(value)}")
        return result

    return check


def boolean(value: Any) -> bool:
    """true/false, also as the strings vmpooler configs sometimes carry (yes/no too)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
        return value.lower() in ("true", "yes")
    invalid(f"must be true or false, got {show(value)}")


def string(value: Any) -> str:
    """A scalar written as text (numbers are accepted and turned into text)."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    invalid(f"must be a string, got {show(value)}")


def string_list(value: Any) -> tuple[str, ...]:
    """A string or a list of strings (vmpooler accepts both for alias, base, user_object)."""
    items = value if isinstance(value, list) else [value]
    return tuple(string(item) for item in items)


def weights(value: Any) -> Mapping[str, float]:
    """A mapping of names to weights >= 0 (vmpooler's ``backend_weight``)."""
    if not isinstance(value, dict):
        invalid(f"must be a mapping of clone targets to weights, got {show(value)}")
    check = number(0)
    checked: dict[str, float] = {}
    for name, weight in value.items():
        try:
            checked[str(name)] = check(weight)
        except PydanticCustomError as error:
            invalid(f"{name}: {error.message()}")
    return MappingProxyType(checked)


def choice(*options: str) -> Checker:
    """One of ``options``; Ruby-symbol spellings (``:ldap``) are accepted as vmpooler writes them."""

    def check(value: Any) -> str:
        bare = value.lstrip(":") if isinstance(value, str) else value
        if bare not in options:
            invalid(f"must be one of {', '.join(options)}, got {show(value)}")
        return bare

    return check


def regex(value: Any) -> str:
    """A regular expression (``:tagfilter:``), compiled once here to refuse a broken one at load."""
    text = string(value)
    try:
        re.compile(text)
    except re.error as error:
        invalid(f"must be a regular expression ({error})")
    return text


def sizing(value: Any) -> Any:
    """A pool's ``sizing`` block (schedule windows, demand sizing): chalicelib/sizing/settings.py."""
    from chalicelib.sizing.settings import SizingConfigError, parse_sizing

    try:
        return parse_sizing(value)
    except SizingConfigError as error:
        invalid(str(error))


def timezone_name(value: Any) -> str:
    """An IANA time zone name (``Europe/Berlin``)."""
    from chalicelib.sizing.settings import SizingConfigError, check_timezone

    try:
        return check_timezone(value, "time zone")
    except SizingConfigError as error:
        invalid(str(error).removeprefix("time zone: "))


def secret(value: Any) -> SecretStr | SecretReference:
    """A password: a plain string (as vmpooler writes it; numbers as text) kept as a ``SecretStr``
    that never prints itself, or a reference to AWS Secrets Manager / SSM Parameter Store
    (``{secret: name[, key: k]}`` / ``{ssm: name}``) that chalicelib/auth/secrets.py resolves at
    run time. The message names the problem, never the value."""
    from chalicelib.auth.secrets import SecretConfigError, parse_reference

    if isinstance(value, SecretStr):
        return value
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return SecretStr(str(value))
    if isinstance(value, Mapping):
        try:
            reference = parse_reference(value)
        except SecretConfigError as error:
            invalid(str(error))
        assert reference is not None  # a mapping is a reference or an error
        return reference
    invalid(f"must be a string or a secret reference, got {type(value).__name__}")


def _field(checker: Checker) -> PlainValidator:
    return PlainValidator(checker)


Int = Annotated[int, _field(integer())]
Int0 = Annotated[int, _field(integer(0))]
Int1 = Annotated[int, _field(integer(1))]
Port = Annotated[int, _field(integer(1, 65535))]
Seconds = Annotated[float, _field(number(0.1))]
Number0 = Annotated[float, _field(number(0))]
Bool = Annotated[bool, _field(boolean)]
Str = Annotated[str, _field(string)]
StrList = Annotated[tuple[str, ...], _field(string_list)]
Weights = Annotated[Mapping[str, float], _field(weights)]
Regex = Annotated[str, _field(regex)]
Secret = Annotated[Union[SecretStr, SecretReference], _field(secret)]
"""A password or token: ``SecretStr`` (plain) or ``SecretReference`` (resolved at run time)."""
Ignored = Any
"""A key vmpooler reads that is accepted for compatibility and has no effect here."""


def bounded(minimum: int | None = None, maximum: int | None = None) -> PlainValidator:
    """An integer field with other bounds: ``Annotated[int, bounded(1, 100)]``."""
    return _field(integer(minimum, maximum))


def at_least(minimum: float) -> PlainValidator:
    """A number field with a lower bound: ``Annotated[float, at_least(1.0)]``."""
    return _field(number(minimum))


def one_of(*options: str) -> PlainValidator:
    """A string field that is one of ``options``: ``Annotated[str, one_of("tcp", "tools")]``."""
    return _field(choice(*options))


def checked_by(checker: Checker) -> PlainValidator:
    """A field checked by a function of its own (sizing blocks, time zones)."""
    return _field(checker)
