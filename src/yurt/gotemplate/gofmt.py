"""Go's fmt for template values: ``%v`` of each kind, ``Sprint``/``Sprintln``/``Sprintf``, JSON as
``encoding/json`` writes it, and the html/js/urlquery escapers of text/template.

Python values stand for Go's: ``str`` string, ``bool`` bool, ``int`` int, ``float`` float64, ``None``
nil, ``list``/``tuple`` a slice, ``dict`` a map (printed with sorted keys, as Go does), any other
object a struct (its public attributes); an object with a ``String()`` method is a fmt.Stringer.
"""

from __future__ import annotations

import dataclasses
import decimal
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from .parse import go_quote, go_quote_rune


class NoValue:
    """The invalid value Go's templates print as ``<no value>`` (a missing map key)."""

    _instance: NoValue | None = None

    def __new__(cls) -> NoValue:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<no value>"

    def __bool__(self) -> bool:
        return False


NO_VALUE = NoValue()


class FuncError(Exception):
    """A template function's failure, reported as Go's ``error calling NAME: MESSAGE``."""


def type_name(v: Any) -> str:
    """Go's name for the type of a value, as %T and error messages say it."""
    if v is None or v is NO_VALUE:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if isinstance(v, dict) and type(v) is dict:
        return "map[string]interface {}"
    if callable(v) and not hasattr(v, "__dataclass_fields__"):
        return "func"
    return type(v).__name__


def format_float(f: float, verb: str = "g", prec: int = -1) -> str:
    """strconv.FormatFloat(f, verb, prec, 64) for g/e/f."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if verb == "f":
        return f"{f:.{6 if prec < 0 else prec}f}"
    if verb == "e":
        return f"{f:.{6 if prec < 0 else prec}e}"
    if prec >= 0:
        return f"{f:.{prec}g}"
    # shortest (%v): Go's strconv decides %e on the exponent with precision 6
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    sign, digits, exp = decimal.Decimal(repr(f)).normalize().as_tuple()
    ds = "".join(str(d) for d in digits)
    assert isinstance(exp, int)
    nd = len(ds)
    dp = nd + exp  # where the decimal point goes in the digits
    x = dp - 1
    neg = "-" if sign else ""
    if x < -4 or x >= 6:
        mant = ds[0] + ("." + ds[1:] if nd > 1 else "")
        return f"{neg}{mant}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if dp <= 0:
        return f"{neg}0.{'0' * -dp}{ds}"
    if dp >= nd:
        return f"{neg}{ds}{'0' * (dp - nd)}"
    return f"{neg}{ds[:dp]}.{ds[dp:]}"


def value_string(v: Any, top: bool = True) -> str:
    """fmt's %v."""
    if v is NO_VALUE:
        return "<no value>" if top else "<nil>"
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_float(v)
    stringer = _stringer(v)
    if stringer is not None:
        return stringer()
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(value_string(e, False) for e in v) + "]"
    if isinstance(v, Mapping):
        return "map[" + " ".join(f"{value_string(k, False)}:{value_string(v[k], False)}"
                                 for k in sort_keys(v)) + "]"
    if dataclasses.is_dataclass(v):
        return "{" + " ".join(value_string(getattr(v, f.name), False) for f in dataclasses.fields(v)
                              if not f.name.startswith("_")) + "}"
    if isinstance(v, (bytes, bytearray)):
        return "[" + " ".join(str(b) for b in v) + "]"
    if hasattr(v, "__iter__") and not callable(v):
        return "[" + " ".join(value_string(e, False) for e in v) + "]"
    return str(v)


def _stringer(v: Any) -> Callable[[], str] | None:
    method = getattr(type(v), "String", None)
    if method is not None and callable(method):
        return lambda: str(method(v))
    return None


def sort_keys(m: Mapping[Any, Any]) -> list[Any]:
    """A map's keys in Go's order (fmt and range sort them)."""
    keys = list(m.keys())
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=lambda k: (type(k).__name__, str(k)))


def sprint(args: list[Any]) -> str:
    """fmt.Sprint: a space between operands when neither is a string."""
    out: list[str] = []
    for i, a in enumerate(args):
        if i > 0 and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(value_string(a, False))
    return "".join(out)


def sprintln(args: list[Any]) -> str:
    return " ".join(value_string(a, False) for a in args) + "\n"


_VERB_RE = re.compile(r"%([-+# 0]*)(\*|\d+)?(?:\.(\*|\d*))?([a-zA-Z%])")


