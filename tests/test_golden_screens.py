"""Golden images: the scenario runner renders the screen tour; every frame must match its PNG.

After an intended change of a screen, regenerate with BYLINE_UPDATE_GOLDEN=1 and look at the
new PNGs before committing them.
"""

import asyncio
import os
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from dataclasses import replace

from drivers.keys.events import KeyEvent
from firmware.effects import (CallChanged, CallView, ChatKey, ChatLine, ChatLineAdded, ConversationChanged,
                              ConversationView, NetworkShown, WifiScanned, WifiSeen)
from firmware.profile import Account, Contact, Profile, WifiNetwork
from firmware.scenario import headless_config, parse_script, run_script
from firmware.state import MENU, PhoneState, section_items, step
from firmware.ui.screens import render

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
TOUR = HERE / "scenarios" / "tour.txt"
UPDATE = os.environ.get("BYLINE_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    out = tmp_path_factory.mktemp("tour")
    frames = out / "frames"
    frames.mkdir()
    config = headless_config(display__driver="capture", display__capture_dir=str(frames))
    snaps = asyncio.run(run_script(parse_script(TOUR.read_text()), out, config))
    boot = out / "boot.png"
    Image.open(frames / "frame_000001.png").save(boot)
    return {p.stem: p for p in [boot, *snaps]}


EXPECTED = ("boot", "pin_setup", "pin_three_digits", "pin_too_short", "pin_repeat", "home", "menu",
            "menu_settings", "settings", "home_off_hook", "security", "account_form", "text_field")


def test_the_tour_snaps_every_expected_screen(tour):
    assert sorted(tour) == sorted(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_screen_matches_golden(tour, name):
    frame = Image.open(tour[name]).convert("1")
    golden_path = GOLDEN / f"{name}.png"
    if UPDATE:
        frame.save(golden_path)
    golden = Image.open(golden_path).convert("1")
    assert frame.size == golden.size == (128, 64)
    diff = ImageChops.difference(frame.convert("L"), golden.convert("L")).getbbox()
    assert diff is None, f"{name} differs from {golden_path} in the box {diff}"


def call_state(phase: str, security: str = "pending", sas: str = "", **view) -> PhoneState:
    """Home, unlocked, with one call (calls come from the calls unit, so the tour cannot make them)."""
    base = PhoneState(screen="home", locked=False, clock="09:41", date="Thu 26 Nov")
    return step(base, CallChanged(CallView("c1", "bob@byline.lab", view.pop("incoming", False), phase, security, sas,
                                           **view)))


CALL_SCREENS = {
    "call_incoming": call_state("incoming", incoming=True),
    "call_securing": call_state("connected"),
    "call_secure": call_state("connected", "secure", "k7f2"),
    "call_secure_b256": call_state("connected", "secure", "adroitness aftermath"),
    "call_verified": call_state("connected", "verified", "k7f2"),
    "call_key_changed": call_state("connected", "key_changed", "k7f2"),
    "call_not_encrypted": call_state("connected", "not_encrypted"),
    "call_held": call_state("connected", "verified", "k7f2", held=True),
    "call_ended": call_state("ended", reason="486 Busy Here"),
}


BEN = "ben@byline.lab"


def chat_state(security: str, *lines: tuple[bool, str, str], screen: str = "chat", **view) -> PhoneState:
    """The conversation with ben open (conversations come from the chat unit, so the tour cannot make them)."""
    profile = Profile(accounts=(Account("xmpp", "ann@byline.lab", "pw"),), contacts=(Contact("Ben", chat=BEN),))
    state = PhoneState(screen="home", locked=False, clock="09:41", date="Thu 26 Nov", profile=profile)
    state = step(state, ChatKey("ann@byline.lab", "7A2B9C1D 44E0F1A2 93BC0D1E 5F6A7B8C 9D0E1F2A"))
    for incoming, text, status in lines:
        state = step(state, ChatLineAdded("ann@byline.lab", BEN, ChatLine(1.0, incoming, text, status)))
    state = step(state, ConversationChanged(ConversationView("ann@byline.lab", BEN, security, **view)))
    return replace(state, screen=screen, chat_open=(("ann@byline.lab", BEN) if screen == "chat" else None),
                   menu_index=MENU.index("Messages"))


TALK = ((False, "Meet at nine?", "delivered"), (True, "Yes, by the river", "received"))
FINGERPRINT = "0A1B2C3D 4E5F6071 8293A4B5 C6D7E8F9 0A1B2C3D"
CHAT_SCREENS = {
    "chat_not_encrypted": chat_state("plaintext", (False, "Meet at nine?", "queued")),
    "chat_encrypted": chat_state("encrypted", *TALK, fingerprint=FINGERPRINT),
    "chat_verified": chat_state("verified", *TALK, fingerprint=FINGERPRINT),
    "chat_key_changed": chat_state("key_changed", *TALK, (True, "KEY CHANGED: verify again", "notice"),
                                   fingerprint=FINGERPRINT),
    "chat_plain_received": chat_state("plaintext", (True, "sent in the clear", "plain")),
    "messages_section": chat_state("encrypted", *TALK, screen="section"),
}


def network_state(*actions, lines=("eth0 192.168.1.23", "wlan0 Home", "wlan0 192.168.7.40")) -> PhoneState:
    """The Network list of a phone that knows the Wi-Fi "Home", then ``actions`` (events or keys)."""
    profile = Profile(networks=(WifiNetwork(b"Home", bytes(32)),))
    state = PhoneState(screen="section", locked=False, clock="09:41", date="Thu 26 Nov", profile=profile,
                       menu_index=MENU.index("Settings"))
    state = step(state, NetworkShown(lines))
    state = replace(state, section_index=[i.label for i in section_items(state)].index("Network"))
    for action in ("ok", *actions):
        state = step(state, KeyEvent(action, True)) if isinstance(action, str) else step(state, action)
    return replace(state, effects=())


SCANNED = WifiScanned((WifiSeen(b"Home", True, -41), WifiSeen("Café".encode(), False, -67),
                       WifiSeen(b"Press Room 5G", True, -72)))
NETWORK_SCREENS = {
    "network_list": network_state(),
    "wifi_searching": network_state("down", "down", "down", "ok"),
    "wifi_found": network_state("down", "down", "down", "ok", SCANNED, "down", "down"),
    "wifi_key": network_state("down", "down", "down", "ok", SCANNED, "down", "down", "ok", *"2468"),
}


@pytest.mark.parametrize("name", [*CALL_SCREENS, *CHAT_SCREENS, *NETWORK_SCREENS])
def test_call_chat_and_network_screens_match_golden(name):
    frame = render({**CALL_SCREENS, **CHAT_SCREENS, **NETWORK_SCREENS}[name])
    golden_path = GOLDEN / f"{name}.png"
    if UPDATE:
        frame.save(golden_path)
    diff = ImageChops.difference(frame.convert("L"), Image.open(golden_path).convert("L")).getbbox()
    assert diff is None, f"{name} differs from {golden_path} in the box {diff}"


def test_a_changed_screen_is_caught(tour):
    frame = Image.open(tour["home"]).convert("1")
    frame.putpixel((64, 32), 1 - frame.getpixel((64, 32)))
    golden = Image.open(GOLDEN / "home.png").convert("1")
    assert ImageChops.difference(frame.convert("L"), golden.convert("L")).getbbox() is not None
