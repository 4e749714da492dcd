"""Go's text/template with consul-template's functions: the engine of Nomad's ``template`` block.

Pure Python, the standard library and PyYAML/tomli-w (``toYAML``/``parseYAML``/``toTOML``); of yurt it
imports only ``yurt.errors``.

What is supported (Go's semantics, Go's output, Go's error messages):

* the syntax of ``text/template``: text and actions, ``{{- `` / `` -}}`` trim markers, comments
  ``{{/* */}}``, pipelines with ``|``, variables (``$x := ...``, ``$x = ...``, ``$``, ``range $i, $e :=``)
  scoped to the enclosing control structure, fields ``.Foo.Bar`` on maps and objects (and Go-style
  methods, e.g. ``.Tags.Contains "x"``), ``if``/``else if``/``else``, ``range`` (lists; maps in
  key order; integers; ``else``; ``break``/``continue``), ``with``/``else with``/``else``,
  ``define``/``template``/``block``, string (Go escapes), raw string, character, number, bool and
  nil literals, parenthesized pipelines, Go's truth; custom delimiters;
* the built-ins ``and or not len index slice eq ne lt le gt ge print printf println html js
  urlquery call``; ``printf`` with Go's verbs, flags, widths and precisions;
* consul-template's library: the data functions ``env key keyOrDefault keyExists ls safeLs tree
  safeTree service connect services node nodes caRoots caLeaf nomadService nomadServices nomadVar
  nomadVarExists nomadVarList file writeToFile scratch``,
  read from a ``Source`` (``service`` takes ``tag.name`` and ``name|any``/``|passing,warning``
  filters, healthy only by default), and the helpers (``toJSON parseJSON toYAML parseYAML toTOML split join replaceAll
  regexReplaceAll byKey byTag byMeta explode indent loop add ... sprig_*``; see ``library.HELPERS``;
  ``executeTemplate`` is a built-in of the executor).
  ``file``/``writeToFile`` use the node's files directly (``render(task_dir=, file_sandbox=)``);
  ``render(denied=)`` makes functions fail when called (Nomad's ``function_denylist``).
  ``sockaddr`` runs go-sockaddr's functions over the host's addresses (``sockaddr.py``, which
  also serves the agent config's address templates). Not supported: Vault (``secret``), ``plugin``.

Where it differs from Go (knowingly): regular expressions are Python's ``re`` (RE2's syntax is
nearly a subset; no linear-time guarantee); ``service``'s ``@dc`` and ``~near`` are accepted and
ignored (one datacenter); ``nomadService N "key" "name"`` picks a stable subset by a hash of its
own, not Nomad's; ``loop`` returns a list (Go: a channel); ``timestamp`` is in UTC; nested
``{{template}}`` calls stop at depth 100; parse errors carry a column (Go's carry only the line).

``render(text, source, ...)`` parses once (the parsed template is cached by its text, name and
delimiters) and executes; it answers the text, every ``Dependency`` it read (to watch) and those
that are missing (a KV key or a variable that does not exist yet: consul-template would block
on them, the caller waits for them instead). Every error is a ``TemplateError`` (an
``InvalidInput``) whose message is Go's, e.g. ``template: x.tpl:3:14: unexpected "}" in operand``
or ``template: x.tpl:1:2: executing "x.tpl" at <.Foo>: map has no entry for key "Foo"``; the
column is Go's (the offset in the line, from 0).
"""

from __future__ import annotations

from .exec import BUILTINS, FuncSpec, Template
from .gofmt import NO_VALUE, FuncError
from .parse import TemplateError
from .render import Rendered, execute, parse, render
from .source import (CARoot, CatalogNode, CatalogNodeInfo, CatalogNodeService, CatalogSnippet, Dependency, HealthCheck,
                     HealthService, KeyPair, LeafCert, MemorySource, NomadService,
                     NomadServicesSnippet, NomadVariable, NomadVarItem, NomadVarItems, NomadVarMeta, ServiceTags,
                     Source)

__all__ = [
    "render", "Rendered", "parse", "execute", "Template", "TemplateError", "FuncError", "FuncSpec", "BUILTINS",
    "NO_VALUE", "Source", "MemorySource", "Dependency", "KeyPair", "HealthService", "HealthCheck", "CatalogSnippet",
    "NomadService", "NomadServicesSnippet", "NomadVariable", "NomadVarItem", "NomadVarItems", "NomadVarMeta",
    "ServiceTags", "CARoot", "CatalogNode", "CatalogNodeInfo", "CatalogNodeService", "LeafCert",
]