def sprintf(fmt: str, args: list[Any]) -> str:
    """fmt.Sprintf with Go's verbs, flags, widths and precisions, and Go's %!verb(...) for misuse."""
    out: list[str] = []
    argi = 0
    pos = 0
    for m in _VERB_RE.finditer(fmt):
        out.append(fmt[pos:m.start()])
        pos = m.end()
        flags, width_s, prec_s, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        if verb == "%":
            out.append("%")
            continue
        width = -1
        prec = -1
        if width_s == "*":
            if argi < len(args) and isinstance(args[argi], int):
                width = args[argi]
                argi += 1
            else:
                out.append("%!(BADWIDTH)")
                argi += 1
        elif width_s:
            width = int(width_s)
        if prec_s is not None:
            if prec_s == "*":
                if argi < len(args) and isinstance(args[argi], int):
                    prec = args[argi]
                    argi += 1
                else:
                    out.append("%!(BADPREC)")
                    argi += 1
            else:
                prec = int(prec_s) if prec_s else 0
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[argi]
        argi += 1
        if width < 0 and width_s == "*":
            flags += "-"
            width = -width
        out.append(_format_one(arg, verb, flags, width, prec))
    out.append(fmt[pos:])
    if argi < len(args):
        extra = ", ".join(f"{type_name(a)}={value_string(a, False)}" if a is not None else "<nil>"
                          for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _pad(s: str, flags: str, width: int, numeric: bool = False) -> str:
    if width < 0 or len(s) >= width:
        return s
    if "-" in flags:
        return s + " " * (width - len(s))
    if "0" in flags and numeric:
        sign = s[0] if s[:1] in ("-", "+", " ") else ""
        body = s[len(sign):]
        return sign + "0" * (width - len(s)) + body
    return " " * (width - len(s)) + s


def _bad(verb: str, arg: Any) -> str:
    if arg is None or arg is NO_VALUE:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({type_name(arg)}={value_string(arg, False)})"


def _sign(s: str, flags: str, negative: bool) -> str:
    if negative:
        return "-" + s
    if "+" in flags:
        return "+" + s
    if " " in flags:
        return " " + s
    return s


def _format_one(arg: Any, verb: str, flags: str, width: int, prec: int) -> str:
    if verb == "T":
        return _pad(type_name(arg), flags, width)
    if isinstance(arg, (list, tuple)) and verb not in ("v", "T") and not (verb in "xXq" and False):
        inner = [_format_one(e, verb, flags, -1, prec) for e in arg]
        return _pad("[" + " ".join(inner) + "]", flags, width)
    if verb == "v":
        if isinstance(arg, bool) or not isinstance(arg, (int, float)):
            s = value_string(arg, False)
            if prec >= 0 and isinstance(arg, str):
                s = s[:prec]
            return _pad(s, flags, width)
        verb = "d" if isinstance(arg, int) else "g"
    if isinstance(arg, bool):
        if verb == "t":
            return _pad("true" if arg else "false", flags, width)
        return _bad(verb, arg)
    if isinstance(arg, int):
        return _format_int(arg, verb, flags, width, prec)
    if isinstance(arg, float):
        if verb in "eEfFgG":
            if verb in "gG" and prec < 0:
                s = format_float(abs(arg))
                s = s.upper() if verb == "G" else s
            else:
                pyverb = verb if verb != "F" else "f"
                s = format(abs(arg), f".{6 if prec < 0 else prec}{pyverb}")
                if math.isinf(arg):
                    s = "Inf"
                elif math.isnan(arg):
                    s = "NaN"
            return _pad(_sign(s, flags, arg < 0 or (arg == 0 and math.copysign(1, arg) < 0)), flags, width, True)
        return _bad(verb, arg)
    if isinstance(arg, str):
        return _format_str(arg, verb, flags, width, prec)
    if arg is None or arg is NO_VALUE:
        return _bad(verb, None)
    stringer = _stringer(arg)
    if stringer is not None and verb in "sqxX":
        return _format_str(stringer(), verb, flags, width, prec)
    if verb == "s":
        return _pad(value_string(arg, False), flags, width)
    return _bad(verb, arg)


def _format_int(n: int, verb: str, flags: str, width: int, prec: int) -> str:
    a = abs(n)
    if verb == "d":
        s = str(a)
    elif verb == "x":
        s = format(a, "x")
        if "#" in flags:
            s = "0x" + s
    elif verb == "X":
        s = format(a, "X")
        if "#" in flags:
            s = "0X" + s
    elif verb == "o":
        s = format(a, "o")
        if "#" in flags:
            s = "0" + s
    elif verb == "O":
        s = "0o" + format(a, "o")
    elif verb == "b":
        s = format(a, "b")
    elif verb == "c":
        return _pad(chr(n) if 0 <= n <= 0x10FFFF else "\ufffd", flags, width)
    elif verb == "q":
        return _pad(go_quote_rune(chr(n)) if 0 <= n <= 0x10FFFF else "'\ufffd'", flags, width)
    elif verb == "U":
        return _pad(f"U+{n:04X}", flags, width)
    elif verb in "eEfFgG":
        return _bad(verb, n)
    else:
        return _bad(verb, n)
    if prec >= 0:
        s = s.rjust(prec, "0") if prec else ("" if a == 0 else s)
        return _pad(_sign(s, flags, n < 0), flags, width)
    return _pad(_sign(s, flags, n < 0), flags, width, True)


def _format_str(s: str, verb: str, flags: str, width: int, prec: int) -> str:
    if prec >= 0:
        s = s[:prec]
    if verb == "s":
        if "0" in flags and "-" not in flags and 0 <= len(s) < width:  # Go pads strings with zeros too
            return "0" * (width - len(s)) + s
        return _pad(s, flags, width)
    if verb == "q":
        if "#" in flags and "`" not in s and all(c.isprintable() or c == "\t" for c in s):
            return _pad("`" + s + "`", flags, width)
        return _pad(go_quote(s), flags, width)
    if verb in "xX":
        h = s.encode().hex()
        if verb == "X":
            h = h.upper()
        return _pad(h, flags, width)
    return _bad(verb, s)


# ---------------------------------------------------------------------------------------------
# escapers


def html_escape(s: str) -> str:
    """text/template's HTMLEscapeString."""
    return (s.replace("&", "&amp;").replace("'", "&#39;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&#34;").replace("\x00", "\ufffd"))


def js_escape(s: str) -> str:
    """text/template's JSEscapeString."""
    out: list[str] = []
    for c in s:
        if c == "\\":
            out.append("\\\\")
        elif c == "'":
            out.append("\\'")
        elif c == '"':
            out.append('\\"')
        elif c in "<>&=":
            out.append(f"\\u{ord(c):04X}")
        elif ord(c) < 0x20 or not c.isprintable():
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return "".join(out)


_URL_SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


def query_escape(s: str) -> str:
    """url.QueryEscape."""
    out: list[str] = []
    for b in s.encode():
        c = chr(b)
        if c in _URL_SAFE:
            out.append(c)
        elif c == " ":
            out.append("+")
        else:
            out.append(f"%{b:02X}")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# JSON as encoding/json writes it


def to_plain(v: Any) -> Any:
    """A value as JSON sees it: structs as maps of their fields, MarshalJSON honoured."""
    if v is NO_VALUE:
        return None
    marshal = getattr(type(v), "MarshalJSON", None)
    if marshal is not None:
        return marshal(v)
    if isinstance(v, Mapping):
        return {str(k): to_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_plain(x) for x in v]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: to_plain(getattr(v, f.name)) for f in dataclasses.fields(v) if not f.name.startswith("_")}
    return v


