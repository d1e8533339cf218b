"""What the owner keeps on the phone: settings, accounts, contacts and Wi-Fi networks, and their stored form.

Contract: every type here is a frozen value. ``to_record``/``from_record`` turn a part of the
profile into the JSON kept in the encrypted store and back; ``from_record`` raises
``ProfileError`` (naming the record and the field, never a value) for anything malformed, so a
damaged or hostile record is reported and the rest of the profile still loads. Passwords never
appear in a repr, and an account whose password is not remembered is stored without it. A Wi-Fi
network keeps the key derived from its passphrase, never the passphrase.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

AccountKind = Literal["sip", "xmpp"]
ACCOUNT_KINDS: tuple[AccountKind, ...] = ("sip", "xmpp")
MAX_TEXT = 200
"""Longest address, name or password accepted from the keypad or a record."""

SIP_TRANSPORTS = ("udp", "tcp", "tls")
SETTINGS_RECORD = "settings"
ACCOUNTS_RECORD = "accounts"
CONTACTS_RECORD = "contacts"
NETWORKS_RECORD = "networks"
PROFILE_RECORDS = (SETTINGS_RECORD, ACCOUNTS_RECORD, CONTACTS_RECORD, NETWORKS_RECORD)
SSID_MAX_BYTES = 32
PSK_BYTES = 32
PASSPHRASE_MIN_CHARS, PASSPHRASE_MAX_CHARS = 8, 63
"""A WPA passphrase's length (IEEE 802.11i); printable ASCII only."""


class ProfileError(ValueError):
    """A record or a form does not hold a valid profile part."""


@dataclass(frozen=True)
class Settings:
    """The owner's settings (the config file gives their first-boot defaults)."""

    display_name: str = ""
    clock_24h: bool = True
    screen_off_s: int = 60
    lock_after_s: int = 120
    call_history: bool = False
    message_history: bool = False


@dataclass(frozen=True)
class Account:
    kind: AccountKind
    address: str
    password: str = field(default="", repr=False)
    remember_password: bool = True
    allow_plain: bool = False
    """SIP: allow calls without ZRTP; XMPP: allow messages without OTR. Either is shown NOT
    ENCRYPTED throughout; refused by default (calls refused, messages never sent in the clear)."""
    transport: str = "udp"
    """How a SIP account reaches its server: udp, tcp or tls (verified: ``tls_pin`` or the system CAs)."""
    tls_pin: str = ""
    """SHA-256 of the server's certificate (64 hex digits), for servers outside the public CAs."""
    server: str = ""
    """XMPP: where to connect, "host" or "host:port", when not the address's domain on port 5222."""

    @property
    def label(self) -> str:
        return f"{self.kind.upper()} {self.address}"


@dataclass(frozen=True)
class Contact:
    """Someone to call (``address``, SIP) and/or chat with (``chat``, an XMPP address); at least one."""

    name: str
    address: str = ""
    chat: str = ""
    group: str = ""


@dataclass(frozen=True)
class WifiNetwork:
    """A Wi-Fi network the unlocked phone joins by itself: its SSID as the air carries it (bytes,
    not always UTF-8) and its WPA key, the 32-byte PSK derived from the passphrase (the
    passphrase itself is never kept), or None for an open network."""

    ssid: bytes
    psk: bytes | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return wifi_name(self.ssid)


def wifi_name(ssid: bytes) -> str:
    """An SSID as the screen shows it: UTF-8 where it is, "?" for anything unprintable."""
    text = ssid.decode("utf-8", "replace").replace("\ufffd", "?")
    return "".join(c if c.isprintable() else "?" for c in text) or "(hidden)"


@dataclass(frozen=True)
class Profile:
    settings: Settings = Settings()
    accounts: tuple[Account, ...] = ()
    contacts: tuple[Contact, ...] = ()
    networks: tuple[WifiNetwork, ...] = ()

    def with_part(self, part: str, value: Any) -> "Profile":
        return replace(self, **{_PART_FIELDS[part]: value})

    def part(self, part: str) -> Any:
        return getattr(self, _PART_FIELDS[part])


_PART_FIELDS = {SETTINGS_RECORD: "settings", ACCOUNTS_RECORD: "accounts", CONTACTS_RECORD: "contacts",
                NETWORKS_RECORD: "networks"}


def check_text(name: str, value: str, *, required: bool = True) -> str:
    """``value`` stripped of surrounding spaces; ProfileError naming the field (not the value)."""
    if not isinstance(value, str):
        raise ProfileError(f"{name} must be text")
    value = value.strip()
    if required and not value:
        raise ProfileError(f"{name} is empty")
    if len(value) > MAX_TEXT:
        raise ProfileError(f"{name} is longer than {MAX_TEXT} characters")
    if any(ord(c) < 0x20 for c in value):
        raise ProfileError(f"{name} contains control characters")
    return value


def check_address(kind: str, address: str) -> str:
    """A user@host address (SIP or XMPP), checked for shape only."""
    address = check_text("address", address)
    user, at, host = address.partition("@")
    if not at or not user or not host or " " in address or "@" in host:
        raise ProfileError("address must look like name@server")
    return address


def check_server(server: str) -> str:
    """"" or "host" or "host:port" (port 1-65535)."""
    server = check_text("server", server, required=False)
    if not server:
        return server
    host, colon, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
    if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", host) or (colon and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ProfileError("server must be host or host:port")
    return server


def split_server(server: str, default_host: str, default_port: int) -> tuple[str, int]:
    """(host, port) of a checked ``server``, the defaults where it says nothing."""
    if not server:
        return default_host, default_port
    host, colon, port = server.rpartition(":")
    return (host, int(port)) if colon else (server, default_port)


