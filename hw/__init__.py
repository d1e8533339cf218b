"""Byline handset hardware: pin tables and device-tree overlays generated from hw/pinmap.toml."""
