"""Screens: pure functions from phone state to a 128x64 one-bit image."""
