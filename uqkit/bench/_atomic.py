"""The benchmark's file I/O: re-exported from :mod:`uqkit._atomic`, where it lives so that the library (e.g.
:class:`uqkit.sgmcmc.SampleCollector`'s ``save`` / ``load``) writes and reads files the same way."""

from uqkit._atomic import CORRUPT_SUFFIX, CorruptFileError, atomic_write, read_json, read_torch, set_aside

__all__ = ["CORRUPT_SUFFIX", "CorruptFileError", "atomic_write", "read_json", "read_torch", "set_aside"]
