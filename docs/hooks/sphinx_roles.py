"""MkDocs hook: Sphinx roles in docstrings (``:mod:`x```, ``:class:`y```) shown as plain code.

Some of polyfuse's docstrings use reST cross-reference roles; mkdocstrings renders the backticked
part as code and leaves the role name in front of it (":class:SpecError"). This drops the role
name from the rendered API pages, so the Python files keep their markup unchanged.
"""
from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:py:)?(?:mod|class|func|meth|attr|exc|data|obj):(?=<code>)")


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    return ROLE.sub("", html)