def make_account(kind: str, address: str, password: str, *, remember_password: bool = True,
                 allow_plain: bool = False, transport: str = "udp", tls_pin: str = "",
                 server: str = "") -> Account:
    if kind not in ACCOUNT_KINDS:
        raise ProfileError(f"account kind must be one of {', '.join(ACCOUNT_KINDS)}")
    if transport not in SIP_TRANSPORTS:
        raise ProfileError(f"transport must be one of {', '.join(SIP_TRANSPORTS)}")
    pin = check_text("TLS pin", tls_pin, required=False).replace(":", "").lower()
    if pin and not re.fullmatch(r"[0-9a-f]{64}", pin):
        raise ProfileError("TLS pin must be a SHA-256 in hex (64 digits)")
    return Account(kind, check_address(kind, address), check_text("password", password, required=False),
                   bool(remember_password), bool(allow_plain), transport, pin,
                   check_server(server) if kind == "xmpp" else "")


def make_contact(name: str, address: str = "", chat: str = "", group: str = "") -> Contact:
    address = check_text("address", address, required=False)
    chat = check_text("chat address", chat, required=False)
    if not address and not chat:
        raise ProfileError("a contact needs an address or a chat address")
    return Contact(check_text("name", name), check_address("contact", address) if address else "",
                   check_address("contact", chat) if chat else "", check_text("group", group, required=False))


def passphrase_problem(passphrase: str) -> str:
    """What is wrong with a WPA passphrase ("" when nothing is); never repeats it."""
    if not PASSPHRASE_MIN_CHARS <= len(passphrase) <= PASSPHRASE_MAX_CHARS:
        return f"the passphrase must be {PASSPHRASE_MIN_CHARS} to {PASSPHRASE_MAX_CHARS} characters long"
    if not all(" " <= char <= "~" for char in passphrase):
        return "the passphrase may only contain printable ASCII characters"
    return ""


def make_wifi_network(ssid: bytes, psk: bytes | None) -> WifiNetwork:
    if not isinstance(ssid, bytes) or not 1 <= len(ssid) <= SSID_MAX_BYTES:
        raise ProfileError(f"a Wi-Fi name is 1 to {SSID_MAX_BYTES} bytes")
    if psk is not None and (not isinstance(psk, bytes) or len(psk) != PSK_BYTES):
        raise ProfileError(f"a Wi-Fi key is {PSK_BYTES} bytes")
    return WifiNetwork(ssid, psk)


def to_record(part: str, value: Any) -> bytes:
    """The stored form of one profile part (JSON; passwords only where remembered)."""
    if part == SETTINGS_RECORD:
        data: Any = {f.name: getattr(value, f.name) for f in fields(Settings)}
    elif part == ACCOUNTS_RECORD:
        data = [{"kind": a.kind, "address": a.address, "remember_password": a.remember_password,
                 "allow_plain": a.allow_plain, "transport": a.transport, "tls_pin": a.tls_pin, "server": a.server,
                 **({"password": a.password} if a.remember_password else {})} for a in value]
    elif part == CONTACTS_RECORD:
        data = [{"name": c.name, "address": c.address, "chat": c.chat, "group": c.group} for c in value]
    elif part == NETWORKS_RECORD:
        data = [{"ssid": n.ssid.hex(), "psk": n.psk.hex() if n.psk is not None else None} for n in value]
    else:
        raise ProfileError(f"unknown profile record {part!r}")
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def from_record(part: str, raw: bytes, defaults: Settings) -> Any:
    """The profile part stored in ``raw`` (see the module contract)."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProfileError(f"record {part!r} is not JSON") from None
    try:
        if part == SETTINGS_RECORD:
            return _settings_from(data, defaults)
        if part == ACCOUNTS_RECORD:
            return tuple(make_account(a["kind"], a["address"], a.get("password", ""),
                                      remember_password=a["remember_password"] is True,
                                      allow_plain=a.get("allow_plain", False) is True,
                                      transport=a.get("transport", "udp"), tls_pin=a.get("tls_pin", ""),
                                      server=a.get("server", ""))
                         for a in _list(data))
        if part == CONTACTS_RECORD:
            return tuple(make_contact(c["name"], c.get("address", ""), c.get("chat", ""), c.get("group", ""))
                         for c in _list(data))
        if part == NETWORKS_RECORD:
            return tuple(make_wifi_network(bytes.fromhex(n["ssid"]), None if n["psk"] is None else bytes.fromhex(n["psk"]))
                         for n in _list(data))
    except ProfileError as e:
        raise ProfileError(f"record {part!r}: {e}") from None
    except (KeyError, TypeError, AttributeError, ValueError):  # ValueError: hex that is not
        raise ProfileError(f"record {part!r} misses a field or has a wrong type") from None
    raise ProfileError(f"unknown profile record {part!r}")


def _list(data: Any) -> list:
    if not isinstance(data, list):
        raise TypeError
    return data


def _settings_from(data: Any, defaults: Settings) -> Settings:
    if not isinstance(data, dict):
        raise TypeError
    values = {}
    for f in fields(Settings):
        if f.name not in data:
            continue  # a setting added by a newer firmware keeps its default
        value = data[f.name]
        expected = type(getattr(defaults, f.name))
        if type(value) is not expected:
            raise ProfileError(f"setting {f.name} has a wrong type")
        values[f.name] = check_text(f.name, value, required=False) if expected is str else value
    return replace(defaults, **values)
