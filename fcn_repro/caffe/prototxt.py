"""Protobuf text format, as Caffe writes it and as people hand-write it.

No schema is needed: the parser yields :class:`Message` objects, ordered lists
of ``(field, value)`` pairs that keep every repeat and every unknown field.
Scalars become Python values:

* ``"quoted"`` / ``'quoted'`` strings (escapes decoded, adjacent strings
  concatenated) -> :class:`str`
* bare identifiers (``MAX``, ``TRAIN``) -> :class:`Enum`, a ``str`` subclass,
  so the writer can emit them unquoted again
* ``true`` / ``false`` (also ``True``/``False``/``t``/``f``) -> :class:`bool`
* integers (decimal, hex, octal) -> :class:`int`; anything with ``.``/``e`` or
  ``inf``/``nan`` (optionally negative, optional ``f`` suffix) -> :class:`float`

``parse_prototxt`` additionally upgrades legacy nets (V1 ``layers`` with enum
types, ``input``/``input_dim``/``input_shape``) to the V2 form Caffe itself
upgrades them to, so consumers only see ``layer { type: "..." }``.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Iterator

from fcn_repro import limits
from fcn_repro.caffe import schema
from fcn_repro.caffe.schema import V1_ENUM_NAMES, V1_LAYER_TYPES  # noqa: F401  (importable from here)
from fcn_repro.errors import PrototxtError
from fcn_repro.outputs import output_file

__all__ = [
    "Enum", "Message", "PrototxtError", "parse_text", "parse_prototxt",
    "format_text", "write_prototxt", "upgrade_net", "is_v1_net",
]


class Enum(str):
    """An enum value written bare in text format (``pool: MAX``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Enum({str.__repr__(self)})"


class Message:
    """An ordered multimap of fields: what a protobuf message is, without schema.

    ``get`` follows protobuf's rule for singular fields (the last value wins);
    ``getall`` returns every repeat in order.
    """

    __slots__ = ("fields",)

    def __init__(self, fields: Iterable[tuple[str, Any]] | None = None, **kw: Any):
        self.fields: list[tuple[str, Any]] = list(fields or [])
        for k, v in kw.items():
            self.add(k, v)

    # -- reading
    def get(self, name: str, default: Any = None) -> Any:
        for k, v in reversed(self.fields):
            if k == name:
                return v
        return default

    def getall(self, name: str) -> list[Any]:
        return [v for k, v in self.fields if k == name]

    def has(self, name: str) -> bool:
        return any(k == name for k, _ in self.fields)

    __contains__ = has

    def sub(self, name: str) -> "Message":
        """The sub-message ``name``, or an empty one when absent (protobuf default)."""
        v = self.get(name)
        if v is None:
            return Message()
        if not isinstance(v, Message):
            raise TypeError(f"field {name!r} is a scalar ({v!r}), not a message")
        return v

    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for k, _ in self.fields:
            seen.setdefault(k)
        return list(seen)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    # -- writing
    def add(self, name: str, value: Any) -> "Message":
        if isinstance(value, (list, tuple)):
            for v in value:
                self.fields.append((name, v))
        else:
            self.fields.append((name, value))
        return self

    def set(self, name: str, value: Any) -> "Message":
        """Replace every occurrence of ``name`` (in place of the first one)."""
        vals = list(value) if isinstance(value, (list, tuple)) else [value]
        out: list[tuple[str, Any]] = []
        placed = False
        for k, v in self.fields:
            if k == name:
                if not placed:
                    out.extend((name, x) for x in vals)
                    placed = True
            else:
                out.append((k, v))
        if not placed:
            out.extend((name, x) for x in vals)
        self.fields = out
        return self

    def remove(self, name: str) -> "Message":
        self.fields = [(k, v) for k, v in self.fields if k != name]
        return self

    def copy(self) -> "Message":
        """A deep copy (sub-messages copied, scalars shared: they are immutable)."""
        return Message((k, v.copy() if isinstance(v, Message) else v) for k, v in self.fields)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts for inspection: repeated fields become lists."""
        out: dict[str, Any] = {}
        counts: dict[str, int] = {}
        for k, _ in self.fields:
            counts[k] = counts.get(k, 0) + 1
        for k, v in self.fields:
            v = v.to_dict() if isinstance(v, Message) else v
            if counts[k] > 1:
                out.setdefault(k, []).append(v)
            else:
                out[k] = v
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and self.fields == other.fields

    def __repr__(self) -> str:
        return f"Message({self.fields!r})"

    def __str__(self) -> str:
        return format_text(self)


# ---------------------------------------------------------------- tokenizer

_PUNCT = set("{}<>[]:;,")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"',
            "a": "\a", "b": "\b", "f": "\f", "v": "\v", "?": "?"}


class _Tok:
    __slots__ = ("kind", "text", "value", "line", "col")

    def __init__(self, kind: str, text: str, value: Any, line: int, col: int):
        self.kind, self.text, self.value, self.line, self.col = kind, text, value, line, col


def _byte_char(b: int) -> str:
    """A byte from an escape, as the str that surrogateescape decoding gives it."""
    return chr(b) if b < 0x80 else chr(0xDC00 + b)


def _tokenize(text: str, filename: str) -> Iterator[_Tok]:
    """Tokens one at a time (a list of them all would take ~100 bytes per input byte)."""
    i, n, line, lstart = 0, len(text), 1, 0
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
            lstart = i
            continue
        if c in " \t\r\f\v":
            i += 1
            continue
        col = i - lstart + 1
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c in _PUNCT:
            yield (_Tok("punct", c, c, line, col))
            i += 1
            continue
        if c in "\"'":
            quote, j, buf, raw = c, i + 1, [], False
            while True:
                if j >= n or text[j] == "\n":
                    raise PrototxtError("unterminated string", filename, line, col)
                ch = text[j]
                if ch == quote:
                    j += 1
                    break
                if ch == "\\":
                    if j + 1 >= n:
                        raise PrototxtError("unterminated string", filename, line, col)
                    e = text[j + 1]
                    if e in "uU":  # \uXXXX / \UXXXXXXXX: a Unicode code point
                        width = 4 if e == "u" else 8
                        hexits = text[j + 2:j + 2 + width]
                        if len(hexits) != width or any(h not in "0123456789abcdefABCDEF" for h in hexits) \
                                or int(hexits, 16) > 0x10FFFF or 0xD800 <= int(hexits, 16) <= 0xDFFF:
                            raise PrototxtError(f"bad \\{e} escape", filename, line, j - lstart + 1)
                        buf.append(chr(int(hexits, 16)))
                        j += 2 + width
                        raw = True
                    elif e in _ESCAPES:
                        buf.append(_ESCAPES[e])
                        j += 2
                    elif e in "xX":
                        k = j + 2
                        while k < n and k < j + 4 and text[k] in "0123456789abcdefABCDEF":
                            k += 1
                        if k == j + 2:
                            raise PrototxtError("bad \\x escape", filename, line, j - lstart + 1)
                        buf.append(_byte_char(int(text[j + 2:k], 16)))
                        raw = True
                        j = k
                    elif e in "01234567":
                        k = j + 1
                        while k < n and k < j + 4 and text[k] in "01234567":
                            k += 1
                        code = int(text[j + 1:k], 8)
                        if code > 0xFF:
                            raise PrototxtError(f"octal escape \\{text[j + 1:k]} is not a byte",
                                                filename, line, j - lstart + 1)
                        buf.append(_byte_char(code))
                        raw = True
                        j = k
                    else:
                        raise PrototxtError(f"unknown escape \\{e}", filename, line, j - lstart + 1)
                else:
                    buf.append(ch)
                    j += 1
            value = "".join(buf)
            if raw:
                # \x and octal escapes give bytes: sequences of them that form
                # UTF-8 become their characters; stray bytes stay escaped
                # (surrogateescape) so the writer can put them back.
                try:
                    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
                except UnicodeEncodeError:  # str input holding lone surrogates: keep as given
                    pass
            yield (_Tok("string", text[i:j], value, line, col))
            i = j
            continue
        if c.isalnum() or c in "_-+.":
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] in "_-+."):
                # a sign is part of a number only right after an exponent marker
                if text[j] in "+-" and text[j - 1] not in "eE":
                    break
                j += 1
            word = text[i:j]
            yield (_Tok("word", word, None, line, col))
            i = j
            continue
        raise PrototxtError(f"unexpected character {c!r}", filename, line, col)
    yield _Tok("eof", "", None, line, n - lstart + 1)


def _scalar(word: str) -> Any:
    """Convert a bare word to int/float/bool/Enum; None when it is not a scalar."""
    low = word.lower()
    if word in ("true", "True", "t"):
        return True
    if word in ("false", "False", "f"):
        return False
    sign = -1 if word.startswith("-") else 1
    body = word[1:] if word[:1] in "+-" else word
    lb = body.lower()
    if lb in ("inf", "infinity", "inff", "infinityf"):
        return sign * math.inf
    if lb in ("nan", "nanf"):
        return math.nan
    if body[:1].isdigit() or body[:1] == ".":
        if "_" in body or not body.isascii():
            return None  # Python's int()/float() take 1_000 and non-ASCII digits; protobuf does not
        try:
            if lb.startswith("0x"):
                return sign * int(body, 16)
            if len(body) > 1 and body[0] == "0" and body.isdigit():
                return sign * int(body, 8)
            if body.isdigit():
                return sign * int(body)
            fb = body[:-1] if lb.endswith("f") and not lb.startswith("0x") else body
            return sign * float(fb)
        except ValueError:
            return None
    if word[:1] in "+-":
        return None
    if (low[0].isalpha() or low[0] == "_") and all(ch.isalnum() or ch == "_" for ch in word):
        return Enum(word)
    return None


class _Parser:
    """Recursive descent over the token stream, one token of lookahead.

    Nesting is limited to ``limits.current().text_depth`` (protobuf's own text
    parser refuses messages nested deeper than 100; so do we, with a clear
    error instead of Python's RecursionError). With ``positions`` the
    (line, column) of every field's value is remembered per message, for
    :func:`schema.check`'s errors.
    """

    def __init__(self, text: str, filename: str, positions: bool = False):
        self.filename = filename
        self._toks = _tokenize(text, filename)
        self._cur = next(self._toks)
        self._prev = self._cur
        self.depth = 0
        self.max_depth = limits.current().text_depth
        self.positions: dict[int, list[tuple[int, int]]] | None = {} if positions else None

    def err(self, msg: str, tok: _Tok | None = None) -> PrototxtError:
        tok = tok or self._cur
        return PrototxtError(msg, self.filename, tok.line, tok.col)

    def peek(self) -> _Tok:
        return self._cur

    def next(self) -> _Tok:
        t = self._prev = self._cur
        if t.kind != "eof":
            self._cur = next(self._toks)
        return t

    def _add(self, msg: Message, name: str, value: Any, tok: _Tok) -> None:
        msg.fields.append((name, value))
        if self.positions is not None:
            self.positions.setdefault(id(msg), []).append((tok.line, tok.col))

    def parse_message(self, close: str | None) -> Message:
        if close is not None:
            self.depth += 1
            if self.depth > self.max_depth:
                raise self.err(f"messages nested deeper than {self.max_depth} (text_depth limit; "
                               f"{limits.ENV['text_depth']} raises it)", self._prev)
        msg = Message()
        while True:
            t = self.peek()
            if t.kind == "eof":
                if close is not None:
                    raise self.err(f"expected '{close}' before end of input")
                return msg
            if t.kind == "punct" and t.text == close:
                self.next()
                self.depth -= 1
                return msg
            if t.kind != "word" or not (t.text[0].isalpha() or t.text[0] == "_"):
                raise self.err(f"expected a field name, found {t.text!r}" if t.text else "expected a field name")
            name = t.text
            if not all(ch.isalnum() or ch == "_" for ch in name):
                raise self.err(f"bad field name {name!r}")
            self.next()
            t = self.peek()
            colon = t.kind == "punct" and t.text == ":"
            if colon:
                self.next()
                t = self.peek()
            if t.kind == "punct" and t.text in "{<":
                self.next()
                self._add(msg, name, self.parse_message("}" if t.text == "{" else ">"), t)
            elif t.kind == "punct" and t.text == "[":
                if not colon:
                    raise self.err(f"expected ':' after field {name!r}")
                self.next()
                self.parse_list(name, msg)
            else:
                if not colon:
                    raise self.err(f"expected ':' or '{{' after field {name!r}")
                self._add(msg, name, self.parse_value(), t)
            t = self.peek()
            if t.kind == "punct" and t.text in ",;":
                self.next()

    def parse_list(self, name: str, msg: Message) -> None:
        t = self.peek()
        if t.kind == "punct" and t.text == "]":
            self.next()
            return
        while True:
            t = self.peek()
            if t.kind == "punct" and t.text in "{<":
                self.next()
                self._add(msg, name, self.parse_message("}" if t.text == "{" else ">"), t)
            else:
                self._add(msg, name, self.parse_value(), t)
            t = self.next()
            if t.kind == "punct" and t.text == "]":
                return
            if not (t.kind == "punct" and t.text == ","):
                raise self.err(f"expected ',' or ']' in list of {name!r}", t)

    def parse_value(self) -> Any:
        t = self.next()
        if t.kind == "string":
            parts = [t.value]
            while self.peek().kind == "string":  # adjacent strings concatenate
                parts.append(self.next().value)
            return "".join(parts)
        if t.kind == "word":
            word = t.text
            if word == "-" and self.peek().kind == "word":  # "- 5" is still -5
                word = "-" + self.next().text
            v = _scalar(word)
            if v is None:
                raise self.err(f"expected a value, found {t.text!r}", t)
            return v
        raise self.err(f"expected a value, found {t.text!r}" if t.text else "expected a value before end of input", t)


_NET_KEYS = ("layer", "layers", "input")


def parse_text(text: str | bytes, filename: str = "<text>", *, schema_type: str | None = None) -> Message:
    """Parse protobuf text format into a :class:`Message` (no upgrades).

    ``schema_type`` (a message name of :mod:`.schema`, e.g. ``"NetParameter"``)
    also holds every declared field to its caffe.proto type, as Caffe's
    parser does (:func:`schema.check`); errors name the line, layer and field.
    Text over ``limits.current().text_bytes`` is refused before parsing.
    """
    return _parse(text, filename, schema_type)


def _parse(text: str | bytes, filename: str, schema_type: str | None) -> Message:
    """:func:`parse_text`; ``schema_type="auto"``: ``NetParameter`` for a net's text, else none."""
    limits.check("text_bytes", len(text), "text of this size", filename, error=PrototxtError, line=1, col=1)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PrototxtError(f"not UTF-8 text (byte {e.start})", filename, 1, 1) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise PrototxtError("NUL byte: this is a binary file, not text format", filename, line, 1)
    parser = _Parser(text, filename, positions=schema_type is not None)
    msg = parser.parse_message(None)
    if schema_type == "auto":
        schema_type = "NetParameter" if any(msg.has(k) for k in _NET_KEYS) else None
    if schema_type is not None:
        pos = parser.positions or {}

        def position(m: Message, i: int) -> tuple[int, int] | None:
            p = pos.get(id(m))
            return p[i] if p is not None and i < len(p) else None
        schema.check(msg, schema_type, filename, position)
    return msg


# ------------------------------------------------------------------- writer

def _fmt_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Enum):
        return str(v)
    if isinstance(v, str):
        out = []
        for ch in v:
            if ch == '"':
                out.append('\\"')
            elif ch == "\\":
                out.append("\\\\")
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\t":
                out.append("\\t")
            elif ch == "\r":
                out.append("\\r")
            elif ord(ch) < 32 or ord(ch) == 127:
                out.append("\\%03o" % ord(ch))
            elif 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte that is not UTF-8 (see _byte_char)
                out.append("\\%03o" % (ord(ch) - 0xDC00))
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == 0 and math.copysign(1.0, v) < 0:
            return "-0.0"
        if v == int(v) and abs(v) < 1e16:
            return str(int(v))  # Caffe writes 0.5 as 0.5 and 2.0 as 2
        return repr(v)
    # numpy scalars and the like
    if hasattr(v, "item"):
        return _fmt_scalar(v.item())
    raise TypeError(f"cannot write {type(v).__name__} value {v!r} in text format")


def format_text(msg: Message, indent: int = 0) -> str:
    """Text format of ``msg``, two-space indented, the way Caffe prints nets."""
    lines: list[str] = []
    _emit(msg, indent, lines)
    return "".join(lines)


def _emit(msg: Message, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    for k, v in msg.fields:
        if isinstance(v, Message):
            lines.append(f"{pad}{k} {{\n")
            _emit(v, indent + 1, lines)
            lines.append(f"{pad}}}\n")
        else:
            lines.append(f"{pad}{k}: {_fmt_scalar(v)}\n")


def write_prototxt(path: str | os.PathLike, msg: Message) -> None:
    """Write ``msg`` to ``path`` atomically (a temp file renamed into place)."""
    data = format_text(msg).encode("utf-8")   # UTF-8 whatever the locale says
    with output_file(path, len(data), "wb") as f:
        f.write(data)


# ---------------------------------------------------------- legacy upgrades

def v1_type_name(t: Any) -> str:
    """V2 type string for a V1 layer type given as enum name or number."""
    if isinstance(t, (bool, float, Message)):
        raise ValueError(f"bad V1 layer type {t!r}")
    if isinstance(t, int):
        if t not in V1_LAYER_TYPES:
            raise ValueError(f"unknown V1 layer type number {t}")
        return V1_LAYER_TYPES[t]
    s = str(t)
    if s in V1_ENUM_NAMES:
        return V1_LAYER_TYPES[V1_ENUM_NAMES[s]]
    return s  # already a V2 name


def is_v1_net(net: Message) -> bool:
    return net.has("layers")


def _upgrade_v1_layer(v1: Message) -> Message:
    """One V1LayerParameter -> LayerParameter, the way Caffe's upgrade does it."""
    out = Message()
    blobs_lr = v1.getall("blobs_lr")
    decays = v1.getall("weight_decay")
    pnames = v1.getall("param")  # V1 param names are strings
    for k, v in v1.fields:
        if k == "type":
            out.add("type", v1_type_name(v))
        elif k in ("blobs_lr", "weight_decay", "param"):
            continue
        elif k == "layer":  # V0 nesting: not produced by any FCN file
            raise ValueError("V0 (nested 'layer' inside 'layers') nets are not supported")
        else:
            out.add(k, v)
    nparam = max(len(blobs_lr), len(decays), len(pnames))
    specs = []
    for i in range(nparam):
        spec = Message()
        if i < len(pnames) and isinstance(pnames[i], str):
            spec.add("name", pnames[i])
        if i < len(blobs_lr):
            spec.add("lr_mult", blobs_lr[i])
        if i < len(decays):
            spec.add("decay_mult", decays[i])
        specs.append(spec)
    # ParamSpecs go right after the tops, where Caffe keeps them.
    fields = out.fields
    pos = max([i + 1 for i, (k, _) in enumerate(fields) if k in ("name", "type", "bottom", "top")] or [0])
    out.fields = fields[:pos] + [("param", s) for s in specs] + fields[pos:]
    return out


def _input_layers(net: Message) -> list[Message]:
    """Legacy net-level input / input_dim / input_shape -> Input layers."""
    names = net.getall("input")
    if not names:
        return []
    dims = net.getall("input_dim")
    shapes = net.getall("input_shape")
    # the upgrade reads these fields, so their kinds are checked here (bad
    # input gets a ValueError, never an AttributeError from deeper down)
    for name in names:
        if not isinstance(name, str) or isinstance(name, Enum):
            raise ValueError(f"input must be a quoted blob name, got {name!r}")
    for d in dims:
        if not isinstance(d, int) or isinstance(d, bool):
            raise ValueError(f"input_dim must be an integer, got {d!r}")
    for sh in shapes:
        if not isinstance(sh, Message):
            raise ValueError(f"input_shape must be a message {{ dim: ... }}, got {sh!r}")
    if dims and shapes:
        raise ValueError("net gives both input_dim and input_shape")
    if dims and len(dims) != 4 * len(names):
        raise ValueError(f"{len(names)} inputs need {4 * len(names)} input_dim values, got {len(dims)}")
    if shapes and len(shapes) != len(names):
        raise ValueError(f"{len(names)} inputs need as many input_shape messages, got {len(shapes)}")
    # Caffe's UpgradeNetInput makes ONE layer named "input" with a top and a
    # shape per legacy input (shapes from input_shape, or 4 input_dim each).
    # Without any dims Caffe just drops the fields (a legacy caffemodel's
    # inputs); for a prototxt we keep the tops as a shapeless Input layer, so
    # the caller can give the shapes instead of the net failing to build.
    layer = Message(name="input", type="Input")
    layer.add("top", names)
    param = Message()
    for i in range(len(names)):
        if shapes:
            param.add("shape", shapes[i].copy())
        elif dims:
            param.add("shape", Message([("dim", d) for d in dims[4 * i:4 * i + 4]]))
    layer.add("input_param", param)
    return [layer]


def upgrade_net(net: Message) -> Message:
    """A V2 NetParameter from any of: V2, V1 (``layers``), legacy inputs.

    The result has only ``layer`` entries (legacy inputs become ``Input``
    layers at the front); other net-level fields are kept in order.
    """
    if net.has("layers") and net.has("layer"):
        raise ValueError("net mixes V1 'layers' and V2 'layer' fields")
    for k, v in net.fields:
        if k in ("layer", "layers") and not isinstance(v, Message):
            raise ValueError(f"'{k}' must be a message {{ ... }}, got {v!r}")
    out = Message()
    inputs = _input_layers(net)
    placed = False
    for k, v in net.fields:
        if k in ("input", "input_dim", "input_shape"):
            continue
        if k in ("layer", "layers") and not placed:
            out.add("layer", inputs)
            placed = True
        if k == "layers":
            out.add("layer", _upgrade_v1_layer(v))
        else:
            out.add(k, v)
    if not placed:
        out.add("layer", inputs)
    return out


def parse_prototxt(path_or_text: str | bytes | os.PathLike, upgrade: bool = True, *,
                   schema_type: str | None = "auto") -> Message:
    """Parse a prototxt given as a path or as the text itself.

    With ``upgrade`` (default), V1 nets and legacy inputs are upgraded to V2
    (:func:`upgrade_net`); solver files pass through unchanged.
    ``schema_type``: the caffe.proto message the text is (fields are held to
    their types, see :func:`parse_text`); ``"auto"`` (default) checks a net
    (text with ``layer``/``layers``/``input``) as a ``NetParameter`` and
    leaves other text unchecked; ``None`` checks nothing.
    """
    is_path = isinstance(path_or_text, os.PathLike) or (
        isinstance(path_or_text, str) and "\n" not in path_or_text and "{" not in path_or_text
        and (os.path.exists(path_or_text) or path_or_text.endswith((".prototxt", ".pbtxt"))))
    if is_path:
        filename = os.fspath(path_or_text)
        data = limits.read_capped(filename, "text", error=PrototxtError, line=1, col=1)
    else:
        filename = "<text>"
        data = path_or_text  # type: ignore[assignment]
    msg = _parse(data, filename, schema_type)
    if upgrade and any(msg.has(k) for k in _NET_KEYS):
        try:
            msg = upgrade_net(msg)
        except ValueError as e:
            raise PrototxtError(str(e), filename, 1, 1) from None
    return msg
