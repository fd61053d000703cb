"""Check a ``.pt2`` archive before torch reads it: no string torch would evaluate may be code.

``torch.export.load`` hands every ``expr_str`` of the archive's JSON (symbolic sizes, e.g.
``Symbol('s31', positive=True, integer=True)`` or ``FloorDiv(s0, 2)``) to
``sympy.sympify``, which evaluates it as Python: an archive with no pickle at all could run
code. :func:`check_archive` reads the zip itself, bounded in size, parses each such string
with :mod:`ast` (parsing runs nothing) and accepts only symbolic arithmetic: numbers,
symbol names, a fixed set of sympy / torch function names, arithmetic, comparison and
boolean operators, and ``Symbol('name', assumption=True)``. No attribute, subscript,
lambda, comprehension, other name or other string gets through, so nothing reaches Python
but sympy's own constructors. Pickled objects are refused separately (gen/importer.py).
"""

from __future__ import annotations

import ast
import json
import re
import zipfile
from pathlib import Path

from ..errors import ModelFileError

__all__ = ["check_archive", "check_symbolic_expression", "MAX_JSON_BYTES", "MAX_MEMBERS"]

#: The largest JSON member read (model.json of a large CNN is a few MB).
MAX_JSON_BYTES = 64 << 20
#: More members than this is not an export archive.
MAX_MEMBERS = 100_000

#: Function and constant names a symbolic size may use: sympy's, and the torch.utils._sympy
#: functions torch's deserializer passes to sympify.
_NAMES = frozenset({
    "Symbol", "Dummy", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "StrictGreaterThan",
    "LessThan", "GreaterThan", "And", "Or", "Not", "Piecewise", "floor", "ceiling", "sqrt",
    "true", "false", "True", "False", "oo", "zoo", "nan", "int_oo", "IntInfinity", "NegativeIntInfinity",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
    "ToFloat", "Identity", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor",
    "OpaqueUnaryFn_sqrt", "OpaqueUnaryFn_exp", "OpaqueUnaryFn_log",
})
#: Keyword arguments of ``Symbol(...)``: sympy assumptions, each True or False.
_ASSUMPTIONS = frozenset({
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "infinite", "zero",
    "nonzero", "rational", "even", "odd", "prime", "composite", "commutative", "complex", "extended_real",
    "extended_positive", "extended_negative", "extended_nonnegative", "extended_nonpositive", "imaginary",
})
_SYMBOL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")      # inside Symbol('...'): s0, u12, batch, ...
_BARE_SYMBOL = re.compile(r"[a-z]{1,4}[0-9]{1,9}")              # a bare name: s0, u12, s31 (torch's own)
_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd,
              ast.Not, ast.Invert, ast.And, ast.Or, ast.BitAnd, ast.BitOr, ast.BitXor, ast.LShift, ast.RShift,
              ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Call, ast.Name, ast.Load,
          ast.Constant, ast.keyword, ast.Tuple) + _OPERATORS
_MAX_EXPRESSION = 4096
_MAX_INTEGER = 1 << 64
#: Operations whose second operand is an exponent: sympy would compute a huge power exactly.
_POWERS = frozenset({"Pow", "PowByNatural", "FloatPow", "LShift"})
_MAX_EXPONENT, _MAX_POWERS = 64, 4


def _symbol_name(text: str) -> bool:
    return bool(_SYMBOL_NAME.fullmatch(text)) and "__" not in text


def check_symbolic_expression(text) -> None:
    """Raise ``ValueError`` unless ``text`` is symbolic arithmetic that sympify may safely evaluate."""
    if not isinstance(text, str) or len(text) > _MAX_EXPRESSION:
        raise ValueError("not a string of at most 4096 characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ValueError(f"not an expression ({type(exc).__name__})") from None
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise ValueError(f"{type(node).__name__} is not arithmetic")
        if isinstance(node, ast.Name) and not (node.id in _NAMES or _BARE_SYMBOL.fullmatch(node.id)):
            raise ValueError(f"name {node.id!r} is not a symbol or a known function")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _NAMES):
            raise ValueError("a call of something other than a known function")
        if isinstance(node, ast.keyword) and (node.arg not in _ASSUMPTIONS or not isinstance(node.value, ast.Constant)
                                              or not isinstance(node.value.value, bool)):
            raise ValueError(f"keyword {node.arg!r} is not a sympy assumption set to True or False")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and not _symbol_name(node.value):
            raise ValueError("a string that is not a symbol name")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, str)):
            raise ValueError(f"a {type(node.value).__name__} constant")
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and abs(node.value) > _MAX_INTEGER:
            raise ValueError("an integer beyond 64 bits")
    _check_powers(tree)


def _small_constant(node) -> bool:
    """A literal integer exponent of at most 64, bare or as ``Integer(n)``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Integer" and node.args:
        node = node.args[0]
    return (isinstance(node, ast.Constant) and type(node.value) is int and 0 <= node.value <= _MAX_EXPONENT)


def _check_powers(tree) -> None:
    """Powers and shifts only by small literal exponents, and few of them (a symbolic size needs none)."""
    exponents = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Pow, ast.LShift)):
            exponents.append(node.right)
        elif isinstance(node, ast.Call) and node.func.id in _POWERS:
            exponents.append(node.args[1] if len(node.args) == 2 else None)
    if len(exponents) > _MAX_POWERS or not all(_small_constant(e) for e in exponents):
        raise ValueError(f"powers or shifts beyond {_MAX_POWERS} of literal exponents <= {_MAX_EXPONENT}")


def _expressions(document):
    """Every ``expr_str`` value in a parsed JSON document, walked without recursion."""
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "expr_str":
                    yield value
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def check_archive(path: Path) -> None:
    """Refuse a ``.pt2`` whose JSON holds a symbolic expression that is not plain arithmetic.

    Reads the zip directory and each ``.json`` member (at most :data:`MAX_JSON_BYTES`
    each); raises :class:`ModelFileError` with one line naming the file and the defect.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_MEMBERS:
                raise ModelFileError(f"{path} holds {len(members):,} files: not a torch.export program")
            for member in members:
                if member.filename.endswith(".json"):
                    _check_json_member(path, archive, member)
    except zipfile.BadZipFile as exc:
        raise ModelFileError(f"{path} is not a readable torch.export program (.pt2): {exc}") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from None


def _check_json_member(path: Path, archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> None:
    if member.file_size > MAX_JSON_BYTES:
        raise ModelFileError(f"{path}: {member.filename} is {member.file_size:,} bytes, more than the "
                             f"{MAX_JSON_BYTES >> 20} MiB spikesmith reads")
    with archive.open(member) as stream:
        raw = stream.read(MAX_JSON_BYTES + 1)        # the header's size may lie: read no further
    if len(raw) > MAX_JSON_BYTES:
        raise ModelFileError(f"{path}: {member.filename} is larger than the {MAX_JSON_BYTES >> 20} MiB "
                             "spikesmith reads")
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(f"{path}: {member.filename} is not valid JSON ({type(exc).__name__})") from None
    for text in _expressions(document):
        try:
            check_symbolic_expression(text)
        except ValueError as exc:
            shown = repr(text)[:60] + ("..." if len(repr(text)) > 60 else "")
            raise ModelFileError(f"{path}: {member.filename} has a symbolic size {shown} that is not plain "
                                 f"arithmetic ({exc}); refused before torch evaluates it") from None
