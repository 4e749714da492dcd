"""Go's text/template: the lexer and the parser (``text/template/parse``), as a tree of nodes.

The lexer follows Go's: text and actions between the delimiters, ``{{- `` and `` -}}`` trim the
white space (space, tab, CR, LF) on that side, ``{{/* */}}`` is a comment, and inside an action
the tokens are Go's (identifiers, keywords, ``.Field``, ``$var``, strings with Go's escapes, raw
strings, character constants, numbers, ``:=``, ``=``, ``|``, parentheses, ``,`` in a range).
A lexical error becomes an error token, reported by the parser when it reaches it, as Go does.

The parser is Go's recursive descent: ``define``/``template``/``block``, ``if``/``else if``,
``range`` (with ``break``/``continue``), ``with``/``else with``, pipelines, variables checked
as they are used (``undefined variable "$x"``), functions checked against the known names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from yurt.errors import InvalidInput

# ---------------------------------------------------------------------------------------------
# errors


class TemplateError(InvalidInput):
    """A template that does not parse or does not execute, with Go's message.

    ``name``, ``line`` (1-based) and ``col`` (Go's: the offset in the line, 0-based) say where;
    ``str(error)`` is the whole message, e.g. ``template: x.tpl:3:14: unexpected "}" in operand``.
    """

    def __init__(self, message: str, *, name: str = "", line: int = 0, col: int = 0) -> None:
        super().__init__(message)
        self.name = name
        self.line = line
        self.col = col


def line_col(text: str, pos: int) -> tuple[int, int]:
    """Go's ErrorContext: the 1-based line and the 0-based offset of ``pos`` in it."""
    line = text.count("\n", 0, pos) + 1
    start = text.rfind("\n", 0, pos)
    return line, pos - (start + 1)


# ---------------------------------------------------------------------------------------------
# tokens

EOF, ERROR, TEXT, LEFT, RIGHT, SPACE = "EOF", "error", "text", "{{", "}}", "space"
BOOL, CHARCONST, NUMBER, STRING, RAWSTRING = "bool", "charconst", "number", "string", "rawstring"
DOT, FIELD, IDENT, VARIABLE, NIL = ".", "field", "identifier", "variable", "nil"
ASSIGN, DECLARE, PIPE, LPAREN, RPAREN, CHAR = "=", ":=", "|", "(", ")", "char"
COMMENT = "comment"
KEYWORDS = {"block", "break", "continue", "define", "else", "end", "if", "range", "template", "with"}
_SPACE_CHARS = " \t\r\n"


@dataclass(slots=True)
class Token:
    typ: str
    val: str
    pos: int
    start: int = -1  # an error token: where its action started

    def __str__(self) -> str:
        if self.typ == EOF:
            return "EOF"
        if self.typ == ERROR:
            return self.val
        if self.typ == "keyword":
            return f"<{self.val}>"
        if len(self.val) > 10:
            return f"{go_quote(self.val[:10])}..."
        return go_quote(self.val)


_NUMBER_RE = re.compile(
    r"[+-]?(?:0[xX][_0-9a-fA-F]*(?:\.[_0-9a-fA-F]*)?(?:[pP][+-]?[0-9_]+)?"
    r"|0[bB][_01]+|0[oO][_0-7]+"
    r"|(?:[0-9][_0-9]*(?:\.[_0-9]*)?|\.[0-9][_0-9]*)(?:[eE][+-]?[0-9_]+)?)i?")
_IDENT_RE = re.compile(r"[^\W]+")  # letters, digits, underscore (Unicode, as Go's)


def lex(text: str, left: str = "{{", right: str = "}}") -> list[Token]:
    """The whole token list; a lexical error is one ERROR token, the last before EOF."""
    toks: list[Token] = []
    n = len(text)
    pos = 0
    trim_next = False
    while True:
        i = text.find(left, pos)
        end = n if i < 0 else i
        chunk_start = pos
        chunk = text[pos:end]
        trim_left = i >= 0 and text.startswith("-", i + len(left)) and i + len(left) + 1 < n \
            and text[i + len(left) + 1] in _SPACE_CHARS
        if trim_next:
            stripped = chunk.lstrip(_SPACE_CHARS)
            chunk_start += len(chunk) - len(stripped)
            chunk = stripped
        if trim_left:
            chunk = chunk.rstrip(_SPACE_CHARS)
        trim_next = False
        if chunk:
            toks.append(Token(TEXT, chunk, chunk_start))
        if i < 0:
            toks.append(Token(EOF, "", n))
            return toks
        start = i + len(left) + (2 if trim_left else 0)
        toks.append(Token(LEFT, left, i))
        if text.startswith("/*", start):
            close = text.find("*/", start)
            if close < 0:
                toks.append(Token(ERROR, "unclosed comment", start))
                toks.append(Token(EOF, "", n))
                return toks
            after = close + 2
            if text.startswith(" -" + right, after):
                trim_next, after_delim = True, after + 2 + len(right)
            elif text.startswith(right, after):
                after_delim = after + len(right)
            else:
                toks.append(Token(ERROR, "comment ends before closing delimiter", after))
                toks.append(Token(EOF, "", n))
                return toks
            toks.append(Token(COMMENT, text[start:after], start))
            toks.append(Token(RIGHT, right, after))
            pos = after_delim
            continue
        res = _lex_action(text, start, right, toks)
        if res is None:
            toks[-1].start = i
            toks.append(Token(EOF, "", n))
            return toks
        pos, trim_next = res


def _lex_action(text: str, p: int, right: str, toks: list[Token]) -> tuple[int, bool] | None:
    """Lex inside one action from ``p``; the position after its right delimiter and whether it trims."""
    n = len(text)
    depth = 0
    while True:
        if text.startswith(" -" + right, p) or text.startswith("\t-" + right, p) \
                or text.startswith("\n-" + right, p) or text.startswith("\r-" + right, p):
            if depth:
                toks.append(Token(ERROR, "unclosed left paren", p))
                return None
            toks.append(Token(RIGHT, right, p + 2))
            return p + 2 + len(right), True
        if text.startswith(right, p):
            if depth:
                toks.append(Token(ERROR, "unclosed left paren", p))
                return None
            toks.append(Token(RIGHT, right, p))
            return p + len(right), False
        if p >= n:
            toks.append(Token(ERROR, "unclosed action", p))
            return None
        c = text[p]
        if c in _SPACE_CHARS:
            q = p
            while q < n and text[q] in _SPACE_CHARS and not text.startswith(" -" + right, q) \
                    and not text.startswith(right, q):
                q += 1
            if q == p:  # the space starts the right trim marker: handled above next round
                q += 1
            toks.append(Token(SPACE, text[p:q], p))
            p = q
        elif c == "=":
            toks.append(Token(ASSIGN, "=", p))
            p += 1
        elif c == ":":
            if text.startswith(":=", p):
                toks.append(Token(DECLARE, ":=", p))
                p += 2
            else:
                toks.append(Token(ERROR, "expected :=", p))
                return None
        elif c == "|":
            toks.append(Token(PIPE, "|", p))
            p += 1
        elif c == '"':
            q = p + 1
            while True:
                if q >= n or text[q] == "\n":
                    toks.append(Token(ERROR, "unterminated quoted string", p))
                    return None
                if text[q] == "\\":
                    q += 2
                    continue
                if text[q] == '"':
                    break
                q += 1
            toks.append(Token(STRING, text[p:q + 1], p))
            p = q + 1
        elif c == "`":
            q = text.find("`", p + 1)
            if q < 0:
                toks.append(Token(ERROR, "unterminated raw quoted string", p))
                return None
            toks.append(Token(RAWSTRING, text[p:q + 1], p))
            p = q + 1
        elif c == "'":
            q = p + 1
            while True:
                if q >= n or text[q] == "\n":
                    toks.append(Token(ERROR, "unterminated character constant", p))
                    return None
                if text[q] == "\\":
                    q += 2
                    continue
                if text[q] == "'":
                    break
                q += 1
            toks.append(Token(CHARCONST, text[p:q + 1], p))
            p = q + 1
        elif c == "$":
            m = _IDENT_RE.match(text, p + 1)
            q = m.end() if m else p + 1
            if not _at_terminator(text, q, right):
                toks.append(Token(ERROR, _bad_char(text[q]), q))
                return None
            toks.append(Token(VARIABLE, text[p:q], p))
            p = q
        elif c == ".":
            if p + 1 < n and text[p + 1].isdigit():
                p = _lex_number(text, p, toks)
                if p < 0:
                    return None
            else:
                m = _IDENT_RE.match(text, p + 1)
                if m:
                    if not _at_terminator(text, m.end(), right):
                        toks.append(Token(ERROR, _bad_char(text[m.end()]), m.end()))
                        return None
                    toks.append(Token(FIELD, text[p:m.end()], p))
                    p = m.end()
                else:
                    toks.append(Token(DOT, ".", p))
                    p += 1
        elif c in "+-" or c.isdigit():
            p = _lex_number(text, p, toks)
            if p < 0:
                return None
        elif c == "_" or c.isalpha():
            m = _IDENT_RE.match(text, p)
            assert m is not None
            word = m.group(0)
            if not _at_terminator(text, m.end(), right):
                toks.append(Token(ERROR, _bad_char(text[m.end()]), m.end()))
                return None
            if word in KEYWORDS:
                toks.append(Token("keyword", word, p))
            elif word in ("true", "false"):
                toks.append(Token(BOOL, word, p))
            elif word == "nil":
                toks.append(Token(NIL, word, p))
            else:
                toks.append(Token(IDENT, word, p))
            p = m.end()
        elif c == "(":
            depth += 1
            toks.append(Token(LPAREN, "(", p))
            p += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                toks.append(Token(ERROR, "unexpected right paren", p))
                return None
            toks.append(Token(RPAREN, ")", p))
            p += 1
        elif c.isprintable() and ord(c) < 128:
            toks.append(Token(CHAR, c, p))
            p += 1
        else:
            toks.append(Token(ERROR, f"unrecognized character in action: U+{ord(c):04X} {go_quote_rune(c)}", p))
            return None


def _at_terminator(text: str, q: int, right: str) -> bool:
    """Go's atTerminator: what may follow an identifier, a field or a variable."""
    return q >= len(text) or text[q] in " \t\r\n.,|:()" or text.startswith(right, q)


def _bad_char(c: str) -> str:
    return f"bad character U+{ord(c):04X} {go_quote_rune(c)}"


def _lex_number(text: str, p: int, toks: list[Token]) -> int:
    m = _NUMBER_RE.match(text, p)
    q = m.end() if m else p
    digits = text[p:q].lstrip("+-").removesuffix("i")
    if digits[:2].lower() in ("0x", "0b", "0o") and not digits[2:].strip("_."):
        q = p  # a base prefix and no digits
    if q == p or (q < len(text) and (text[q].isalnum() or text[q] == "_")):
        while q < len(text) and (text[q].isalnum() or text[q] in "_."):
            q += 1
        toks.append(Token(ERROR, f"bad number syntax: {go_quote(text[p:q])}", p))
        return -1
    toks.append(Token(NUMBER, text[p:q], p))
    return q


# ---------------------------------------------------------------------------------------------
# Go's string literals

_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
                   "\\": "\\", '"': '"', "'": "'"}


