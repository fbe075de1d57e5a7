"""conda-reconcile: a declarative reconciler for conda channels."""

from importlib.metadata import PackageNotFoundError, version

try:
    # Written into the installed metadata by hatch-vcs from the git tag, for wheels and
    # editable installs alike; nothing is generated inside the package.
    __version__ = version("conda-reconcile")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0.0.0+unknown"
