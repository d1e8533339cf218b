"""Device drivers for the Byline handset.

Each device (display, keys, indicators, audio) has one small contract and several backends chosen
by name, the way gpiozero swaps pin factories. Drivers know nothing of the phone: they take plain
settings and hand back frames, key events or audio buffers. A device that cannot be opened raises
:class:`drivers.errors.DeviceError`, which names the device and the setting to look at.
"""
