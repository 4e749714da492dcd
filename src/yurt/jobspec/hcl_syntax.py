"""HCL2 syntax: python-hcl2's parser, read into bodies, attributes and blocks with positions.

python-hcl2 gives a Lark parse tree with line and column on every node; this module keeps
those positions (the plain dict API drops them) so every error can point at its line.
Expressions stay as parse trees; `hcl_eval` evaluates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hcl2
from lark import Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .errors import JobspecError, Position

MAX_DEPTH = 64  # blocks inside blocks; a job needs about eight


@dataclass
class Attribute:
    name: str
    expr: Tree
    pos: Position


@dataclass
class Block:
    type: str
    labels: list[str]
    body: Body
    pos: Position
    label_pos: list[Position] = field(default_factory=list)


@dataclass
class Body:
    attributes: list[Attribute] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)


def trees(node: Tree) -> list[Tree]:
    """Children that are subtrees (punctuation tokens dropped)."""
    return [c for c in node.children if isinstance(c, Tree)]


def position(file: str, node: Tree | Token) -> Position:
    if isinstance(node, Token):
        return Position(file, node.line or 1, node.column or 1)
    meta = node.meta
    if getattr(meta, "empty", True):
        return Position(file, 1, 1)
    return Position(file, meta.line, meta.column)


def name_of(node: Tree) -> str:
    """The text of an identifier / keyword / literal_value node used as a name."""
    tok = node.children[0]
    return str(tok)


def plain_string(node: Tree) -> str | None:
    """The value of a quoted string with no interpolation, or None."""
    out = []
    for part in trees(node):
        inner = part.children[0]
        if isinstance(inner, Tree):
            return None
        text = str(inner)
        if inner.type == "ESCAPED_INTERPOLATION":
            text = text[1:]
        elif inner.type == "ESCAPED_DIRECTIVE":
            text = text[1:]
        else:
            text = hcl2.utils.process_escape_sequences(text) if hasattr(hcl2, "utils") else text
        out.append(text)
    return "".join(out)


def read_body(file: str, node: Tree, depth: int = 0) -> Body:
    if depth > MAX_DEPTH:
        raise JobspecError.one(position(file, node),
                               f"blocks are nested more than {MAX_DEPTH} deep: a job needs far fewer; "
                               "check for a missing closing brace")
    body = Body()
    for child in trees(node):
        if child.data == "attribute":
            parts = trees(child)
            body.attributes.append(Attribute(name_of(parts[0]), parts[-1], position(file, child)))
        elif child.data == "block":
            parts = trees(child)
            head = [p for p in parts if p.data != "new_line_or_comment"]
            inner = head[-1]
            labels, label_pos = [], []
            for lab in head[1:-1]:
                if lab.data == "string":
                    value = plain_string(lab)
                    if value is None:
                        raise JobspecError.one(position(file, lab),
                                               "a block label cannot use ${...}: write the name literally")
                    labels.append(value)
                else:
                    labels.append(name_of(lab))
                label_pos.append(position(file, lab))
            body.blocks.append(Block(name_of(head[0]), labels, read_body(file, inner, depth + 1),
                                     position(file, child), label_pos))
    return body


def _describe_token(tok: Token | None) -> str:
    if tok is None or tok.type == "$END":
        return "end of file"
    text = str(tok)
    if tok.type == "NL_OR_COMMENT" or text.strip() == "":
        return "line break"
    first = text.strip().splitlines()[0]
    return f'"{first[:30]}"'


def _syntax_hint(text: str, line: int, col: int, tok: Token | None, expected: list[str]) -> str:
    lines = text.splitlines()
    src = lines[line - 1] if 0 < line <= len(lines) else ""
    before = src[:max(col - 1, 0)].rstrip()
    at = src[col - 1:col] if col > 0 else ""
    if "'" in (at, str(tok or "")[:1]):
        return "; strings use double quotes"
    if before.endswith("="):
        return f'; "{before.strip()}" needs a value after "="'
    if tok is None or tok.type == "$END":
        return "; a block is not closed: add the missing }"
    if "EQ" in expected and "LBRACE" in expected:
        return '; write name = value for an attribute, or name { ... } for a block'
    if "EQ" in expected:
        return '; an attribute needs "=" between its name and its value'
    if "RBRACE" in expected:
        return "; a block may be missing its closing brace, or two attributes share a line"
    return ""


def parse_body(text: str, file: str) -> Body:
    """Parse HCL2 text; a syntax error becomes a JobspecError at its line and column."""
    return read_body(file, trees(parse_tree(text, file))[0])


def check_syntax(text: str, file: str) -> None:
    """Raise a JobspecError at the line and column of the first HCL syntax error in `text`, with
    a hint at the fix (for HCL files other than job files: config entries, variables, namespaces)."""
    parse_tree(text, file)


def parse_tree(text: str, file: str) -> Tree:
    try:
        return hcl2.parses_to_tree(text)
    except UnexpectedToken as e:
        line = e.line if e.line > 0 else _last_line(text)
        col = max(e.column, 1)
        hint = _syntax_hint(text, line, col, e.token, sorted(e.expected or []))
        raise JobspecError.one(Position(file, line, col),
                               f"invalid HCL: unexpected {_describe_token(e.token)}{hint}") from None
    except UnexpectedCharacters as e:
        pos = e.pos_in_stream
        ch = text[pos] if pos is not None and 0 <= pos < len(text) else "?"
        hint = _syntax_hint(text, e.line, e.column, None, []) if ch != "'" else "; strings use double quotes"
        if hint.startswith("; a block is not closed"):
            hint = ""
        raise JobspecError.one(Position(file, e.line, e.column),
                               f"invalid HCL: unexpected character {ch!r}{hint}") from None
    except UnexpectedEOF:
        raise JobspecError.one(Position(file, _last_line(text), 1),
                               "invalid HCL: the file ends inside a block or string; add the missing } or \"") from None
    except UnexpectedInput as e:  # any other parse failure
        raise JobspecError.one(Position(file, getattr(e, "line", 1) or 1, getattr(e, "column", 1) or 1),
                               "invalid HCL") from None


def _last_line(text: str) -> int:
    return max(1, text.count("\n") + 1)
