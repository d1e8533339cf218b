"""Keys: one stream of key events from the keypad and the hook switch, whatever the backend.

Every backend posts :class:`KeyEvent` values (``drivers.keys.events``): ``KeyEvent(key, pressed)``
with ``key`` one of "0"-"9", "*", "#", "up", "down", "ok", "back" (hw/pinmap.toml's names) and
``pressed`` True on the way down, False on the way up. The hook switch is the key "hook":
``pressed=True`` means OFF-hook (handset lifted), ``pressed=False`` ON-hook; compare with
``OFF_HOOK`` / ``ON_HOOK``. A stream starts from idle (no key down, handset on the cradle).

A backend is opened by name, ``open_keys(driver, **settings)``, and returns a KeySource:
``await source.run(post)`` calls ``post(event)`` on the running asyncio loop (no threads) until
``source.close()`` or cancellation. Backends:

- "matrix" (``drivers.keys.matrix``): the handset's key matrix and hook switch scanned through
  gpiozero; settings ``pin_factory`` ("lgpio" | "mock" | a Factory), ``pinmap``, ``scan_hz``,
  ``debounce_ms``. On "mock" the wires are simulated by ``drivers.keys.mock_wiring``.
- "socket" (``drivers.keys.socket_keys``): key names written as lines to a Unix socket (setting
  ``socket``): the test hook where nobody presses keys (the image's self-test).

More backends plug in with ``register_backend(name, opener)`` or one line in ``BACKENDS``.
"""

from drivers.keys.events import HOOK, KEY_NAMES, KEYPAD_KEYS, OFF_HOOK, ON_HOOK, KeyEvent
from drivers.keys.registry import BACKENDS, KeySource, open_keys, register_backend

__all__ = [
    "BACKENDS",
    "HOOK",
    "KEYPAD_KEYS",
    "KEY_NAMES",
    "OFF_HOOK",
    "ON_HOOK",
    "KeyEvent",
    "KeySource",
    "open_keys",
    "register_backend",
]
