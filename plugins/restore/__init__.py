"""FastVARRestore: area-upsample a cached token map and scatter the freshly computed tokens into it."""

from .reference import area_upsample, restore_reference

__all__ = ["area_upsample", "restore_reference"]
