"""The value types of every settings block (the service's, each provider's, each DNS plugin's),
and the two ways a block becomes its typed dataclass.

A settings block is a frozen stdlib dataclass (``@dataclass(frozen=True, kw_only=True)``, a
``SettingsModel`` subclass) whose fields are typed with the value types below: ``Annotated``
types carrying our own metadata (``Check``: the function that takes the raw YAML value and
returns the clean one, or fails with the sentence a user reads after the key path, ``must be an
integer >= 0, got "five"``; ``Alias``: the YAML key of a field when it is not the field's name).
Defining them imports no pydantic: ``Check`` speaks pydantic's duck-typed
``__get_pydantic_core_schema__`` and imports ``pydantic_core`` only when pydantic asks.

- ``BlockReader`` validates YAML blocks where a config is accepted (``config.parse``: make run,
  config-push, packaging, tests): one cached ``pydantic.TypeAdapter`` per dataclass, imported on
  first use; every problem is collected with its key path, unknown keys are warned about.
- ``TrustedReader`` builds the same dataclasses from the canonical JSON packaging and
  config-push write from a validated config (what the Lambdas load): it walks the fields by their
  type hints with cheap isinstance checks, so a hand-edited JSON of the wrong shape is refused
  with its key path, and imports neither pydantic nor yaml.
"""

import collections.abc
import dataclasses
import math
import re
import typing
from types import MappingProxyType, NoneType, UnionType
from typing import Annotated, Any, Callable, ClassVar, Container, Mapping, NoReturn, Sequence, TypeVar, Union

from chalicelib.auth.secrets import Secret, SecretReference
from chalicelib.tagfilter import Refused, check_tagfilter

Checker = Callable[[Any], Any]


class Invalid(ValueError):
    """A value failed its check; the message is what follows the key path."""


@dataclasses.dataclass(frozen=True)
class Check:
    """``Annotated`` metadata: the field's value is ``checker(raw)`` (which raises ``Invalid``).

    ``trusted`` (optional) builds the value from its canonical JSON form instead of the type
    hint (the sizing block, stored as written). pydantic finds ``__get_pydantic_core_schema__``
    by duck typing; the checker replaces pydantic's own coercion, so the messages stay ours."""

    checker: Checker
    trusted: Callable[[Any], Any] | None = None

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import PydanticCustomError, core_schema

        checker = self.checker

        def validate(value: Any) -> Any:
            try:
                return checker(value)
            except Invalid as error:
                raise PydanticCustomError("vmpool", "{problem}", {"problem": str(error)}) from None

        return core_schema.no_info_plain_validator_function(validate)


@dataclasses.dataclass(frozen=True)
class Alias:
    """``Annotated`` metadata: the field's YAML key (``bases`` is written ``base``, as vmpooler does)."""

    key: str


class SettingsModel:
    """The base of every settings block: a frozen dataclass; its YAML keys are its field names or
    their ``Alias``. Unknown keys are warned about by the readers, never kept."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    __pydantic_config__: ClassVar[dict[str, Any]] = {"hide_input_in_errors": True, "revalidate_instances": "never"}
    """Read by pydantic when it validates the dataclass (a plain dict: no pydantic import here)."""

    @classmethod
    def keys(cls) -> Mapping[str, str]:
        """YAML key -> field name (computed once per class)."""
        keys = cls.__dict__.get("_yaml_keys")
        if keys is None:
            keys = MappingProxyType({_alias(hint) or name: name for name, hint in _hints(cls).items()})
            type.__setattr__(cls, "_yaml_keys", keys)
        return keys

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """The names of the block's fields."""
        return frozenset(field.name for field in dataclasses.fields(cls))


Model = TypeVar("Model", bound=SettingsModel)


def _hints(cls: type) -> dict[str, Any]:
    """The dataclass fields' type hints, with their Annotated metadata (computed once per class)."""
    hints = cls.__dict__.get("_field_hints")
    if hints is None:
        every = typing.get_type_hints(cls, include_extras=True)
        hints = {field.name: every[field.name] for field in dataclasses.fields(cls)}
        type.__setattr__(cls, "_field_hints", hints)
    return hints


