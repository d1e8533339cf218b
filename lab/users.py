"""Lab user names and passwords: one account per name on both servers."""

from __future__ import annotations

import re
import secrets
import sys

# Valid as an XMPP localpart and a SIP user part alike, with no quoting anywhere.
USER_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# Safe inside the double-quoted strings of the Kamailio configuration.
PASSWORD_PATTERN = re.compile(r"^[A-Za-z0-9_.~!*+=,;:@/-]{1,128}$")
GENERATED_PASSWORD_BYTES = 12


def new_password() -> str:
    """A random password (16 URL-safe characters)."""
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)


def check_user(name: str, password: str) -> None:
    """Raise ``ValueError`` naming the problem when a user name or password cannot be used in the lab."""
    if not isinstance(name, str) or not USER_NAME_PATTERN.match(name):
        raise ValueError(
            f"lab user name {name!r} must be 1-64 of a-z 0-9 . _ - and start with a letter or digit"
        )
    if not isinstance(password, str) or not PASSWORD_PATTERN.match(password):
        raise ValueError(
            f"the password of lab user {name!r} must be 1-128 of A-Z a-z 0-9 and _ . ~ ! * + = , ; : @ / -"
        )


def read_password(source: str) -> str:
    """The first line of file ``source`` (``-``: standard input), without its line ending."""
    if source == "-":
        text = sys.stdin.readline()
    else:
        with open(source, encoding="utf-8") as file:
            text = file.readline()
    password = text.rstrip("\r\n")
    if not password:
        raise ValueError("the password file is empty")
    return password
