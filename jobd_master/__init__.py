"""jobd-master: the registry of jobd workers, and the router of pokes and requests to them."""

from jobd import __version__

__all__ = ["__version__"]
