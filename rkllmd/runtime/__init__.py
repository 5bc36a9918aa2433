"""Runtimes behind one interface; each is imported only when a model that uses it is opened."""
