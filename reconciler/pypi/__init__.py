"""PyPI channels: a PEP 503/691 simple repository mirrored from selected projects."""
