"""The rules for names an admin or a client chooses: users, emails, display names, nodes, tags.

Each ``check_*`` returns the value as stored or raises InvalidName with a message that says the
rule. The README's "Names" section documents the same rules.

- user name: 2 to 64 ASCII characters, a letter first, then letters, digits, ``-``, ``.``,
  ``_`` and at most one ``@`` (Headscale's rule, kept to ASCII: a policy names the user as
  ``name@``, and two names that look alike must not be two users). Unique without regard to case.
- email: empty, or ``local@domain`` of at most 254 characters: a dot-atom local part, a domain of
  DNS labels. Unique without regard to case. A policy's ``alice@example.com`` means the user with
  that email, its ``alice@`` the user named alice: an email can never look like a name token.
- display name: at most 128 printable characters (any script).
- node name: a DNS label, 1 to 63 lower-case letters, digits and inner hyphens.
- DNS name (search domain, split-DNS suffix, extra record): DNS labels, at most 253 characters.
- tag: ``tag:`` then a letter, then letters, digits, ``-`` and ``_`` (Tailscale's rule), at most
  128 characters.
- identity-provider group (fills ``group:NAME`` in the policy): 1 to 128 printable characters, as
  the provider spells it (spaces and slashes included); at most 256 kept per user.
"""

from __future__ import annotations

import re
import unicodedata

from ..errors import Invalid

MAX_LABEL = 63
_INVALID = re.compile(r"[^a-z0-9-]+")

USER_NAME_MIN = 2
USER_NAME_MAX = 64
USER_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9._@-]*$"
_USER_NAME = re.compile(USER_NAME_PATTERN)

EMAIL_MAX = 254
_EMAIL_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_DNS_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

DISPLAY_NAME_MAX = 128
TAG_MAX = 128
TAG_PATTERN = r"^tag:[A-Za-z][A-Za-z0-9_-]*$"
_TAG = re.compile(TAG_PATTERN)
GROUP_MAX = 128
GROUPS_MAX = 256  # a user's groups are in every policy compilation: a claim of thousands is cut


class InvalidName(Invalid, ValueError):
    pass


def dns_label(hostname: str) -> str:
    """Lower-case, runs of other characters become one '-', trimmed to a DNS label.

    Only the first label of a dotted hostname counts ("laptop.local" → "laptop"), as the
    client's own MagicDNS name does.
    """
    first = hostname.strip().split(".")[0].lower()
    label = _INVALID.sub("-", first).strip("-")[:MAX_LABEL].strip("-")
    return label or "node"


def check_given_name(name: str) -> str:
    """A node name an admin chose: it must already be a DNS label; raises InvalidName."""
    if not name or len(name) > MAX_LABEL or _INVALID.search(name) or name[0] == "-" or name[-1] == "-":
        raise InvalidName(
            f"{name!r} is not a valid node name: use 1 to 63 lower-case letters, digits and "
            "inner hyphens"
        )
    return name


def check_user_name(name: str) -> str:
    if not USER_NAME_MIN <= len(name) <= USER_NAME_MAX or not _USER_NAME.fullmatch(name) or name.count("@") > 1:
        raise InvalidName(
            f"{_shown(name)} is not a valid user name: use {USER_NAME_MIN} to {USER_NAME_MAX} "
            "ASCII letters, digits, '-', '.', '_' and at most one '@', starting with a letter"
        )
    return name


def check_email(email: str) -> str:
    """An email address, or "" for none; raises InvalidName."""
    if email == "":
        return email
    local, at, domain = email.rpartition("@")
    labels = domain.split(".")
    if (
        not at or len(email) > EMAIL_MAX or len(local) > 64 or not _EMAIL_LOCAL.fullmatch(local)
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
    ):
        raise InvalidName(f"{_shown(email)} is not a valid email address (name@example.com)")
    return email


def is_email(text: str) -> bool:
    try:
        return bool(check_email(text))
    except InvalidName:
        return False


def check_display_name(name: str) -> str:
    if len(name) > DISPLAY_NAME_MAX or any(not _printable(c) for c in name):
        raise InvalidName(
            f"{_shown(name)} is not a valid display name: at most {DISPLAY_NAME_MAX} printable "
            "characters (spaces allowed, no control characters or line breaks)"
        )
    return name


def _printable(c: str) -> bool:
    # Spaces and the zero-width joiner of emoji sequences pass; control, format (bidi
    # overrides that reorder what an admin reads), private-use and line-separator
    # characters do not.
    return c in (" ", "\u200d") or unicodedata.category(c)[0] not in "CZ"


def check_domain(name: str) -> str:
    """A DNS name (a search domain, a split-DNS suffix, an extra record's name)."""
    labels = name.rstrip(".").split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise InvalidName(f"{_shown(name)} is not a DNS name (labels of letters, digits and inner hyphens)")
    return name


def check_tag(tag: str) -> str:
    if len(tag) > TAG_MAX or not _TAG.fullmatch(tag):
        raise InvalidName(
            f"{_shown(tag)} is not a tag: tags look like tag:name (a letter, then letters, digits, "
            f"'-' and '_'; at most {TAG_MAX} characters)"
        )
    return tag


def check_group(name: str) -> str:
    """A group name from an identity provider's groups claim."""
    if not name or len(name) > GROUP_MAX or any(not _printable(c) for c in name):
        raise InvalidName(f"{_shown(name)} is not a group name: 1 to {GROUP_MAX} printable characters")
    return name


def provider_groups(values) -> tuple[str, ...]:
    """The groups a user keeps from a provider's claim: the valid names, once each, in the
    provider's order, at most GROUPS_MAX."""
    out: dict[str, None] = {}
    for v in values:
        if len(out) >= GROUPS_MAX:
            break
        try:
            out[check_group(v)] = None
        except (InvalidName, TypeError):
            continue
    return tuple(out)


def _shown(value: str) -> str:
    """The offending value for a message: quoted, escaped, and cut if long."""
    return repr(value if len(value) <= 80 else value[:77] + "...")


def unique_name(base: str, taken: set[str], max_len: int = MAX_LABEL, fold=lambda s: s) -> str:
    """``base``, or ``base-1``, ``base-2``… the first one not taken, at most ``max_len``
    characters; ``fold`` is how names compare (str.casefold for user names)."""
    taken = {fold(t) for t in taken}
    if fold(base) not in taken:
        return base
    n = 1
    while True:
        suffix = f"-{n}"
        cand = base[: max_len - len(suffix)] + suffix
        if fold(cand) not in taken:
            return cand
        n += 1


def user_name_from(hint: str, taken: set[str]) -> str:
    """A valid user name nobody has (without regard to case), made from what an identity
    provider says about a person (a preferred username, an email's local part): accents
    dropped, other characters outside the rule removed, a letter first; "user" when nothing
    is left."""
    text = unicodedata.normalize("NFKD", hint).encode("ascii", "ignore").decode()
    base = re.sub(r"[^A-Za-z0-9._-]+", "", text).lstrip("0123456789._-")[:USER_NAME_MAX]
    if len(base) < USER_NAME_MIN:
        base = "user"
    return unique_name(base, taken, USER_NAME_MAX, str.casefold)


def clean_display_name(text: str) -> str:
    """A provider's name for a person as a display name: unprintable characters removed,
    cut to the limit."""
    return "".join(c for c in text if _printable(c))[:DISPLAY_NAME_MAX].strip()
