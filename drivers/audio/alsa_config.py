"""Which ALSA configuration libasound reads: the `alsa_config` setting and the shipped asoundrc.

libasound finds its configuration through the environment variable ALSA_CONFIG_PATH (a list of
files, separated by ':' or spaces), read again at every PCM open: when the list differs from the
one loaded before, libasound reloads its configuration for the PCMs opened from then on, and PCMs
already open keep the configuration they were opened with (measured with libasound 1.2.8 and
checked by tests/test_audio.py). So the setting may be applied at any time, but it is process-wide:
the last device opened with a non-empty `alsa_config` decides for every PCM opened after it.
"""

from __future__ import annotations

import os
from pathlib import Path

from drivers.errors import DeviceError

ALSA_CONFIG_PATH_VARIABLE = "ALSA_CONFIG_PATH"
SYSTEM_ALSA_CONFIG = "/usr/share/alsa/alsa.conf"
SHIPPED_ALSA_CONFIG = Path(__file__).with_name("asoundrc")


def alsa_config_path(alsa_config: str) -> str:
    """The ALSA_CONFIG_PATH value for ``alsa_config``: the system config, then each extra file.

    ``alsa_config`` names one or more config files separated by ':' (relative paths are taken from
    the current directory). Raises DeviceError (setting ``alsa_config``) for a missing or unreadable
    file, or a path ALSA cannot express (it splits the list at spaces too).
    """
    files = [SYSTEM_ALSA_CONFIG]
    for entry in filter(None, alsa_config.split(":")):
        path = Path(entry).expanduser().absolute()
        if any(character.isspace() for character in str(path)):
            raise DeviceError("audio", "alsa_config", f"ALSA cannot load a config file whose path has a space: {path}")
        if not path.is_file():
            raise DeviceError("audio", "alsa_config", f"ALSA config file not found: {path}")
        if not os.access(path, os.R_OK):
            raise DeviceError("audio", "alsa_config", f"ALSA config file is not readable: {path}")
        files.append(str(path))
    return ":".join(files)


def apply_alsa_config(alsa_config: str) -> None:
    """Make every PCM opened from now on in this process use ``alsa_config`` on top of the system config.

    An empty ``alsa_config`` leaves ALSA_CONFIG_PATH as the environment set it (the system config
    when unset). Raises DeviceError as :func:`alsa_config_path` does.
    """
    if alsa_config.strip():
        os.environ[ALSA_CONFIG_PATH_VARIABLE] = alsa_config_path(alsa_config)


def _pcm_argument(path: str | os.PathLike) -> str:
    text = str(Path(path).absolute())
    if "'" in text:
        raise ValueError(f"an ALSA PCM argument cannot hold a single quote: {text}")
    return f"'{text}'"


def file_playback_device(path: str | os.PathLike) -> str:
    """The PCM name of the shipped config that writes playback bit-exact to the raw file ``path``."""
    return f"byline_file_playback:{_pcm_argument(path)}"


def file_capture_device(path: str | os.PathLike) -> str:
    """The PCM name of the shipped config that captures from the raw file ``path`` (S16_LE mono)."""
    return f"byline_file_capture:{_pcm_argument(path)}"


def pulse_device(server: str) -> str:
    """The PCM (and mixer device) name of the shipped config for the PulseAudio server ``server``."""
    if "'" in server:
        raise ValueError(f"an ALSA PCM argument cannot hold a single quote: {server}")
    return f"byline_pulse:'{server}'"