def _metadata(hint: Any) -> tuple[Any, ...]:
    """The Annotated metadata of ``hint`` (or of the non-None member of an Optional)."""
    if typing.get_origin(hint) in (Union, UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not NoneType]
        if len(members) == 1:
            return _metadata(members[0])
    if typing.get_origin(hint) is Annotated:
        return hint.__metadata__
    return ()


def _alias(hint: Any) -> str | None:
    return next((item.key for item in _metadata(hint) if isinstance(item, Alias)), None)


def is_ignored(model: type, name: str) -> bool:
    """Whether a field is one vmpooler reads that has no effect here (``Ignored``)."""
    return _hints(model)[name] is Any


def given_fields(block: Mapping[str, Any], model: type[SettingsModel]) -> list[str]:
    """The fields of ``model`` a block gives a value (a key written without one does not count)."""
    keys = model.keys()
    return [keys[key] for key, value in block.items() if value is not None and key in keys]


def key_path(path: str, location: Sequence[Any]) -> str:
    """``path`` followed by a location: ``pools[2].size``."""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


class BlockReader:
    """Validates YAML blocks against their models (pydantic), collecting every problem (with its
    key path) and a warning per unknown key, so a load reports them all at once."""

    trusted: ClassVar[bool] = False

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
        """``raw`` as a ``model`` (None and the problems recorded when it is not valid).
        A key written without a value (``key:``) counts as not given, as vmpooler reads it.
        Unknown keys are warned about, except ``also_known`` ones (validated by another model)
        and ``skip`` ones (read by the caller)."""
        block = self.mapping(raw, path)
        if block is None:
            return None
        keys = model.keys()
        values: dict[str, Any] = {}
        for key, value in block.items():
            if key in skip or value is None:
                continue
            if key in keys:
                values[keys[key]] = value
            elif key not in also_known:
                self.unknown_key(f"{path}.{key}")
        return self.construct(model, values, path)

    def unknown_key(self, key_path: str, what: str = "unknown key") -> None:
        """A key no model reads: warned about (vmpooler's configs hold keys vmpool has no use for).
        A path past MAX_SHOWN_PATH characters is cut: a key may be a million characters long
        (``? kkk...``), and the warning is logged by every function that loads the config."""
        shown = key_path if len(key_path) <= MAX_SHOWN_PATH else key_path[:MAX_SHOWN_PATH] + "..."
        self.warnings.append(f"{shown}: {what}, ignored")

    def construct(self, model: type[Model], values: dict[str, Any], path: str) -> Model | None:
        """``model(**values)`` validated by pydantic; None and the problems recorded when invalid."""
        from pydantic import ValidationError

        try:
            return _adapter(model).validate_python(values)
        except ValidationError as error:
            names = {name: key for key, name in model.keys().items()}
            for problem in error.errors(include_url=False, include_context=False, include_input=False):
                message = "is required" if problem["type"] == "missing" else problem["msg"]
                location = list(problem["loc"])
                if location and location[0] in names:
                    location[0] = names[location[0]]
                self.problems.append(f"{key_path(path, location)}: {message}")
            return None


_ADAPTERS: dict[type, Any] = {}


def _adapter(model: type) -> Any:
    """The cached pydantic TypeAdapter of a settings dataclass (schema built on its first use)."""
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        import os

        # pydantic looks for plugins (importlib.metadata's entry points: every dist-info on the
        # path) when it builds a schema; vmpool uses none.
        os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
        from pydantic import TypeAdapter

        adapter = TypeAdapter(model)
        _ADAPTERS[model] = adapter
    return adapter


class TrustedReader(BlockReader):
    """Builds blocks from the canonical JSON of a validated config (config.canonical): field by
    field from the type hints, with isinstance checks only; a value of the wrong shape or an
    unknown key is a problem with its key path (a hand-edited file), never a crash."""

    trusted = True

    def unknown_key(self, key_path: str, what: str = "unknown key") -> None:
        """A key the canonical form never holds: the file was edited by hand."""
        self.problems.append(f"{key_path}: {what}")

    def construct(self, model: type[Model], values: dict[str, Any], path: str) -> Model | None:
        try:
            return build_dataclass(model, values, path)
        except Invalid as error:
            self.problems.append(str(error))
            return None


