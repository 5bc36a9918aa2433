"""Runtimes behind one interface (``base``), one package per kind, found through ``registry``."""
