"""Keys backends by name, the way gpiozero picks pin factories: open_keys("matrix", ...)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Protocol

from drivers.errors import DeviceError
from drivers.keys.events import KeyEvent


class KeySource(Protocol):
    """What every keys backend returns."""

    async def run(self, post: Callable[[KeyEvent], None]) -> None:
        """Post each key event on the running loop until close() or cancellation."""

    def close(self) -> None:
        """Release the device (idempotent)."""


BACKENDS: dict[str, str | Callable[..., KeySource]] = {
    "matrix": "drivers.keys.matrix:open_matrix_keypad",
    "socket": "drivers.keys.socket_keys:open_socket_keys",
}
"""Backend name -> opener. An opener takes the backend's settings as keyword arguments (each with
a default) and returns a KeySource. It is given as a callable or, so that naming a backend imports
nothing until it is opened, as "package.module:function"."""


def register_backend(name: str, opener: str | Callable[..., KeySource]) -> None:
    """Make ``open_keys(name, ...)`` call ``opener`` (a callable or "package.module:function")."""
    BACKENDS[name] = opener


def open_keys(driver: str, **settings) -> KeySource:
    """Open the keys backend named ``driver`` with ``settings``.

    Raises DeviceError: setting ``driver`` for an unknown backend, the setting's own name for a
    setting the backend does not take, and whatever the backend raises when it cannot open.
    """
    try:
        target = BACKENDS[driver]
    except KeyError:
        raise DeviceError("keypad", "driver", f"unknown keys driver {driver!r} (one of {', '.join(sorted(BACKENDS))})") from None
    if isinstance(target, str):
        module_name, _, function_name = target.partition(":")
        opener = getattr(importlib.import_module(module_name), function_name)
    else:
        opener = target
    parameters = inspect.signature(opener).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        for name in settings:
            if name not in parameters:
                raise DeviceError("keypad", name, f"the {driver!r} keys driver has no setting {name!r} (it takes: {', '.join(parameters)})")
    return opener(**settings)