# --- the trusted builder ------------------------------------------------------------------------

Convert = Callable[[Any, str], Any]
_CONVERTERS: dict[Any, Convert] = {}


def build_dataclass(model: type[Model], values: Mapping[str, Any], path: str) -> Model:
    """``model`` from field values in canonical form (field names as keys). Raises Invalid
    ``path.key: ...`` for a value of the wrong shape or a required field missing."""
    converters = _field_converters(model)
    written = _written_keys(model)
    built: dict[str, Any] = {}
    for name, value in values.items():
        convert = converters.get(name)
        if convert is None:
            raise Invalid(f"{path}.{written.get(name, name)}: unknown key")
        built[name] = convert(value, f"{path}.{written.get(name, name)}")
    try:
        return model(**built)
    except TypeError as error:  # a required field missing
        missing = [written.get(field.name, field.name) for field in dataclasses.fields(model)
                   if field.name not in built and field.default is dataclasses.MISSING
                   and field.default_factory is dataclasses.MISSING]
        raise Invalid(f"{path}.{missing[0]}: is required" if missing else f"{path}: {error}") from None


def _written_keys(model: type[SettingsModel]) -> Mapping[str, str]:
    """Field name -> the YAML key an operator writes (computed once per class): a problem names
    the key written (``auth.ldap.base``), as the YAML's problems do. Before, a pushed config's
    named the field (``auth.ldap.bases``), a key no config file has."""
    written = model.__dict__.get("_written_keys")
    if written is None:
        written = MappingProxyType({name: key for key, name in model.keys().items()})
        type.__setattr__(model, "_written_keys", written)
    return written


def _field_converters(model: type) -> dict[str, Convert]:
    """Field name -> converter of a dataclass, computed once per class. Looking a converter up
    by its type hint hashed the ``typing`` objects (``Annotated`` hashes its metadata) at every
    field of every block: a pool's first build took 90 µs with it, 70 without (python3.13,
    docs/performance.md, "A cold start builds its config once")."""
    converters = model.__dict__.get("_field_converters")
    if converters is None:
        converters = {name: _converter(hint) for name, hint in _hints(model).items()}
        type.__setattr__(model, "_field_converters", converters)
    return converters


def _wrong(path: str, wanted: str, value: Any) -> NoReturn:
    raise Invalid(f"{path}: must be {wanted}, got {type(value).__name__}")


def _converter(hint: Any) -> Convert:
    """How a canonical JSON value becomes a field's value (built once per type hint)."""
    convert = _CONVERTERS.get(hint)
    if convert is None:
        convert = _make_converter(hint)
        _CONVERTERS[hint] = convert
    return convert


