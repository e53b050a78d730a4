"""YAML parser errors said in the words of the person who edits rule files.

The parser reports what it expected as a parser sees it ("mapping values are not allowed here",
"expected <block end>, but found '<block mapping start>'"). Almost every such error in a rule
file is one of a handful of slips: a line indented one step too far or not far enough, a tab, a
quote or bracket left open, a colon inside a value. This module recognises them from the error
and the lines around it, and says what to write instead::

    >>> lines = ["trigger:", "  birthday:", "    field: customer.birthday", '      at: "09:00"']
    >>> explain("mapping values are not allowed here", None, (4, 9), None, lines)
    (4, 7, 'this line is indented more than the one above; `at:` belongs under `birthday:`, lined up with `field:`')
"""  # noqa: E501

from __future__ import annotations

import re

Position = tuple[int, int]

_KEY = re.compile(r"^(\s*)(?:-\s+)*([^\s#:'\"{}\[\],&*!|>%@`][^:#]*?)\s*:(?:\s|$)")
_TOKEN_START = re.compile(r"found character '(.+)' that cannot start any token")


def explain(
    problem: str | None,
    context: str | None,
    problem_at: Position | None,
    context_at: Position | None,
    lines: list[str],
) -> tuple[int, int, str]:
    """Line, column (1-based) and a plain-words message for a YAML error: ``problem`` and
    ``context`` are the parser's texts with their positions, ``lines`` the file's lines."""
    at = problem_at or context_at or (1, 1)
    problem = problem or ""
    context = context or ""
    if "'\\t'" in problem:
        return (*at, "a tab is used here; indent with spaces, not tabs (2 spaces per level)")
    open_quote = _unclosed_quote(lines, at[0])
    if open_quote is not None:
        # A quote left open swallows the lines after it; the parser then stumbles further down.
        return (*open_quote, 'the quote " that starts here is never closed; add "')
    if "mapping values are not allowed" in problem:
        return _mapping_value(at, lines)
    if "expected <block end>" in problem:
        return _block_end(at, problem, lines)
    if "quoted scalar" in context and context_at:
        quote = _char_at(lines, context_at) or '"'
        return (*context_at, f"the quote {quote} that starts here is never closed; add {quote}")
    if "flow mapping" in context and context_at:
        return (*context_at, "the { that starts here is never closed; add } after the last value")
    if "flow sequence" in context and context_at:
        return (*context_at, "the [ that starts here is never closed; add ] after the last item")
    if "could not find expected ':'" in problem and context_at:
        line = _line(lines, context_at[0])
        key = re.match(r"\s*([\w-]+):\S", line)
        if key:
            return (
                context_at[0],
                key.end(1) + 1,
                f"put a space after the colon: `{key[1]}: …`",
            )
        return (*context_at, "this line is neither `key: value` nor a list item `- …`")
    if "found undefined alias" in problem:
        return (*at, 'a value starting with * must be in quotes ("*…")')
    token = _TOKEN_START.search(problem)
    if token:
        return (*at, f'a value starting with {token[1]} must be in quotes ("{token[1]}…")')
    if "{" in problem or "unhashable key" in problem:
        return (*at, f'{problem}; put text with {{{{ }}}} in quotes: "{{{{ ... }}}}"')
    return (*at, problem or context or "invalid YAML")


def _mapping_value(at: Position, lines: list[str]) -> tuple[int, int, str]:
    line_no = at[0]
    here = _key_line(lines, line_no)
    above = _previous_line(lines, line_no)
    if here is not None and above is not None:
        above_indent = _indent_of_key(lines[above - 1])
        if above_indent is not None and here[0] > above_indent:
            return _indented_more(at, lines)
    text = _line(lines, line_no)
    key_value = re.match(r"(\s*(?:-\s+)?[\w-]+):\s+(.*\S)", text)
    if key_value and ": " in key_value[2]:
        value = key_value[2].replace('"', '\\"')
        return (
            *at,
            f'a value with ": " in it must be in quotes: {key_value[1].strip()}: "{value}"',
        )
    return (*at, "a colon here is not allowed; put the value in quotes")


def _indented_more(at: Position, lines: list[str]) -> tuple[int, int, str]:
    """The line at ``at`` is a ``key:`` indented more than the ``key:`` line above it, which
    already has its value: it belongs beside that key, under the same parent."""
    here = _key_line(lines, at[0])
    above = _previous_line(lines, at[0])
    assert here is not None and above is not None
    indent, key = here
    above_key = _key_line(lines, above)
    parent = _parent_key(lines, above, above_key[0]) if above_key else None
    sibling = f", lined up with `{above_key[1]}:`" if above_key else ""
    where = f"belongs under `{parent}:`{sibling}" if parent else f"lines up{sibling}"
    return at[0], indent + 1, f"this line is indented more than the one above; `{key}:` {where}"


def _block_end(at: Position, problem: str, lines: list[str]) -> tuple[int, int, str]:
    line_no = at[0]
    here = _key_line(lines, line_no)
    above = _previous_line(lines, line_no)
    if "<scalar>" in problem and not (here and at[1] == here[0] + 1):
        return (*at, "unexpected text here; if it belongs to the value, quote the whole value")
    if here is not None and above is not None:
        indent, key = here
        above_key = _key_line(lines, above)
        above_indent = _indent_of_key(lines[above - 1])
        if above_indent is not None and indent > above_indent:
            return _indented_more(at, lines)
        if above_key is not None and above_indent is not None:
            side = "less" if indent < above_indent else "more"
            return (
                line_no,
                indent + 1,
                f"this line is indented {side} than the one above; to put `{key}:` next to "
                f"`{above_key[1]}:`, indent it by {above_indent} spaces",
            )
    return (*at, "the indentation of this line does not match the lines above")


def _unclosed_quote(lines: list[str], last: int) -> Position | None:
    """The first ``"`` left open on a line up to ``last`` (values are one line long in rule
    files, so a line with an odd number of unescaped double quotes has one open)."""
    for n in range(1, min(last, len(lines)) + 1):
        text = lines[n - 1].replace('\\"', "")
        if text.lstrip().startswith("#"):
            continue
        quotes = [i for i, c in enumerate(text) if c == '"']
        if len(quotes) % 2:
            return n, quotes[-1] + 1
    return None


def _line(lines: list[str], line_no: int) -> str:
    return lines[line_no - 1] if 0 < line_no <= len(lines) else ""


def _char_at(lines: list[str], at: Position) -> str:
    text = _line(lines, at[0])
    return text[at[1] - 1] if 0 < at[1] <= len(text) else ""


def _key_line(lines: list[str], line_no: int) -> tuple[int, str] | None:
    """(indentation of the key, key) of a ``key:`` line; list dashes count as indentation."""
    match = _KEY.match(_line(lines, line_no))
    if not match:
        return None
    return match.start(2), match[2]


def _indent_of_key(text: str) -> int | None:
    match = _KEY.match(text)
    return match.start(2) if match else None


def _previous_line(lines: list[str], line_no: int) -> int | None:
    """The nearest line above with content (not blank, not only a comment)."""
    for n in range(line_no - 1, 0, -1):
        stripped = lines[n - 1].strip()
        if stripped and not stripped.startswith("#"):
            return n
    return None


def _parent_key(lines: list[str], line_no: int, indent: int) -> str | None:
    """The key a line indented by ``indent`` sits under: the nearest key above, indented less."""
    for n in range(line_no - 1, 0, -1):
        found = _key_line(lines, n)
        if found is not None and found[0] < indent:
            return found[1]
    return None
