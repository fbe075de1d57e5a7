"""Mirroring upstream conda channels: upstream client, selection, downloads."""