def _make_converter(hint: Any) -> Convert:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        trusted = next((item.trusted for item in hint.__metadata__ if isinstance(item, Check) and item.trusted), None)
        if trusted is not None:
            def from_form(value: Any, path: str) -> Any:
                try:
                    return trusted(value)
                except (Invalid, ValueError, TypeError) as error:
                    raise Invalid(f"{path}: {error}") from None
            return from_form
        checker = next((item.checker for item in hint.__metadata__ if isinstance(item, Check)), None)
        if checker is None:
            return _converter(hint.__origin__)

        # One set of checks whatever the format: the canonical JSON a function builds (an object
        # written by another tool or by hand) is held to the check its YAML is, which turns a
        # written value into the field's (pydantic keeps what the check returns). Before, only
        # the numbers' bounds held there: a 1,000,000-character template or prefix, a domain no
        # DNS name can be, was built as it came.
        def checked(value: Any, path: str, checker: Checker = checker) -> Any:
            try:
                return checker(value)
            except Invalid as error:
                raise Invalid(f"{path}: {error}") from None
        return checked
    if hint is Any:
        return lambda value, path: value
    if origin in (Union, UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not NoneType]
        bare = [typing.get_args(m)[0] if typing.get_origin(m) is Annotated else m for m in members]
        if set(bare) == {Secret, SecretReference}:
            return _secret
        if len(members) != 1:
            raise TypeError(f"no canonical form for {hint}")
        inner = _converter(members[0])
        return lambda value, path: None if value is None else inner(value, path)
    if hint is bool:
        return lambda value, path: value if isinstance(value, bool) else _wrong(path, "true or false", value)
    if hint is int:
        return lambda value, path: (value if isinstance(value, int) and not isinstance(value, bool)
                                    else _wrong(path, "an integer", value))
    if hint is float:
        return lambda value, path: (float(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
                                    else _wrong(path, "a number", value))
    if hint is str:
        return lambda value, path: value if isinstance(value, str) else _wrong(path, "a string", value)
    if hint in (Secret, SecretReference):
        return _secret
    if origin is tuple:
        item = _converter(typing.get_args(hint)[0])

        def sequence(value: Any, path: str) -> tuple[Any, ...]:
            if isinstance(value, str):  # a one-item list written as the item (vmpooler's alias)
                value = [value]
            if not isinstance(value, (list, tuple)):
                _wrong(path, "a list", value)
            return tuple(item(member, f"{path}[{index}]") for index, member in enumerate(value))
        return sequence
    if origin in (dict, collections.abc.Mapping):
        item = _converter(typing.get_args(hint)[1])

        def mapping(value: Any, path: str) -> Mapping[str, Any]:
            if not isinstance(value, dict):
                _wrong(path, "a mapping", value)
            return MappingProxyType({str(key): item(member, f"{path}.{key}") for key, member in value.items()})
        return mapping
    if isinstance(hint, type) and issubclass(hint, SettingsModel):
        def nested(value: Any, path: str) -> Any:
            if not isinstance(value, dict):
                _wrong(path, "a mapping", value)
            keys = hint.keys()
            unknown = [key for key in value if key not in keys]
            if unknown:
                raise Invalid(f"{path}.{unknown[0]}: unknown key")
            return build_dataclass(hint, {keys[key]: member for key, member in value.items() if member is not None},
                                   path)
        return nested
    raise TypeError(f"no canonical form for {hint}")


def _secret(value: Any, path: str) -> Secret | SecretReference:
    """A plain secret (a string) or a reference (its mapping), as config.canonical writes them."""
    if isinstance(value, str):
        return Secret(value)
    if isinstance(value, dict):
        from chalicelib.auth.secrets import SecretConfigError, parse_reference

        try:
            reference = parse_reference(value)
        except SecretConfigError as error:
            raise Invalid(f"{path}: {error}") from None
        assert reference is not None
        return reference
    _wrong(path, "a string or a secret reference", value)


# --- the value types ----------------------------------------------------------------------------


def invalid(problem: str) -> NoReturn:
    """Fail a value with ``problem`` (the reader puts the key path before it)."""
    raise Invalid(problem)


SHOWN_CHARACTERS = 80
MAX_SHOWN_PATH = 200
"""Characters of a key path an unknown key's warning quotes (BlockReader.unknown_key)."""
"""What a message quotes of a value at most: a 10,000-character name is named by its start."""


def show(value: Any) -> str:
    """A value as a message quotes it: strings in double quotes, the rest as Python writes them;
    cut after SHOWN_CHARACTERS (``"aaaa..."``)."""
    if isinstance(value, str):
        return f'"{value}"' if len(value) <= SHOWN_CHARACTERS else f'"{value[:SHOWN_CHARACTERS]}..."'
    if isinstance(value, (list, dict, tuple)) and len(value) > SHOWN_CHARACTERS:
        return f"a {type(value).__name__} of {len(value)} items"  # repr would write every one first
    text = repr(value)
    return text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS] + "..."


