"""Sphinx directives that render ferjax's command-line surface from the code itself.

``ferjax-run-flags``: the absl flags of ``ferjax run`` (= ``python -m ferjax.run``) with their
defaults and help. ``ferjax-experiments``: every experiment with its variants and the first
paragraph of its module docstring. Text in backticks becomes inline code; nothing else is parsed,
so a docstring cannot break the build.
"""
from __future__ import annotations

import re
import sys

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def inline(text: str) -> list[nodes.Node]:
    """Text with `code` spans as docutils nodes."""
    parts = re.split(r"(`[^`]+`)", " ".join(text.split()))
    return [nodes.literal(p[1:-1], p[1:-1]) if p.startswith("`") and p.endswith("`") and len(p) > 1
            else nodes.Text(p) for p in parts if p]


def table(header: list[str], rows: list[list[list[nodes.Node]]]) -> nodes.table:
    tbl = nodes.table()
    group = nodes.tgroup(cols=len(header))
    tbl += group
    for _ in header:
        group += nodes.colspec(colwidth=1)
    head = nodes.thead()
    group += head
    head += nodes.row("", *[nodes.entry("", nodes.paragraph("", h)) for h in header])
    body = nodes.tbody()
    group += body
    for cells in rows:
        body += nodes.row("", *[nodes.entry("", nodes.paragraph("", "", *c)) for c in cells])
    return tbl


class RunFlags(SphinxDirective):
    """The flags `ferjax run` defines (name, default, help)."""

    def run(self) -> list[nodes.Node]:
        import ferjax.run  # noqa: F401  (defines the flags)
        from absl import flags

        rows = []
        for flag in sorted(flags.FLAGS.get_flags_for_module(sys.modules["ferjax.run"]), key=lambda f: f.name):
            default = "" if flag.default is None else repr(flag.default)
            rows.append([[nodes.literal(f"--{flag.name}", f"--{flag.name}")],
                         [nodes.literal(default, default)] if default else [],
                         inline(flag.help or "")])
        note = nodes.paragraph("", "", *inline(
            "Besides these, `--config.a.b=VALUE` overrides any field of the experiment's config "
            "(typed by the default value and checked before any work starts); `ferjax run` also takes "
            "every flag with hyphens (`--print-config`)."))
        return [table(["flag", "default", "what it does"], rows), note]


class Experiments(SphinxDirective):
    """Every experiment: name, variants with their descriptions, the docstring's first paragraph."""

    def run(self) -> list[nodes.Node]:
        from ferjax import config

        rows = []
        for name in config.experiment_names():
            module = config._experiment_module(name)
            declared = getattr(module, "VARIANTS", ())
            variant_nodes: list[nodes.Node] = []
            for v in config.variants(name):
                if variant_nodes:
                    variant_nodes.append(nodes.Text("; "))
                variant_nodes.append(nodes.literal(f"{name}:{v}", f"{name}:{v}"))
                if isinstance(declared, dict) and declared.get(v):
                    variant_nodes += [nodes.Text(" ("), *inline(declared[v]), nodes.Text(")")]
            doc = (module.__doc__ or "").strip().split("\n\n")[0]
            rows.append([[nodes.literal(name, name)], variant_nodes, inline(doc)])
        return [table(["experiment", "variants", "what it is"], rows)]


def setup(app):
    app.add_directive("ferjax-run-flags", RunFlags)
    app.add_directive("ferjax-experiments", Experiments)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
