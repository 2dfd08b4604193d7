"""mkdocs hook: render the Sphinx roles of the package's docstrings (``:func:`x```, …).

The docstrings cross-reference with Sphinx roles, which Markdown leaves as ``:func:`` followed by
a code span. This turns each into the code span alone, linked by mkdocs-autorefs when the target
is a documented object (``optional``: no warning when it is not, e.g. a name relative to its
module). ``~a.b.c`` shows ``c``, as in Sphinx.
"""

from __future__ import annotations

import re

_ROLE = re.compile(
    r":(?:py:)?(?:func|meth|class|mod|attr|data|const|exc|obj):<code>(~?)([\w.]+)</code>"
)


def _replace(match: re.Match) -> str:
    short, target = match.group(1), match.group(2)
    text = target.rsplit(".", 1)[-1] if short else target
    return f'<autoref identifier="{target}" optional><code>{text}</code></autoref>'


def on_page_content(html: str, **kwargs) -> str:
    """Replace every role + code span in a page's HTML."""
    return _ROLE.sub(_replace, html)
