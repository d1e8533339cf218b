"""Byline's firmware: the supervisor, its screens, and the tools that run it off the handset.

The supervisor (firmware.supervisor) owns the one asyncio event loop. Drivers post events onto
it; firmware.state turns (state, event) into the next state; firmware.ui draws a state as an
image. Only the supervisor changes state, and only on its loop.
"""
