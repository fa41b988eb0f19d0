"""What every authentication provider offers, and the checks they share."""

from __future__ import annotations

import re
import unicodedata
import uuid
from typing import Protocol, runtime_checkable

MAX_USERNAME_LENGTH = 256
MAX_PASSWORD_LENGTH = 1024


class AuthUnavailable(RuntimeError):
    """The authentication backend cannot answer (LDAP down, timeout, TLS or service-account
    failure). The API answers 503. The message is safe to log: no password, no secret."""


class AuthConfigError(ValueError):
    """The ``:auth:`` section is invalid; ``problems`` lists each one with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid auth configuration:\n  " + "\n  ".join(self.problems))


@runtime_checkable
class Authenticator(Protocol):
    def authenticate(self, username: str, password: str) -> bool:
        """True when the credentials are valid, False when not.

        Raises AuthUnavailable when the backend cannot tell."""
        ...


@runtime_checkable
class NamingAuthenticator(Protocol):
    """An authenticator that says whom the credentials logged in as, in the backend's own words
    (a directory: the name of the entry the bind found, whatever spelling or other name of it
    was typed). vmpool names the user by it, so one entry is one user."""

    def login_name(self, username: str, password: str) -> str | None:
        """The name of the user the credentials belong to, None when they are refused.

        Raises AuthUnavailable when the backend cannot tell."""
        ...


@runtime_checkable
class UserDirectory(Protocol):
    """An authenticator that can say whether a user is still there without their password."""

    @property
    def looks_up_users(self) -> bool:
        """Whether ``has_user`` can ask (LDAP: only with a service account)."""
        ...

    def has_user(self, username: str) -> bool:
        """Whether the directory still has the user. Raises AuthUnavailable when it cannot tell."""
        ...


def acceptable_credentials(username: object, password: object) -> bool:
    """Credentials worth sending to a backend at all.

    Refuses an empty password (an LDAP simple bind with a name and no password is an
    *unauthenticated* bind that many servers, Active Directory included, answer with success),
    empty or blank user names, surrounding spaces, control characters (NUL included), lone
    surrogates (no UTF-8 form), names without one canonical name (``has_one_canonical_name``) and
    absurd lengths."""
    if not isinstance(username, str) or not isinstance(password, str):
        return False
    if not password or not username.strip():
        return False
    if username != username.strip():
        # LDAP matching ignores surrounding spaces: " alice" would log in as alice under another name.
        return False
    if len(username) > MAX_USERNAME_LENGTH or len(password) > MAX_PASSWORD_LENGTH:
        return False
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in username):
        return False
    if "\x00" in password:
        return False
    if any("\ud800" <= char <= "\udfff" for char in username + password):
        return False  # a lone surrogate has no UTF-8 form to send (never from HTTP; from a caller)
    if not has_one_canonical_name(username):
        return False  # another entry's spelling to vmpool ('ali\u2102e' would be alice)
    return True


_SPACES = re.compile("[\u0020\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
"""A run of space separators (Unicode's category Zs: the space, the no-break, em, ideographic
spaces...)."""


def canonical_user(username: str) -> str:
    """The name a directory matches for ``username``: each letter lower-cased, then
    NFKC-normalised (a fullwidth ``\uff42ob`` is ``bob``), each run of spaces one space, without
    surrounding spaces. One user has one canonical name, whatever look-alike spelling a client
    sends: tokens, VMs and admin lists go by it (failed logins by the coarser ``login_key``).

    In the order and the way OpenLDAP's caseIgnoreMatch does it: each letter to its lower case,
    on its own (``str.lower`` gives a capital sigma at the end of a word the final form
    ``\u03c2``, another name to the directory), then compatibility mappings (``\u2102`` has no
    lower case and stays a capital C: lower-casing after NFKC made ``ali\u2102e``, another entry,
    ``alice``). Lower-cased, not case-folded: ``stra\u00dfe`` and ``strasse`` are two entries with
    two passwords, which ``str.casefold`` would make one user. The dotted capital I is lower-cased
    to ``i``, as the directory does (``str.lower`` gives i and a combining dot). A name whose
    canonical name is not its own canonical name (``ali\u2102e``) has no spelling that is one user
    to vmpool and to the directory alike: ``acceptable_credentials`` refuses it."""
    # str.lower letter by letter: its one rule that looks at context is the final sigma, and a
    # capital sigma made a small one first never meets it (a loop over letters is 50 times slower).
    lowered = username.replace("\u0130", "i").replace("\u03a3", "\u03c3").lower()
    normalized = unicodedata.normalize("NFKC", lowered)
    # Any run of space separators is one space, as the directory matches them (RFC 4518's
    # insignificant space handling): 'john  doe' binds as 'john doe'.
    return " ".join(_SPACES.split(normalized)).strip()


def has_one_canonical_name(username: str) -> bool:
    """Whether ``username`` has one canonical name that every directory matches as vmpool does:
    its canonical name is a spelling of the same user (``ali\u2102e`` gives ``aliCe``, a spelling
    of alice, while the directory keeps the two entries apart), and each of its characters is
    one that directories map alike (``_mapped_alike``)."""
    if not all(_mapped_alike(char) for char in set(username)):
        return False
    canonical = canonical_user(username)
    return canonical_user(canonical) == canonical


_UNICODE_3_2_CASED = frozenset({"Lu", "Ll", "Lt"})


def _mapped_alike(char: str) -> bool:
    """Whether directories map ``char`` as canonical_user does, so that it never makes two of
    their entries one vmpool user. Directories match names with Unicode tables of their own age
    and coverage: OpenLDAP's are Unicode 3.2's, and map some compatibility characters to plain
    letters (fullwidth, circled small, mathematical bold) but not others (modifier letters,
    mathematical sans-serif and digits, CJK compatibility ideographs), and lower-case no letter
    given a case after 3.2 (a capital sharp s, a circled capital). Python's tables map them all,
    so each such character made an entry the directory keeps apart another user's spelling. Kept:
    letters cased in Unicode 3.2, characters no normalisation changes, the fullwidth forms of
    ASCII and the space separators (every directory maps those)."""
    if "\uff01" <= char <= "\uff5e" or _SPACES.fullmatch(char):
        return True
    if ord(char) > 0xFFFF or unicodedata.normalize("NFKC", char) != char:
        return False
    cased = char.lower() != char or char.upper() != char
    return not cased or unicodedata.ucd_3_2_0.category(char) in _UNICODE_3_2_CASED


_MAPPED_TO_NOTHING = frozenset("\u00ad\u1806\ufffc")
"""Characters RFC 4518 (2.2) maps to nothing that are neither format characters (Cf) nor
combining marks (Mn), which ``login_key`` drops whole: the soft hyphens and the object
replacement character."""


def login_key(username: str) -> str:
    """The name failed logins of ``username`` are counted under: coarser than ``canonical_user``,
    so that no spelling a directory may bind as the same entry gets a counter of its own:
    case-folded (``\u00df`` as ``ss``), without accents or any other combining mark (Active
    Directory matches ``jesush`` to the entry ``j\u00e9sush``), without the characters RFC 4518
    maps to nothing (a zero-width space, a soft hyphen, the C1 control characters: a directory
    following it binds ``ali\u200bce`` and ``ali\u0080ce`` as alice; each C1 character at each
    place was a counter of its own) or to a space (``\u0085``), and a dotted capital I as ``i``
    (OpenLDAP binds ``al\u0130ce`` as alice). Two users whose names merge here (``jos\u00e9``
    and ``jose``, ``stra\u00dfe`` and ``strasse``) share a counter: at worst one's failures lock
    the other out for a window, never an attacker more guesses (and a success clears nobody's
    failures: ``LoginLimiter.settle``)."""
    folded = canonical_user(username.replace("\u0085", " ")).replace("i\u0307", "i").casefold()
    decomposed = unicodedata.normalize("NFKD", folded)
    kept = "".join(char for char in decomposed
                   if unicodedata.category(char) not in ("Mn", "Me", "Cf", "Cc") and char not in _MAPPED_TO_NOTHING)
    return unicodedata.normalize("NFKC", kept)


def same_user(one: str, other: str) -> bool:
    """Whether two user names are one user's spellings (compared by their canonical names)."""
    return canonical_user(one) == canonical_user(other)