def integer(minimum: int | None = None, maximum: int | None = None) -> Checker:
    """An int (or a string of digits, as vmpooler's ``to_i`` accepts) within bounds.

    The message names the rule broken: ``must be an integer >= 0`` for text or a number too
    small, ``must be an integer <= 10000`` for one too large."""
    wanted = "an integer" + (f" >= {minimum}" if minimum is not None else "")

    def check(value: Any) -> int:
        if isinstance(value, bool):
            invalid(f"must be {wanted}, got {show(value)}")
        if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,18}\s*", value):
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


def number(minimum: float | None = None, maximum: float | None = None) -> Checker:
    """A finite int or float (or numeric string) from ``minimum`` to ``maximum``. NaN and
    infinity are refused: every such key is a delay, a timeout or a size, and YAML's ``.nan``
    compares false with every bound (a scheduler timer of NaN seconds), ``.inf`` never ends."""
    wanted = ("a finite number" + (f" >= {minimum:g}" if minimum is not None and maximum is None else "")
              + (f" from {minimum:g} to {maximum:g}" if minimum is not None and maximum is not None else ""))

    def check(value: Any) -> float:
        try:
            if isinstance(value, bool):
                raise ValueError
            result = float(value)
        except (TypeError, ValueError):
            invalid(f"must be a number, got {show(value)}")
        if not (math.isfinite(result) and (minimum is None or result >= minimum)
                and (maximum is None or result <= maximum)):
            invalid(f"must be {wanted}, got {show(value)}")
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


def short_string(most: int) -> Checker:
    """A string (as ``string``) of at most ``most`` characters: text a page shows whole."""

    def check(value: Any) -> str:
        text = string(value)
        if len(text) > most:
            invalid(f"must be at most {most} characters, got {len(text):,}")
        return text

    return check


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")

INVENTORY_NAME_LENGTH = 80
"""vCenter's limit on the name of a VM, folder or other inventory object."""
INVENTORY_PATH_PARTS = 32
"""The deepest inventory path accepted (folders nest far less in practice)."""


def inventory_path(value: Any) -> str:
    """A vSphere inventory path (a pool's ``folder``, ``template``, ``datacenter``, ``pool``...):
    names separated by ``/``, each 1 to 80 characters without control characters and neither
    ``.`` nor ``..``; a ``/`` at either end is dropped. Refused at load: ``vmpool//a`` or a NUL
    byte used to reach vCenter, where the clones went to one folder and the passes looked in
    another (every clone leaked)."""
    text = string(value)
    path = text.strip("/")
    parts = path.split("/") if path else []
    # One look at each name for the paths every pool has (10,000 pools: 40,000 paths); the
    # messages below, in their order, only for a path refused.
    if (len(parts) <= INVENTORY_PATH_PARTS and not _CONTROL_CHARACTERS.search(text)
            and all(part and part != "." and part != ".." and len(part) <= INVENTORY_NAME_LENGTH for part in parts)):
        return path
    quoted = show(text)
    if _CONTROL_CHARACTERS.search(text):
        invalid(f"must be an inventory path without control characters (NUL, newline, tab), got {quoted}")
    if any(not part for part in parts):
        invalid(f"must be an inventory path without an empty name ('//'), got {quoted}")
    if any(part in (".", "..") for part in parts):
        # vCenter's FindByInventoryPath reads them as names, a reader as "here" and "the parent".
        invalid(f"must be an inventory path without a '.' or '..' name, got {quoted}")
    if any(len(part) > INVENTORY_NAME_LENGTH for part in parts):
        invalid(f"must be an inventory path of names of at most {INVENTORY_NAME_LENGTH} characters "
                f"(vCenter's limit), got {quoted}")
    if len(parts) > INVENTORY_PATH_PARTS:
        invalid(f"must be an inventory path of at most {INVENTORY_PATH_PARTS} names, got {quoted}")
    return path


def string_list(value: Any) -> tuple[str, ...]:
    """A string or a list of strings (vmpooler accepts both for alias, base, user_object)."""
    items = value if isinstance(value, list) else [value]
    return tuple(string(item) for item in items)


