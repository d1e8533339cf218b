"""The desktop simulator: the real firmware with simulated drivers, in this terminal.

Run by ``./byline run``. The OLED is drawn in the terminal, the PC keyboard is the keypad and
hook switch, GPIO is gpiozero's MockFactory (LED states shown under the screen), and the local
lab (Prosody and Kamailio on free loopback ports) starts beside the phone. Logs go to a file in
the run directory, never to the terminal the phone draws on.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import logging
import os
import ssl
import sys
import tempfile
import textwrap
from pathlib import Path

from drivers.audio import SHIPPED_ALSA_CONFIG
from drivers.display import register_display_backend
from drivers.display.terminal import open_terminal, text_size
from drivers.keys import register_backend
from drivers.keys.keyboard import KEYMAP_HELP, open_keyboard
from firmware.config import Config, load_config
from firmware.effects import LabOffer
from firmware.profile import Account, Contact
from firmware.state import PhoneState
from firmware.supervisor import Supervisor
from firmware.units import DisplayUnit, IndicatorsUnit, Unit

log = logging.getLogger("byline.simulator")

LAB_SELF = "alice"
"""Who the person at the simulator is in the lab."""

PANEL_WIDTH = 80

SIMULATED_DRIVERS = {
    "display__driver": "terminal",
    "keys__driver": "keyboard",
    "gpio__pin_factory": "mock",
    # No sound card on a PC we can count on: the shipped ALSA PCMs, paced by our own clock.
    "audio__capture_device": "byline_silence",
    "audio__playback_device": "byline_null",
    "audio__alsa_config": str(SHIPPED_ALSA_CONFIG),
    "audio__paced_by": "clock",
    "lab__enabled": True,
    # A real software TPM (swtpm) stands in for the phone's TPM module; its state lives beside
    # the store's directory.
    "security__tpm": "simulated",
    # A PC may run its own SIP software on 5060, and the lab's servers are on loopback.
    "calls__bind_address": "127.0.0.1",
    "calls__sip_port": 0,
}


class PanelUnit(Unit):
    """Prints the simulator's panel under the screen: hook, LEDs, lab and the key map."""

    name = "panel"

    def __init__(self, display: DisplayUnit, indicators: IndicatorsUnit | None):
        self._display = display
        self._indicators = indicators
        self.lab_line = "lab: off"

    def show(self, state: PhoneState) -> None:
        if self._display.display is None:
            return
        leds = self._indicators.indicators.state() if self._indicators and self._indicators.indicators else {}
        lines = [
            f"handset: {'LIFTED' if state.off_hook else 'on cradle'}   "
            + "  ".join(f"{name}:{mode}" for name, mode in leds.items()),
            *textwrap.wrap(self.lab_line, PANEL_WIDTH, subsequent_indent="  "),
            *textwrap.wrap("keys: " + "   ".join(f"{keys} {what}" for keys, what in KEYMAP_HELP), PANEL_WIDTH,
                           subsequent_indent="      "),
        ]
        top = text_size(self._display.display.device.style)[1] + 1
        out = "".join(f"\x1b[{top + i};1H\x1b[2K{line}" for i, line in enumerate(lines))
        sys.stdout.write(out)
        sys.stdout.flush()


async def _start_lab(run_dir: Path, panel: PanelUnit, supervisor: Supervisor) -> object | None:
    panel.lab_line = "lab: starting Prosody and Kamailio..."
    panel.show(supervisor.state)
    lab = None
    try:
        from lab import Lab

        lab = Lab(directory=run_dir / "lab")
        await asyncio.get_running_loop().run_in_executor(None, lab.start)
    except Exception as e:  # the phone works without the lab; say why it is missing
        log.error("lab did not start: %s", e)
        panel.lab_line = f"lab: failed ({e}); see the log"
    else:
        supervisor.post(lab_offer(lab))
        panel.lab_line = (f"lab: you are alice (SIP {lab.sip.host}:{lab.sip.port}, XMPP {lab.xmpp.jid(LAB_SELF)}); "
                          "Contacts has Bob and Echo (lab): lift the handset on one to call, or choose Chat; "
                          "Echo answers in OTR, and 'byline' to any question")
    panel.show(supervisor.state)
    return lab


def lab_offer(lab) -> LabOffer:
    """The lab's SIP and XMPP accounts for alice and its other users as contacts, for the phone's profile.

    The XMPP account trusts the lab's server by a pin of its certificate: the phone's CA list
    stays the system's.
    """
    from lab.certs import CERT_FILE

    sip, xmpp = lab.sip, lab.xmpp
    address = f"{{}}@{sip.host}:{sip.port}".format
    pem = (xmpp.ca_path.parent / CERT_FILE).read_text()
    pin = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
    accounts = (Account("sip", address(LAB_SELF), lab.users[LAB_SELF]),
                Account("xmpp", xmpp.jid(LAB_SELF), lab.users[LAB_SELF], tls_pin=pin,
                        server=f"{xmpp.host}:{xmpp.port}"))
    contacts = tuple(Contact(f"{user.capitalize()} (lab)", address(user), xmpp.jid(user), "lab")
                     for user in lab.users if user != LAB_SELF)
    return LabOffer(sip.host, frozenset(lab.users), accounts, contacts, domain=xmpp.domain)


async def run(config: Config, run_dir: Path) -> None:
    stop = asyncio.Event()
    register_display_backend("terminal", open_terminal)
    register_backend("keyboard", functools.partial(open_keyboard, fd=sys.stdin.fileno(), on_quit=stop.set))
    supervisor = Supervisor(config)
    display = next(u for u in supervisor.units if isinstance(u, DisplayUnit))
    indicators = next((u for u in supervisor.units if isinstance(u, IndicatorsUnit)), None)
    panel = PanelUnit(display, indicators)
    supervisor.units.append(panel)
    sys.stdout.write("\x1b[?25l\x1b[2J")  # hide the cursor, clear the screen
    lab = None
    try:
        runner = asyncio.create_task(supervisor.run(stop))
        if config["lab.enabled"]:
            lab = await _start_lab(run_dir, panel, supervisor)
        await runner
    finally:
        if lab is not None:
            lab.stop()
        sys.stdout.write("\x1b[?25h\x1b[2J\x1b[H")
        sys.stdout.flush()


def default_state_dir() -> Path:
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "byline-simulator" / "state"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./byline run", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a TOML config file (the simulated drivers are kept)")
    parser.add_argument("--no-lab", action="store_true", help="do not start the local lab")
    parser.add_argument("--run-dir", help="where logs and the lab live (default: a new temporary directory)")
    parser.add_argument("--state-dir", type=Path, default=default_state_dir(),
                        help="the phone's encrypted store (its simulated TPM lives beside it); default: %(default)s, "
                             "kept between runs like a real phone's")
    args = parser.parse_args(argv)
    if not os.isatty(sys.stdin.fileno()):
        print("byline: the simulator needs a terminal; for headless runs use ./byline scenario", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="byline-sim-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=run_dir / "byline.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = dict(SIMULATED_DRIVERS, lab__enabled=not args.no_lab,
                     security__state_dir=str(args.state_dir.expanduser().resolve()))
    config = load_config(args.config).with_values(**overrides)
    asyncio.run(run(config, run_dir))
    print(f"byline: stopped; log in {run_dir / 'byline.log'}; encrypted state in {args.state_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
