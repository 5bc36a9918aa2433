"""Plugins: the contract plugin authors import, and the machinery that runs them.

A plugin is a module holding one :class:`Plugin` named ``PLUGIN`` (rkllmd/plugins/loader.py says
where modules are found). Only plugins listed in ``[plugins] enabled`` run, in that order; their
config tables are validated with the rest of the configuration (rkllmd.config) before anything
starts.

- ``contract``: the events hooks get (``Exchange``, ``Token``, ``Final``) and the daemon's services;
- ``context``: what a plugin declares (``Plugin``) and the ``PluginContext`` handed to ``setup``;
- ``loader``: finding, importing and checking plugins and their config;
- ``hooks`` and ``host``: the chains and the lifecycle, for the daemon and the testing kit;
- ``builtin``: the plugins that ship with rkllmd.

Threads (see docs/ARCHITECTURE.md): preprocessors and topic handlers on the *ingress* thread,
routers and stats contributors on the *dispatcher* thread, setup and teardown on the *main*
thread (a retry after :class:`NotReady` on a timer thread), never the inference thread.

docs/PLUGINS.md is the guide for plugin authors; rkllmd.testing is the kit to test one. A plugin that
speaks answers takes ``SentenceChunker`` (or ``Utterances``, sentences ready to say) from here too.

This package is the plugin API: a plugin imports rkllmd from here (and ``rkllmd.protocol``, the
MQTT protocol's names) and nothing else of rkllmd, so the core can move behind it; below are the
core's names a plugin may need (errors, the model rule ``resolve``, ``load_problems``, the
configuration's ``Settings``, private files). tests/test_plugin_imports.py holds every plugin to it.
"""

from __future__ import annotations

from rkllmd import __version__ as RKLLMD_VERSION
from rkllmd.errors import NotFound, RequestError, RkllmdError, UnknownModel, WrongType
from rkllmd.exchange import resolve
from rkllmd.plugins.context import Plugin, PluginContext
from rkllmd.plugins.contract import (
    API_VERSION,
    Exchange,
    Final,
    LocalMessage,
    Message,
    NotReady,
    PluginConfig,
    PluginError,
    Services,
    Token,
)
from rkllmd.plugins.host import PluginHost
from rkllmd.plugins.loader import PluginLoadError, discover, load_plugin
from rkllmd.private import open_private, read_secret, tighten
from rkllmd.protocol import ModelFacts, reply_body
from rkllmd.runtime.registry import load_problems
from rkllmd.sentences import MAX_CHARS, MIN_CHARS, SentenceChunker, Utterances
from rkllmd.settings import Settings

__all__ = [
    "API_VERSION",
    "MAX_CHARS",
    "MIN_CHARS",
    "RKLLMD_VERSION",
    "Exchange",
    "Final",
    "LocalMessage",
    "Message",
    "ModelFacts",
    "NotFound",
    "NotReady",
    "Plugin",
    "PluginConfig",
    "PluginContext",
    "PluginError",
    "PluginHost",
    "PluginLoadError",
    "RequestError",
    "RkllmdError",
    "SentenceChunker",
    "Services",
    "Settings",
    "Token",
    "UnknownModel",
    "Utterances",
    "WrongType",
    "discover",
    "load_plugin",
    "load_problems",
    "open_private",
    "read_secret",
    "reply_body",
    "resolve",
    "tighten",
]