def name_list(most_items: int, most_characters: int) -> Checker:
    """A string or a list of strings (as ``string_list``) of at most ``most_items`` names, each of
    1 to ``most_characters`` characters: a list a request is compared with (``allowed_tags``)."""

    def check(value: Any) -> tuple[str, ...]:
        if isinstance(value, list) and len(value) > most_items:  # counted before each is read
            invalid(f"must list at most {most_items:,} names, got {len(value):,}")
        names = string_list(value)
        for index, name in enumerate(names):
            if not 1 <= len(name) <= most_characters:
                invalid(f"[{index}]: must be 1 to {most_characters} characters, got {len(name):,}")
        return names

    return check


def weights(value: Any) -> Mapping[str, float]:
    """A mapping of names to weights >= 0 (vmpooler's ``backend_weight``)."""
    if not isinstance(value, dict):
        invalid(f"must be a mapping of clone targets to weights, got {show(value)}")
    check = number(0)
    checked: dict[str, float] = {}
    for name, weight in value.items():
        try:
            checked[str(name)] = check(weight)
        except Invalid as error:
            invalid(f"{name}: {error}")
    return MappingProxyType(checked)


def choice(*options: str) -> Checker:
    """One of ``options``; Ruby-symbol spellings (``:ldap``) are accepted as vmpooler writes them."""

    def check(value: Any) -> str:
        bare = value.lstrip(":") if isinstance(value, str) else value
        if bare not in options:
            invalid(f"must be one of {', '.join(options)}, got {show(value)}")
        return bare

    return check


def compiled_regex(value: Any) -> str:
    """A regular expression that compiles: what a pushed canonical config's ``tagfilter`` is
    held to (a pattern an earlier release accepted keeps loading after an upgrade; ``regex`` is
    the validation's)."""
    text = string(value)
    try:
        re.compile(text)
    except re.error as error:
        invalid(f"must be a regular expression ({error})")
    return text


def regex(value: Any) -> str:
    """A regular expression (``:tagfilter:``), compiled once here to refuse a broken one at load,
    and one whose work on a caller's tag value the analysis cannot bound (chalicelib/tagfilter.py:
    more than one way to read a value, a backreference or lookaround, too long)."""
    text = compiled_regex(value)
    try:
        check_tagfilter(text)
    except Refused as error:
        invalid(str(error))
    return text


_DNS_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
MAX_DNS_NAME_LENGTH = 253
"""The longest DNS name as text, without its final dot (255 octets on the wire)."""


def dns_name(value: Any) -> str:
    """A DNS name (a domain, a zone, a TSIG key's name): labels of 1 to 63 letters, digits, ``-``
    or ``_``, at most 253 characters; a final ``.`` is allowed. Refused at load, it cannot stop
    the DNS plugin (and the passes using it) at run time."""
    text = string(value)
    labels = text[:-1].split(".") if text.endswith(".") and text != "." else text.split(".")
    if len(text.rstrip(".")) > MAX_DNS_NAME_LENGTH or not all(_DNS_LABEL.match(label) for label in labels):
        invalid(f"must be a DNS name (labels of 1 to 63 letters, digits, '-' or '_', "
                f"253 characters at most), got {show(text if len(text) <= 80 else text[:80] + '...')}")
    return text


def sizing(value: Any) -> Any:
    """A pool's ``sizing`` block (schedule windows, demand sizing): chalicelib/sizing/settings.py."""
    from chalicelib.sizing.settings import SizingConfigError, parse_sizing

    try:
        return parse_sizing(value)
    except SizingConfigError as error:
        invalid(str(error))


HOSTNAME_PREFIX = re.compile(r"^([a-z0-9][a-z0-9-]{0,56})?\Z")
HOSTNAME_LENGTH = 15
"""VM names are at most this long, or the prefix and 6 random characters (manager/hostnames.py)."""
HOSTNAME_RANDOM_CHARACTERS = 6


def longest_hostname(prefix: str) -> int:
    """The length of the longest VM name made with ``prefix``: the config checks that it fits in
    front of every pool's domain within DNS's 253 characters."""
    return max(HOSTNAME_LENGTH, len(prefix) + HOSTNAME_RANDOM_CHARACTERS)


