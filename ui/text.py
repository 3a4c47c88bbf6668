"""User-derived text (file names, DICOM fields, registry notes, error messages) shown as
plain text in Streamlit's Markdown-rendering elements.

`st.markdown`, `st.caption`, `st.error`, `st.warning`, `st.info`, `st.success`, table cells
and metric labels render Markdown: emphasis, links, inline HTML, LaTeX (`$...$`), emoji
and colour shortcodes (`:red[...]`) and GFM's bare links (`http://...`, `www.`, e-mail
addresses). `plain(text)` makes all of that literal with CommonMark backslash escapes:
always for the characters that act anywhere in a line (`` \\ ` * _ [ ] ( ) < $ : | ~ { } & @ ``,
and the dot of `www.`), and at the start for those that act only there (`#`, `>`, `-`,
`+`, `=`, `1.`, leading spaces). Line breaks become spaces. The result reads the same
where nothing was active: `threshold: 0.5 -> 0.3` keeps its `0.5 -> 0.3`.
A file named `**x**[link](http://example.org).png` shows exactly that.

`code(text)` shows an identifier as inline code instead (never rendered).
"""

from __future__ import annotations

import re

__all__ = ["plain", "code"]

_ANYWHERE = re.compile(r"([\\`*_\[\]()<$:|~{}&@])")
_WWW = re.compile(r"(?i)\b(www)\.")
_LINE_START = re.compile(r"^(\s*)([#>+=-]|\d+[.)])")


def plain(text: object) -> str:
    """`text` escaped for Markdown: shown literally by st.markdown, st.error and the like."""
    value = " ".join(str(text).splitlines()) if text is not None else ""
    value = _ANYWHERE.sub(r"\\\1", value)
    value = _WWW.sub(r"\1\\.", value)
    match = _LINE_START.match(value)
    if match:  # a heading, quote, list or rule marker at the start: escape its last character
        marker = match.group(2)
        value = value[match.end(1):match.end(2) - 1] + "\\" + marker[-1] + value[match.end(2):]
    return value.lstrip()


def code(text: object) -> str:
    """`text` as inline code (monospace, never rendered), for identifiers such as model ids
    and paths; backticks inside are replaced so that the span cannot be closed early."""
    value = " ".join(str(text).splitlines()).replace("`", "'")
    return f"`{value}`"
