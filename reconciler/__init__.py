"""conda-reconcile: a declarative reconciler for conda channels."""

__version__ = "0.1.0"
