"""Networking: the firmware's link to the outside world (Wi-Fi through wpa_supplicant)."""
