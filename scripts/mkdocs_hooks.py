"""MkDocs hook: the manual's equations become MathML when the site is built.

pymdownx.arithmatex (generic mode) wraps `$...$` in `<span class="arithmatex">\\(...\\)</span>` and
`$$...$$` in `<div class="arithmatex">\\[...\\]</div>`; this turns each into MathML, which browsers
render natively, so the pages need no JavaScript and no network to show the mathematics.
"""

from __future__ import annotations

import html
import re
from typing import Any

from latex2mathml.converter import convert

INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)
BLOCK = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)


def on_page_content(content: str, **_: Any) -> str:
    content = BLOCK.sub(lambda m: convert(html.unescape(m.group(1)), display="block"), content)
    return INLINE.sub(lambda m: convert(html.unescape(m.group(1))), content)