def go_unquote(lit: str) -> str:
    """strconv.Unquote for "..." and `...` (raises ValueError on bad syntax)."""
    if lit.startswith("`"):
        return lit[1:-1].replace("\r", "")
    quote = lit[0]
    body = lit[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            if c == quote:
                raise ValueError("invalid syntax")
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError("invalid syntax")
        e = body[i + 1]
        if e in _SIMPLE_ESCAPES:
            if (e == "'" and quote == '"') or (e == '"' and quote == "'"):
                raise ValueError("invalid syntax")
            out.append(_SIMPLE_ESCAPES[e])
            i += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2:i + 2 + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError("invalid syntax")
            out.append(chr(int(digits, 16)))
            i += 2 + width
        elif e in "01234567":
            digits = body[i + 1:i + 4]
            if len(digits) != 3 or not all(d in "01234567" for d in digits) or int(digits, 8) > 255:
                raise ValueError("invalid syntax")
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            raise ValueError("invalid syntax")
    return "".join(out)


def go_quote(s: str) -> str:
    """strconv.Quote."""
    out = ['"']
    for c in s:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c.isprintable():
            out.append(c)
        else:
            out.append(_escape_rune(c))
    out.append('"')
    return "".join(out)


def go_quote_rune(c: str) -> str:
    """strconv.QuoteRune."""
    if c == "'":
        return "'\\''"
    if c == "\\":
        return "'\\\\'"
    return "'" + (c if c.isprintable() else _escape_rune(c)) + "'"


def _escape_rune(c: str) -> str:
    for k, v in _SIMPLE_ESCAPES.items():
        if v == c and k not in "\\\"'":
            return "\\" + k
    o = ord(c)
    if o < 0x80:
        return f"\\x{o:02x}"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


# ---------------------------------------------------------------------------------------------
# nodes (each with Go's String(), used in error contexts)


class Node:
    __slots__ = ("pos",)
    pos: int


class TextNode(Node):
    __slots__ = ("text",)

    def __init__(self, pos: int, text: str) -> None:
        self.pos, self.text = pos, text

    def __str__(self) -> str:
        return go_quote(self.text)


class CommentNode(Node):
    __slots__ = ("text",)

    def __init__(self, pos: int, text: str) -> None:
        self.pos, self.text = pos, text

    def __str__(self) -> str:
        return "{{" + self.text + "}}"


class ListNode(Node):
    __slots__ = ("nodes",)

    def __init__(self, pos: int) -> None:
        self.pos = pos
        self.nodes: list[Node] = []

    def __str__(self) -> str:
        return "".join(str(n) for n in self.nodes)


class DotNode(Node):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def __str__(self) -> str:
        return "."


class NilNode(Node):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def __str__(self) -> str:
        return "nil"


class BoolNode(Node):
    __slots__ = ("value",)

    def __init__(self, pos: int, value: bool) -> None:
        self.pos, self.value = pos, value

    def __str__(self) -> str:
        return "true" if self.value else "false"


class NumberNode(Node):
    __slots__ = ("text", "value")

    def __init__(self, pos: int, text: str, value: int | float) -> None:
        self.pos, self.text, self.value = pos, text, value

    def __str__(self) -> str:
        return self.text


class StringNode(Node):
    __slots__ = ("quoted", "text")

    def __init__(self, pos: int, quoted: str, text: str) -> None:
        self.pos, self.quoted, self.text = pos, quoted, text

    def __str__(self) -> str:
        return self.quoted


class FieldNode(Node):
    __slots__ = ("idents",)

    def __init__(self, pos: int, idents: list[str]) -> None:
        self.pos, self.idents = pos, idents

    def __str__(self) -> str:
        return "".join("." + i for i in self.idents)


class VariableNode(Node):
    __slots__ = ("idents",)

    def __init__(self, pos: int, idents: list[str]) -> None:
        self.pos, self.idents = pos, idents

    def __str__(self) -> str:
        return ".".join(self.idents)


class IdentifierNode(Node):
    __slots__ = ("name",)

    def __init__(self, pos: int, name: str) -> None:
        self.pos, self.name = pos, name

    def __str__(self) -> str:
        return self.name


class ChainNode(Node):
    __slots__ = ("node", "fields")

    def __init__(self, pos: int, node: Node) -> None:
        self.pos, self.node = pos, node
        self.fields: list[str] = []

    def __str__(self) -> str:
        s = str(self.node)
        if isinstance(self.node, PipeNode):
            s = "(" + s + ")"
        return s + "".join("." + f for f in self.fields)


class CommandNode(Node):
    __slots__ = ("args",)

    def __init__(self, pos: int) -> None:
        self.pos = pos
        self.args: list[Node] = []

    def __str__(self) -> str:
        return " ".join("(" + str(a) + ")" if isinstance(a, PipeNode) else str(a) for a in self.args)


class PipeNode(Node):
    __slots__ = ("decls", "is_assign", "cmds")

    def __init__(self, pos: int) -> None:
        self.pos = pos
        self.decls: list[VariableNode] = []
        self.is_assign = False
        self.cmds: list[CommandNode] = []

    def __str__(self) -> str:
        s = ""
        if self.decls:
            s = ", ".join(str(d) for d in self.decls) + (" = " if self.is_assign else " := ")
        return s + " | ".join(str(c) for c in self.cmds)


class ActionNode(Node):
    __slots__ = ("pipe",)

    def __init__(self, pos: int, pipe: PipeNode) -> None:
        self.pos, self.pipe = pos, pipe

    def __str__(self) -> str:
        return "{{" + str(self.pipe) + "}}"


class BranchNode(Node):
    """if, range and with: a pipeline, a list, an optional else list."""

    __slots__ = ("kind", "pipe", "list", "else_list")

    def __init__(self, kind: str, pos: int, pipe: PipeNode, lst: ListNode, else_list: ListNode | None) -> None:
        self.kind, self.pos, self.pipe, self.list, self.else_list = kind, pos, pipe, lst, else_list

    def __str__(self) -> str:
        s = "{{" + self.kind + " " + str(self.pipe) + "}}" + str(self.list)
        if self.else_list is not None:
            s += "{{else}}" + str(self.else_list)
        return s + "{{end}}"


class BreakNode(Node):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def __str__(self) -> str:
        return "{{break}}"


class ContinueNode(Node):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def __str__(self) -> str:
        return "{{continue}}"


class TemplateNode(Node):
    __slots__ = ("name", "pipe")

    def __init__(self, pos: int, name: str, pipe: PipeNode | None) -> None:
        self.pos, self.name, self.pipe = pos, name, pipe

    def __str__(self) -> str:
        if self.pipe is None:
            return "{{template " + go_quote(self.name) + "}}"
        return "{{template " + go_quote(self.name) + " " + str(self.pipe) + "}}"


class _End(Node):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def __str__(self) -> str:
        return "{{end}}"


class _Else(Node):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def __str__(self) -> str:
        return "{{else}}"


# ---------------------------------------------------------------------------------------------
# the parser


@dataclass
class Tree:
    """One parsed template source: its main list and the templates it defines."""

    name: str
    text: str
    root: ListNode
    defines: dict[str, ListNode] = field(default_factory=dict)

    def error(self, pos: int, message: str, tmpl: str | None = None) -> TemplateError:
        line, col = line_col(self.text, pos)
        return TemplateError(f"template: {self.name}:{line}:{col}: {message}", name=self.name, line=line, col=col)


def is_empty(node: Node | None) -> bool:
    """Go's IsEmptyTree: only white space text (and comments)."""
    if node is None:
        return True
    if isinstance(node, ListNode):
        return all(is_empty(n) for n in node.nodes)
    if isinstance(node, TextNode):
        return not node.text.strip()
    return isinstance(node, CommentNode)


class _Parser:
    def __init__(self, name: str, text: str, toks: list[Token], has_func: Callable[[str], bool]) -> None:
        self.name, self.text, self.toks, self.has_func = name, text, toks, has_func
        self.i = 0
        self.vars = ["$"]
        self.range_depth = 0
        self.defines: dict[str, ListNode] = {}

    # token stream
    def lex_error(self, tok: Token) -> TemplateError:
        """Go's: a lexical error inside an action that started on another line says where it started."""
        message = tok.val
        if tok.start >= 0:
            started = line_col(self.text, tok.start)[0]
            if started != line_col(self.text, tok.pos)[0]:
                where = f" started at {self.name}:{started}"
                message += where if message.endswith(" action") else " in action" + where
        return self.error(tok, message)

    def next(self) -> Token:
        tok = self.toks[min(self.i, len(self.toks) - 1)]
        if tok.typ == ERROR:
            raise self.lex_error(tok)
        self.i += 1
        return tok

    def backup(self, k: int = 1) -> None:
        self.i -= k

    def peek(self) -> Token:
        tok = self.toks[min(self.i, len(self.toks) - 1)]
        if tok.typ == ERROR:
            raise self.lex_error(tok)
        return tok

    def next_non_space(self) -> Token:
        tok = self.next()
        while tok.typ == SPACE:
            tok = self.next()
        return tok

    def peek_non_space(self) -> Token:
        tok = self.next_non_space()
        self.backup()
        return tok

    def error(self, tok: Token | Node | int, message: str) -> TemplateError:
        pos = tok if isinstance(tok, int) else tok.pos
        line, col = line_col(self.text, pos)
        return TemplateError(f"template: {self.name}:{line}:{col}: {message}", name=self.name, line=line, col=col)

    def unexpected(self, tok: Token, context: str) -> TemplateError:
        if tok.typ == ERROR:
            return self.lex_error(tok)
        return self.error(tok, f"unexpected {tok} in {context}")

    def expect(self, typ: str, context: str) -> Token:
        tok = self.next_non_space()
        if tok.typ != typ:
            raise self.unexpected(tok, context)
        return tok

    # structure
    def parse(self) -> Tree:
        root = ListNode(0)
        while self.peek().typ != EOF:
            if self.peek().typ == LEFT:
                delim = self.next()
                tok = self.next_non_space()
                if tok.typ == "keyword" and tok.val == "define":
                    self.parse_definition()
                    continue
                self._rewind_to(delim)
            n = self.text_or_action()
            if isinstance(n, (_End, _Else)):
                raise self.error(n, f"unexpected {n}")
            root.nodes.append(n)
        return Tree(self.name, self.text, root, self.defines)

    def _rewind_to(self, tok: Token) -> None:
        while self.i >= len(self.toks) or self.toks[self.i] is not tok:
            self.i -= 1

    def parse_definition(self) -> None:
        context = "define clause"
        tok = self.next_non_space()
        if tok.typ not in (STRING, RAWSTRING):
            raise self.unexpected(tok, context)
        name = self._unquote(tok)
        self.expect(RIGHT, context)
        saved_vars, self.vars = self.vars, ["$"]
        body, end = self.item_list()
        self.vars = saved_vars
        if not isinstance(end, _End):
            raise self.error(end, f"unexpected {end} in {context}")
        self.add_define(name, body)

    def add_define(self, name: str, body: ListNode) -> None:
        old = self.defines.get(name)
        if old is not None and is_empty(body):
            return
        self.defines[name] = body

    def item_list(self) -> tuple[ListNode, Node]:
        lst = ListNode(self.peek_non_space().pos)
        while self.peek_non_space().typ != EOF:
            n = self.text_or_action()
            if isinstance(n, (_End, _Else)):
                return lst, n
            lst.nodes.append(n)
        raise self.error(self.peek(), "unexpected EOF")

    def text_or_action(self) -> Node:
        tok = self.next_non_space()
        if tok.typ == TEXT:
            return TextNode(tok.pos, tok.val)
        if tok.typ == LEFT:
            if self.peek().typ == COMMENT:
                c = self.next()
                self.expect(RIGHT, "comment")
                return CommentNode(c.pos, c.val)
            return self.action()
        raise self.unexpected(tok, "input")

    def action(self) -> Node:
        tok = self.next_non_space()
        if tok.typ == "keyword":
            if tok.val == "block":
                return self.block_control(tok)
            if tok.val in ("break", "continue"):
                return self.break_continue(tok)
            if tok.val == "else":
                return self.else_control(tok)
            if tok.val == "end":
                self.expect(RIGHT, "end")
                return _End(tok.pos)
            if tok.val in ("if", "range", "with"):
                return self.control(tok)
            if tok.val == "template":
                return self.template_control(tok)
            raise self.unexpected(tok, "command")
        self.backup()
        tok = self.peek()
        return ActionNode(tok.pos, self.pipeline("command", RIGHT))

    def break_continue(self, tok: Token) -> Node:
        nxt = self.next_non_space()
        if nxt.typ != RIGHT:
            raise self.unexpected(nxt, "{{" + tok.val + "}}")
        if self.range_depth == 0:
            raise self.error(tok, "{{" + tok.val + "}} outside {{range}}")
        return BreakNode(tok.pos) if tok.val == "break" else ContinueNode(tok.pos)

    def else_control(self, tok: Token) -> Node:
        peek = self.peek_non_space()
        if peek.typ == "keyword" and peek.val in ("if", "with"):
            return _Else(tok.pos)  # "else if"/"else with": the control that follows is its list
        nxt = self.next_non_space()
        if nxt.typ != RIGHT:
            raise self.unexpected(nxt, "else")
        return _Else(tok.pos)

    def control(self, tok: Token) -> Node:
        context = tok.val
        nvars = len(self.vars)
        try:
            pipe = self.pipeline(context, RIGHT)
            if context == "range":
                self.range_depth += 1
            lst, nxt = self.item_list()
            if context == "range":
                self.range_depth -= 1
            else_list: ListNode | None = None
            if isinstance(nxt, _Else):
                peek = self.peek_non_space()
                if context in ("if", "with") and peek.typ == "keyword" and peek.val == context:
                    kw = self.next_non_space()
                    else_list = ListNode(kw.pos)
                    else_list.nodes.append(self.control(kw))
                    return BranchNode(context, tok.pos, pipe, lst, else_list)
                else_list, nxt = self.item_list()
                if not isinstance(nxt, _End):
                    raise self.error(nxt, f"expected end; found {nxt}")
            return BranchNode(context, tok.pos, pipe, lst, else_list)
        finally:
            del self.vars[nvars:]

    def template_control(self, tok: Token) -> Node:
        context = "template clause"
        name_tok = self.next_non_space()
        if name_tok.typ not in (STRING, RAWSTRING):
            raise self.unexpected(name_tok, context)
        name = self._unquote(name_tok)
        pipe: PipeNode | None = None
        if self.next_non_space().typ != RIGHT:
            self.backup()
            pipe = self.pipeline(context, RIGHT)
        return TemplateNode(tok.pos, name, pipe)

    def block_control(self, tok: Token) -> Node:
        context = "block clause"
        name_tok = self.next_non_space()
        if name_tok.typ not in (STRING, RAWSTRING):
            raise self.unexpected(name_tok, context)
        name = self._unquote(name_tok)
        pipe = self.pipeline(context, RIGHT)
        saved_vars, self.vars = self.vars, ["$"]
        saved_depth, self.range_depth = self.range_depth, 0
        body, end = self.item_list()
        self.vars, self.range_depth = saved_vars, saved_depth
        if not isinstance(end, _End):
            raise self.error(end, f"unexpected {end} in {context}")
        self.add_define(name, body)
        return TemplateNode(tok.pos, name, pipe)

    def _unquote(self, tok: Token) -> str:
        try:
            return go_unquote(tok.val)
        except ValueError:
            raise self.error(tok, f"bad string syntax: {tok.val}") from None

    # pipelines
    def pipeline(self, context: str, end: str) -> PipeNode:
        pipe = PipeNode(self.peek_non_space().pos)
        while True:  # declarations
            v = self.peek_non_space()
            if v.typ != VARIABLE:
                break
            start = self.i
            self.next_non_space()
            after = self.peek()
            nxt = self.peek_non_space()
            if nxt.typ in (ASSIGN, DECLARE):
                pipe.is_assign = nxt.typ == ASSIGN
                self.next_non_space()
                pipe.decls.append(VariableNode(v.pos, [v.val]))
                if pipe.is_assign:
                    self.use_var(v)
                self.vars.append(v.val)
                break
            if nxt.typ == CHAR and nxt.val == ",":
                self.next_non_space()
                pipe.decls.append(VariableNode(v.pos, [v.val]))
                self.vars.append(v.val)
                if context == "range" and len(pipe.decls) < 2:
                    if self.peek_non_space().typ in (VARIABLE, RIGHT, RPAREN):
                        continue
                    raise self.error(self.peek_non_space(), "range can only initialize variables")
                raise self.error(nxt, f"too many declarations in {context}")
            del after
            self.i = start
            break
        while True:
            tok = self.next_non_space()
            if tok.typ == end:
                self.check_pipeline(pipe, context, tok)
                return pipe
            if tok.typ in (BOOL, CHARCONST, DOT, FIELD, IDENT, NUMBER, NIL, RAWSTRING, STRING, VARIABLE, LPAREN):
                self.backup()
                pipe.cmds.append(self.command())
            else:
                raise self.unexpected(tok, context)

    def check_pipeline(self, pipe: PipeNode, context: str, tok: Token) -> None:
        if not pipe.cmds:
            raise self.error(tok, "missing value for " + context)
        for i, c in enumerate(pipe.cmds[1:]):
            if isinstance(c.args[0], (BoolNode, DotNode, NilNode, NumberNode, StringNode)):
                raise self.error(c, f"non executable command in pipeline stage {i + 2}")

    def command(self) -> CommandNode:
        cmd = CommandNode(self.peek_non_space().pos)
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            tok = self.next()
            if tok.typ == SPACE:
                continue
            if tok.typ in (RIGHT, RPAREN):
                self.backup()
            elif tok.typ != PIPE:
                raise self.unexpected(tok, "operand")
            break
        if not cmd.args:
            raise self.error(cmd, "empty command")
        return cmd

    def operand(self) -> Node | None:
        node = self.term()
        if node is None:
            return None
        if self.peek().typ == FIELD:
            chain = ChainNode(self.peek().pos, node)
            while self.peek().typ == FIELD:
                chain.fields.append(self.next().val[1:])
            if isinstance(node, FieldNode):
                return FieldNode(node.pos, node.idents + chain.fields)
            if isinstance(node, VariableNode):
                return VariableNode(node.pos, node.idents + chain.fields)
            if isinstance(node, (BoolNode, StringNode, NumberNode, NilNode, DotNode)):
                raise self.error(chain, f"unexpected . after term {go_quote(str(node))}")
            return chain
        return node

    def term(self) -> Node | None:
        tok = self.next_non_space()
        t = tok.typ
        if t == IDENT:
            if not self.has_func(tok.val):
                raise self.error(tok, f"function {go_quote(tok.val)} not defined")
            return IdentifierNode(tok.pos, tok.val)
        if t == DOT:
            return DotNode(tok.pos)
        if t == NIL:
            return NilNode(tok.pos)
        if t == VARIABLE:
            self.use_var(tok)
            return VariableNode(tok.pos, [tok.val])
        if t == FIELD:
            return FieldNode(tok.pos, [tok.val[1:]])
        if t == BOOL:
            return BoolNode(tok.pos, tok.val == "true")
        if t in (NUMBER, CHARCONST):
            return self.number(tok)
        if t == LPAREN:
            return self.pipeline("parenthesized pipeline", RPAREN)
        if t in (STRING, RAWSTRING):
            return StringNode(tok.pos, tok.val, self._unquote(tok))
        self.backup()
        return None

    def use_var(self, tok: Token) -> None:
        name = tok.val
        if name not in self.vars:
            raise self.error(tok, f"undefined variable {go_quote(name)}")

    def number(self, tok: Token) -> NumberNode:
        text = tok.val
        if tok.typ == CHARCONST:
            try:
                rune = go_unquote(text)
            except ValueError:
                raise self.error(tok, f"malformed character constant: {text}") from None
            if len(rune) != 1:
                raise self.error(tok, f"malformed character constant: {text}")
            return NumberNode(tok.pos, text, ord(rune))
        if text.endswith("i"):
            raise self.error(tok, f"complex numbers are not supported: {text}")
        clean = text.replace("_", "")
        try:
            return NumberNode(tok.pos, text, int(clean, 0))
        except ValueError:
            pass
        try:
            body = clean.lstrip("+-")
            if body[:2] in ("0x", "0X"):
                value = float.fromhex(clean)
            else:
                if body.startswith("0") and body[1:2].isdigit() and not any(c in body for c in ".eE"):
                    value = int(clean, 8)  # Go's legacy octal (0777)
                    return NumberNode(tok.pos, text, value)
                value = float(clean)
        except ValueError:
            raise self.error(tok, f"illegal number syntax: {go_quote(text)}") from None
        return NumberNode(tok.pos, text, value)


def parse(text: str, name: str, has_func: Callable[[str], bool], left: str = "{{", right: str = "}}") -> Tree:
    """Parse one template source (raises TemplateError)."""
    if not left:
        left = "{{"
    if not right:
        right = "}}"
    return _Parser(name, text, lex(text, left, right), has_func).parse()


def walk_nodes(node: Node) -> Iterable[Node]:
    """Every node under ``node`` (used by tests and tools)."""
    yield node
    if isinstance(node, ListNode):
        for n in node.nodes:
            yield from walk_nodes(n)
    elif isinstance(node, BranchNode):
        yield from walk_nodes(node.list)
        if node.else_list is not None:
            yield from walk_nodes(node.else_list)
