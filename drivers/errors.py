"""The one error every driver raises when its device is missing or broken."""


class DeviceError(Exception):
    """A device could not be opened or used.

    ``device`` names the device for a person ("display", "audio capture"); ``setting`` is the
    name of the driver parameter to look at (the firmware prefixes its config section, so the
    message reads ``display.i2c_address``); ``reason`` says what went wrong, without secrets.
    """

    def __init__(self, device: str, setting: str, reason: str):
        super().__init__(f"{device}: {reason} (check setting '{setting}')")
        self.device = device
        self.setting = setting
        self.reason = reason
