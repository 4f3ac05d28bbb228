"""Backends behind one small interface: ``start`` (per image), ``step`` (per scale), ``decode``."""
