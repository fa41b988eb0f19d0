"""A plain YAML config built from the parser's events, without composing it.

``config._read_document`` walks libyaml's events once anyway (``_check_shape``: depth, alias
bombs, the pools' count). Composing the document again (libyaml's composer, PyYAML's Python
resolver at each node), walking the nodes for keys written twice and constructing the values
with PyYAML's Python constructor took 3 of the 6 s of CPU a config of 10,000 pools took to
validate. A config as vmpooler's and ours are written (mappings, lists and scalars: no tags,
anchors, aliases, merge keys or keys that are not strings, no key written twice, one document)
is built here from those same events instead, its mapping keys colon-stripped: the document
PyYAML's safe loader would give, ``_strip_colons`` applied. Anything else makes the builder give
up (``document`` is ``GAVE_UP``) and the config is read the composed way, which words its
errors and warnings (a key written twice, a bad tag) as before.
"""

from __future__ import annotations

from typing import Any

GAVE_UP = object()
"""``EventDocument.document`` when the document is not plain: read it the composed way."""
_STRING_TAG = "tag:yaml.org,2002:str"


class _Mapping:
    """A mapping being built: its dict and the key read whose value comes next."""

    __slots__ = ("items", "key")

    def __init__(self) -> None:
        self.items: dict[str, Any] = {}
        self.key: str | None = None


class EventDocument:
    """Builds the document from the events ``see`` is given in order (every event of the stream),
    with ``loader`` (an instance of the loader class the events come from) resolving plain
    scalars and constructing the ones that are not strings, each distinct plain scalar once."""

    def __init__(self, yaml: Any, loader: Any) -> None:
        self._loader = loader
        self._scalar_node = yaml.ScalarNode
        self._scalar, self._alias = yaml.ScalarEvent, yaml.AliasEvent
        self._mapping_start, self._sequence_start = yaml.MappingStartEvent, yaml.SequenceStartEvent
        self._ends = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
        self._document_start = yaml.DocumentStartEvent
        self._plain: dict[str, tuple[str, Any]] = {}  # a plain scalar's text -> (its tag, its value)
        self._open: list[Any] = []  # the collections being built, outermost first
        self._documents = 0
        self.document: Any = None
        """The document once every event was seen (None when the stream holds none), or GAVE_UP."""

    def see(self, event: Any) -> None:
        """Build on with ``event``; give up for good on anything not plain."""
        if self.document is GAVE_UP:
            return
        kind = type(event)
        if kind is self._scalar:
            if event.anchor is not None or event.tag is not None:
                self._give_up()
                return
            if event.implicit[0]:
                resolved = self._resolved(event.value)
                if resolved is None:
                    return
                tag, value = resolved
            else:  # quoted or a block scalar: a string (SafeLoader has no path resolvers)
                tag, value = _STRING_TAG, event.value
            self._add(value, tag)
        elif kind is self._mapping_start or kind is self._sequence_start:
            if event.anchor is not None or event.tag is not None or self._key_expected():
                self._give_up()
                return
            self._open.append(_Mapping() if kind is self._mapping_start else [])
        elif kind in self._ends:
            built = self._open.pop()
            self._add(built.items if isinstance(built, _Mapping) else built, "")
        elif kind is self._alias:
            self._give_up()  # shared values: PyYAML's and _strip_colons' copies are kept as they were
        elif kind is self._document_start:
            self._documents += 1
            if self._documents > 1:
                self._give_up()  # the composer words "a single document expected"

    def _give_up(self) -> None:
        self.document = GAVE_UP
        self._open.clear()
        self._plain.clear()

    def _key_expected(self) -> bool:
        top = self._open[-1] if self._open else None
        return isinstance(top, _Mapping) and top.key is None

    def _resolved(self, text: str) -> tuple[str, Any] | None:
        """The tag and value of a plain scalar, as the safe loader gives them; None (given up)
        when PyYAML cannot construct it (the composed read words the error)."""
        found = self._plain.get(text)
        if found is None:
            tag = self._loader.resolve(self._scalar_node, text, (True, False))
            if tag == _STRING_TAG:
                found = (tag, text)
            else:
                try:
                    found = (tag, self._loader.construct_object(self._scalar_node(tag, text)))
                except Exception:  # noqa: BLE001 - any constructor error: read the composed way
                    self._give_up()
                    return None
            self._plain[text] = found
        return found

    def _add(self, value: Any, tag: str) -> None:
        """Put a value built into the collection open, or make it the document."""
        if not self._open:
            self.document = value
            return
        top = self._open[-1]
        if isinstance(top, list):
            top.append(value)
        elif top.key is None:
            if tag != _STRING_TAG:  # a key that is no string (a merge key, null, 1, true)
                self._give_up()
                return
            key = value.lstrip(":")
            if key in top.items:  # written twice: the composed read reports it
                self._give_up()
                return
            top.key = key
        else:
            top.items[top.key] = value
            top.key = None
