"""The phone itself: ``python -m firmware.phone [--config FILE]`` runs the supervisor with the
drivers its config names, until SIGTERM or SIGINT (systemctl stop, power-off), then stops every
unit cleanly. This is what the SD image's byline.service runs; the simulator (firmware.simulator)
and the scenario runner (firmware.scenario) are the other two ways to run the same supervisor.

Logs go to stderr (on the image: the journal, kept in memory only).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from firmware.config import Config, load_config
from firmware.supervisor import Supervisor

log = logging.getLogger("byline.phone")

DEFAULT_CONFIG = "/etc/byline/config.toml"


async def run(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    supervisor = Supervisor(config)
    log.info("supervisor starting: %s", ", ".join(unit.name for unit in supervisor.units))
    await supervisor.run(stop)
    log.info("supervisor stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware.phone", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"the TOML config file (default {DEFAULT_CONFIG})")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = load_config(args.config)
    for problem in config.problems:
        log.warning("%s", problem)
    asyncio.run(run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
