"""Serving channels over HTTP: files, passive fetches and the status page."""