def _json_float(f: float) -> str:
    if math.isnan(f) or math.isinf(f):
        raise FuncError(f"json: unsupported value: {format_float(f)}")
    a = abs(f)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        s = repr(f)
        mant, _, exp = s.partition("e")
        if not exp:
            s = format(f, "e")
            mant, _, exp = s.partition("e")
        if "." in mant:
            mant = mant.rstrip("0").rstrip(".")
        e = int(exp)
        return f"{mant}e{'-' if e < 0 else '+'}{abs(e)}" if e < 0 else f"{mant}e+{e}"
    if f == int(f) and a < 1e21:
        return str(int(f))
    return repr(f)


def _json_str(s: str, escape_html: bool) -> str:
    out = ['"']
    for c in s:
        o = ord(c)
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif o < 0x20 or (escape_html and c in "<>&") or o in (0x2028, 0x2029):
            out.append(f"\\u{o:04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def to_json(v: Any, indent: str = "", escape_html: bool = True) -> str:
    """json.Marshal (or MarshalIndent with ``indent``): sorted map keys, Go's floats and escapes."""
    return _json(to_plain(v), indent, "", escape_html)


def _json(v: Any, indent: str, cur: str, escape_html: bool) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _json_float(v)
    if isinstance(v, str):
        return _json_str(v, escape_html)
    if isinstance(v, Mapping):
        if not v:
            return "{}"
        inner = cur + indent
        items = [_json_str(str(k), escape_html) + (": " if indent else ":") + _json(v[k], indent, inner, escape_html)
                 for k in sorted(v, key=str)]
        if indent:
            return "{\n" + ",\n".join(inner + i for i in items) + "\n" + cur + "}"
        return "{" + ",".join(items) + "}"
    if isinstance(v, (list, tuple)):
        if not v:
            return "[]"
        inner = cur + indent
        elems = [_json(x, indent, inner, escape_html) for x in v]
        if indent:
            return "[\n" + ",\n".join(inner + e for e in elems) + "\n" + cur + "]"
        return "[" + ",".join(elems) + "]"
    raise FuncError(f"json: unsupported type: {type_name(v)}")
