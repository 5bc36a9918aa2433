"""Plugins that ship with rkllmd, one module each (see docs/PLUGINS.md).

rkllmd finds them by scanning this package; a module starting with ``_`` is not a plugin.
Each module declares ``PLUGIN = rkllmd.plugins.Plugin(...)``. Only the plugins named in the
``[plugins] enabled`` list of the configuration run.
"""