def hostname_prefix(value: Any) -> str:
    """The start of every VM name (``config.prefix``): names are it and at least 6 random
    characters, read back by the API lower-cased and as a DNS label (at most 63 characters)."""
    text = string(value)
    if not HOSTNAME_PREFIX.match(text):
        invalid(f"must be lower-case letters, digits and '-' (at most 57, not first), got {show(value)}")
    return text


DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}")


def deployment_name(value: Any) -> str:
    """Which vmpool deployment this is (``config.deployment``), written into every VM it makes:
    1 to 64 letters, digits and ``_ . : / -``, a letter or digit first."""
    text = string(value)
    if not DEPLOYMENT_NAME.fullmatch(text):
        invalid(f"must be 1 to 64 letters, digits and '_.:/-' (a letter or digit first), got {show(value)}")
    return text


def timezone_name(value: Any) -> str:
    """An IANA time zone name (``Europe/Berlin``)."""
    from chalicelib.sizing.settings import SizingConfigError, check_timezone

    try:
        return check_timezone(value, "time zone")
    except SizingConfigError as error:
        invalid(str(error).removeprefix("time zone: "))


def secret(value: Any) -> Secret | SecretReference:
    """A password: a plain string (as vmpooler writes it; numbers as text) kept as a ``Secret``
    that never prints itself, or a reference to AWS Secrets Manager / SSM Parameter Store
    (``{secret: name[, key: k]}`` / ``{ssm: name}``) that chalicelib/auth/secrets.py resolves at
    run time. The message names the problem, never the value."""
    from chalicelib.auth.secrets import SecretConfigError, parse_reference

    if isinstance(value, (Secret, SecretReference)):
        return value
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return Secret(str(value))
    if isinstance(value, Mapping):
        try:
            reference = parse_reference(value)
        except SecretConfigError as error:
            invalid(str(error))
        assert reference is not None  # a mapping is a reference or an error
        return reference
    invalid(f"must be a string or a secret reference, got {type(value).__name__}")


def checked_by(checker: Checker, trusted: Callable[[Any], Any] | None = None) -> Check:
    """A field checked by a function of its own (sizing blocks, time zones)."""
    return Check(checker, trusted)


def bounded(minimum: int | None = None, maximum: int | None = None) -> Check:
    """An integer field with other bounds: ``Annotated[int, bounded(1, 100)]``."""
    return Check(integer(minimum, maximum))


def at_least(minimum: float) -> Check:
    """A number field with a lower bound: ``Annotated[float, at_least(1.0)]``."""
    return Check(number(minimum))


def within(minimum: float, maximum: float) -> Check:
    """A number field with both bounds: ``Annotated[float, within(0.01, 25.0)]``."""
    return Check(number(minimum, maximum))


def one_of(*options: str) -> Check:
    """A string field that is one of ``options``: ``Annotated[str, one_of("tcp", "tools")]``."""
    return Check(choice(*options))


Int = Annotated[int, Check(integer())]
Int0 = Annotated[int, Check(integer(0))]
Int1 = Annotated[int, Check(integer(1))]
Port = Annotated[int, Check(integer(1, 65535))]
Seconds = Annotated[float, Check(number(0.1))]
Number0 = Annotated[float, Check(number(0))]
Bool = Annotated[bool, Check(boolean)]
Str = Annotated[str, Check(string)]
StrList = Annotated[tuple[str, ...], Check(string_list)]
Weights = Annotated[Mapping[str, float], Check(weights)]
Regex = Annotated[str, Check(regex)]
DnsName = Annotated[str, Check(dns_name)]
InventoryPath = Annotated[str, Check(inventory_path)]
SecretValue = Annotated[Union[Secret, SecretReference], Check(secret)]
"""A password or token: ``Secret`` (plain) or ``SecretReference`` (resolved at run time)."""
Ignored = Any
"""A key vmpooler reads that is accepted for compatibility and has no effect here."""
