"""Plugins: the contract plugin authors import, and the machinery that runs them.

A plugin is a module holding one :class:`Plugin` named ``PLUGIN`` (rkllmd/plugins/loader.py says
where modules are found). Only plugins listed in ``[plugins] enabled`` run, in that order; their
config tables are validated with the rest of the configuration (rkllmd.config) before anything
starts.

- ``contract``: the events hooks get (``Request``, ``Token``, ``Final``) and the daemon's services;
- ``context``: what a plugin declares (``Plugin``) and the ``PluginContext`` handed to ``setup``;
- ``loader``: finding, importing and checking plugins and their config;
- ``hooks`` and ``host``: the chains and the lifecycle, for the daemon and the testing kit;
- ``builtin``: the plugins that ship with rkllmd.

Threads (see docs/ARCHITECTURE.md): preprocessors and topic handlers on the *ingress* thread,
routers and stats contributors on the *dispatcher* thread, setup and teardown on the *main*
thread (a retry after :class:`NotReady` on a timer thread), never the inference thread.

docs/PLUGINS.md is the guide for plugin authors; rkllmd.testing is the kit to test one. A plugin that
speaks answers takes ``SentenceChunker`` (or ``Utterances``, sentences ready to say) from here too.
"""

from __future__ import annotations

from rkllmd.plugins.context import Plugin, PluginContext
from rkllmd.plugins.contract import (
    API_VERSION,
    Final,
    LocalMessage,
    Message,
    NotReady,
    PluginConfig,
    PluginError,
    Request,
    Services,
    Token,
)
from rkllmd.plugins.host import PluginHost
from rkllmd.plugins.loader import PluginLoadError, discover, load_plugin
from rkllmd.protocol import ModelFacts, reply_body
from rkllmd.sentences import SentenceChunker, Utterances

__all__ = [
    "API_VERSION",
    "Final",
    "LocalMessage",
    "Message",
    "ModelFacts",
    "NotReady",
    "Plugin",
    "PluginConfig",
    "PluginContext",
    "PluginError",
    "PluginHost",
    "PluginLoadError",
    "Request",
    "SentenceChunker",
    "Services",
    "Token",
    "Utterances",
    "discover",
    "load_plugin",
    "reply_body",
]
