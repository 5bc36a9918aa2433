"""Plugins that ship with rkllmd, one module (or package) each (see docs/PLUGINS.md).

rkllmd finds them by name in this package; a module starting with ``_`` is not a plugin. Each
declares ``PLUGIN = rkllmd.plugins.Plugin(...)``. Only the plugins named in the ``[plugins]
enabled`` list of the configuration run.
"""