def same_entry(one: str | None, other: str | None) -> bool:
    """Whether two stable ids of directory entries (``ldap.entry_id``) are both known and name
    one entry: the same person, whatever name the entry holds now."""
    return bool(one) and bool(other) and one == other


def other_entry(one: str | None, other: str | None) -> bool:
    """Whether two stable ids of directory entries (``ldap.entry_id``: ``<attribute>:<uuid>``)
    name two entries: both known, of the same attribute, and different. Ids of two attributes
    (``nsUniqueId`` saved, ``entryUUID`` shown since 389's entryUUID plugin was turned on) cannot
    be compared: the name decides, as without an id, rather than every user's tokens and VMs
    becoming another entry's."""
    if not one or not other:
        return False
    return one.partition(":")[0].lower() == other.partition(":")[0].lower() and one != other


ENTRY_ID_ATTRIBUTES = ("entryUUID", "objectGUID", "nsUniqueId", "ipaUniqueID")
"""The attributes naming a directory entry for its whole life (``ldap.entry_id``), in the order
the first one an entry shows is used."""


def listed_entry_id(item: str) -> str | None:
    """The directory entry an ``auth.admins`` item names by its stable id, as ``ldap.entry_id``
    spells ids (``entryUUID:<uuid>``: the attribute as ENTRY_ID_ATTRIBUTES writes it, the UUID in
    its lower-case hyphenated form, however the item writes them: AD's braces, 389's four groups
    of eight); None for a user name (no ``:``, which no Basic login's name holds). ValueError for
    an item with a ``:`` that names no entry id."""
    attribute, colon, value = item.partition(":")
    if not colon:
        return None
    known = {name.lower(): name for name in ENTRY_ID_ATTRIBUTES}
    name = known.get(attribute.strip().lower())
    if name is None:
        raise ValueError(f"{attribute.strip()[:40]!r} is none of {', '.join(ENTRY_ID_ATTRIBUTES)}")
    try:
        return f"{name}:{uuid.UUID(value.strip())}"
    except ValueError:
        raise ValueError(f"{value.strip()[:80]!r} is not a UUID") from None
