"""Keys from a Unix socket: the test hook of the image's self-test and of hardware-in-the-loop
runs, where no person presses the keypad.

Each line a client writes is one action: a key name (``0``-``9``, ``*``, ``#``, ``up``, ``down``,
``ok``, ``back``) is a press followed by its release; ``lift`` and ``hangup`` move the hook.
Several clients may connect one after another; an unknown line is answered ``?`` and ignored,
every good one ``ok`` once it has been posted. The socket (mode 0600) is made at ``path``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from drivers.errors import DeviceError
from drivers.keys.events import KEYPAD_KEYS, OFF_HOOK, ON_HOOK, KeyEvent

MAX_LINE_BYTES = 64


class SocketKeys:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._server: asyncio.AbstractServer | None = None
        self._post: Callable[[KeyEvent], None] | None = None

    async def run(self, post: Callable[[KeyEvent], None]) -> None:
        self._post = post
        self.path.unlink(missing_ok=True)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path))
            os.chmod(self.path, 0o600)
        except OSError as e:
            raise DeviceError("keypad", "socket", f"cannot listen on {self.path}: {e.strerror}") from None
        await self._server.serve_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                events = actions(line[:MAX_LINE_BYTES].decode("ascii", "replace").strip())
                for event in events:
                    self._post(event)
                writer.write(b"ok\n" if events else b"?\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # a client that went away or sent an endless line: it is dropped, the phone goes on
        finally:
            writer.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.path.unlink(missing_ok=True)


def actions(line: str) -> list[KeyEvent]:
    """The events one line stands for; [] for anything else."""
    if line in KEYPAD_KEYS:
        return [KeyEvent(line, True), KeyEvent(line, False)]
    if line in ("lift", "hangup"):
        return [OFF_HOOK if line == "lift" else ON_HOOK]
    return []


def open_socket_keys(*, socket: str = "", **_ignored) -> SocketKeys:
    """The socket backend; matrix settings (scan rate, debounce) do not apply and are ignored."""
    if not socket:
        raise DeviceError("keypad", "socket", "the socket keys driver needs keys.socket (a path)")
    return SocketKeys(Path(socket))
