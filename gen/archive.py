"""Read a ``.pt2`` archive ourselves and hand torch only what was checked (deny by default).

``torch.export.load`` would read every member of the zip, hand symbolic sizes (``expr_str``) to
``sympy.sympify`` (which evaluates Python), resolve operators by name, unpickle sample inputs and
``use_pickle`` payloads, and allocate whatever a tensor's declared sizes say. So before torch sees a
file, :func:`checked_program_archive`:

1. accepts only the member names ``torch.export.save`` writes for one program (exact, case-sensitive,
   under one root folder), stored uncompressed (no deflate bombs), each read with its size counted
   against a :class:`~spikesmith.resources.MemoryBudget`;
2. parses ``models/model.json`` and the payload configs as JSON and walks them with an allowlist:
   keys of torch's versioned export schema, argument kinds that are plain data, operators of
   :mod:`.operators`, identifiers for names, every ``expr_str`` in a strict grammar (integers,
   symbols, ``+ - * // %``, comparisons, a fixed function list; bounded length and depth);
3. checks every payload: raw tensors of a numeric dtype, never pickled, whose declared extent fits
   the bytes stored;
4. writes a new archive in memory from the checked parts only: metadata other than the module
   stack dropped, no guard code, empty sample inputs (nothing to unpickle).

Any defect is one line (:class:`~spikesmith.errors.ModelFileError`) naming the file and the part.
"""

from __future__ import annotations

import ast
import functools
import io
import json
import re
import zipfile
from pathlib import Path

from ..errors import ModelFileError, UnsupportedModelError
from ..resources import MemoryBudget
from .operators import READ, target_name

__all__ = ["checked_program_archive", "check_symbolic_expression", "MAX_JSON_BYTES", "MAX_MEMBERS",
           "MEMBERS", "PAYLOAD"]

#: The largest JSON member read (model.json of a large CNN is a few MB).
MAX_JSON_BYTES = 64 << 20
#: More members than this is not an export archive.
MAX_MEMBERS = 10_000
#: Deepest JSON nesting accepted (torch's export schema nests about 12 levels).
MAX_DEPTH = 48
#: The fixed members of a program archive, below its root folder.
MEMBERS = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id",
           "models/model.json", "data/sample_inputs/model.pt", "data/weights/model_weights_config.json",
           "data/constants/model_constants_config.json")
_REQUIRED = ("archive_format", "archive_version", "models/model.json", "data/weights/model_weights_config.json",
             "data/constants/model_constants_config.json")
#: Tensor payloads: ``data/weights/weight_N`` and ``data/constants/tensor_N``.
PAYLOAD = re.compile(r"data/(weights/weight|constants/tensor)_[0-9]{1,9}")
_ROOT = re.compile(r"[A-Za-z0-9_.-]{1,128}")

#: Function names a symbolic size may use: sympy's, and the torch.utils._sympy functions torch's
#: deserializer passes to sympify.
_FUNCTIONS = frozenset({
    "Symbol", "Integer", "Add", "Mul", "Max", "Min", "Abs", "Mod", "Eq", "Ne", "Lt", "Le", "Gt", "Ge",
    "And", "Or", "Not", "floor", "ceiling", "FloorDiv", "ModularIndexing", "PythonMod", "CleanDiv",
    "CeilDiv", "CeilToInt", "FloorToInt", "PowByNatural", "Identity", "Where",
})
_CONSTANT_NAMES = frozenset({"true", "false", "True", "False", "oo", "int_oo"})
#: Keyword arguments of ``Symbol(...)``: sympy assumptions, each True or False.
_ASSUMPTIONS = frozenset({"positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite",
                          "zero", "nonzero", "even", "odd"})
_SYMBOL_NAME = re.compile(r"[a-z]{1,4}[0-9]{1,9}")              # torch's own: s0, u12, s31
_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.USub, ast.UAdd, ast.Not, ast.And,
              ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Call, ast.Name, ast.Load,
          ast.Constant, ast.keyword) + _OPERATORS
_MAX_EXPRESSION = 1024
_MAX_EXPRESSION_DEPTH = 24
_MAX_INTEGER = 1 << 63
#: ``PowByNatural(base, n)``: only literal exponents up to this.
_MAX_EXPONENT = 64

#: Argument kinds that are plain data (no graph, operator, custom or nested object).
_ARGUMENT_KINDS = frozenset({
    "as_none", "as_tensor", "as_tensors", "as_int", "as_ints", "as_float", "as_floats", "as_string",
    "as_strings", "as_sym_int", "as_sym_ints", "as_scalar_type", "as_memory_format", "as_layout",
    "as_device", "as_bool", "as_bools", "as_sym_bool", "as_sym_bools", "as_optional_tensors",
    "as_optional_tensor",
})
_DENIED_ARGUMENTS = frozenset({"as_graph", "as_custom_obj", "as_operator", "as_complex", "as_nested_tensors",
                               "as_int_lists", "as_string_to_argument", "as_float_lists", "as_sym_float",
                               "as_sym_floats"})
#: Program inputs and outputs a converted model may have.
_INPUT_KINDS = frozenset({"parameter", "buffer", "tensor_constant", "user_input"})
_OUTPUT_KINDS = frozenset({"user_output"})
#: Maps whose keys are names (not schema fields), and the rule for their keys.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
_QUALIFIED = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]{0,511}")
_NAME_MAPS = {"tensor_values": _IDENTIFIER, "sym_int_values": _IDENTIFIER, "sym_bool_values": _IDENTIFIER,
              "sym_float_values": _IDENTIFIER, "range_constraints": _SYMBOL_NAME, "opset_version": _IDENTIFIER,
              "config": _QUALIFIED}
_EMPTY = {"custom_obj_values", "treespec_namedtuple_fields"}
_NAME_KEYS = {"name": _IDENTIFIER, "as_name": _IDENTIFIER, "user_input_name": _IDENTIFIER,
              "parameter_name": _QUALIFIED, "buffer_name": _QUALIFIED, "tensor_constant_name": _QUALIFIED,
              "fqn": re.compile(r"[A-Za-z0-9_.]{0,512}"), "path_name": re.compile(r"(weight|tensor)_[0-9]{1,9}"),
              "torch_version": re.compile(r"[A-Za-z0-9.+_-]{1,64}")}
_VERIFIERS = frozenset({"TRAINING", "ATEN", "FUNCTIONAL"})
_TREESPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"})
#: Payload dtypes (torch's export schema ScalarType): the numbers a layer may hold.
_ELEMENT_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 12: 1, 13: 2}
_STRIDED, _MAX_RANK = 7, 8


@functools.cache
def _schema_fields() -> frozenset[str]:
    """Every field name of torch's versioned export schema (the keys a program's JSON may have)."""
    import dataclasses
    from torch._export.serde import schema

    names = set()
    for value in vars(schema).values():
        if dataclasses.is_dataclass(value):
            names |= {field.name for field in dataclasses.fields(value)}
    return frozenset(names)


# ---------------------------------------------------------------------------------- symbolic sizes

def check_symbolic_expression(text) -> None:
    """Raise ``ValueError`` unless ``text`` is symbolic integer arithmetic that sympify may evaluate.

    The grammar: decimal integers below 2**63, torch's symbol names (``s0``), ``Symbol('s0', integer=True,
    ...)``, ``+ - * // %``, comparisons, ``and or not`` and the functions of ``_FUNCTIONS``;
    ``PowByNatural`` only with a literal exponent <= 64; at most 1024 characters and 24 levels deep.
    No ``^`` (sympify reads it as a power), no ``**``, attribute, subscript, string or float.
    """
    if not isinstance(text, str) or len(text) > _MAX_EXPRESSION:
        raise ValueError(f"not a string of at most {_MAX_EXPRESSION} characters")
    if not all(c.isascii() and (c.isalnum() or c in " _+-*/%(),='<>!") for c in text):
        raise ValueError("a character outside integer arithmetic")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ValueError(f"not an expression ({type(exc).__name__})") from None
    _check_depth(tree)
    for node in ast.walk(tree):
        _check_expression_node(node)


def _check_depth(tree: ast.AST) -> None:
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > _MAX_EXPRESSION_DEPTH:
            raise ValueError(f"nested deeper than {_MAX_EXPRESSION_DEPTH} levels")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _check_expression_node(node: ast.AST) -> None:
    if not isinstance(node, _NODES):
        raise ValueError(f"{type(node).__name__} is not integer arithmetic")
    if isinstance(node, ast.Name) and not (node.id in _FUNCTIONS or node.id in _CONSTANT_NAMES
                                           or _SYMBOL_NAME.fullmatch(node.id)):
        raise ValueError(f"name {node.id!r} is not a symbol or a known function")
    if isinstance(node, ast.Call):
        _check_call(node)
    if isinstance(node, ast.keyword) and (node.arg not in _ASSUMPTIONS or not isinstance(node.value, ast.Constant)
                                          or not isinstance(node.value.value, bool)):
        raise ValueError(f"keyword {node.arg!r} is not a sympy assumption set to True or False")
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, str) and not _SYMBOL_NAME.fullmatch(value):
            raise ValueError("a string that is not a symbol name")
        if not isinstance(value, (int, str)) or (type(value) is int and abs(value) >= _MAX_INTEGER):
            raise ValueError(f"a constant that is not an integer below 2**63 ({type(value).__name__})")


def _check_call(node: ast.Call) -> None:
    if not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS):
        raise ValueError("a call of something other than a known function")
    name = node.func.id
    if name == "Symbol" and not (len(node.args) == 1 and isinstance(node.args[0], ast.Constant)
                                 and isinstance(node.args[0].value, str)):
        raise ValueError("Symbol(...) takes one symbol name")
    if name != "Symbol" and (node.keywords or any(isinstance(a, ast.Constant) and isinstance(a.value, str)
                                                  for a in node.args)):
        raise ValueError(f"{name}(...) takes expressions only")
    if name == "PowByNatural" and not (len(node.args) == 2 and isinstance(node.args[1], ast.Constant)
                                       and type(node.args[1].value) is int
                                       and 0 <= node.args[1].value <= _MAX_EXPONENT):
        raise ValueError(f"a power whose exponent is not a literal up to {_MAX_EXPONENT}")


# ---------------------------------------------------------------------------------- the JSON walk

class _ProgramCheck:
    """One walk over a parsed program document: refuses what the allowlists do not name, strips metadata."""

    def __init__(self, path: Path, member: str, fields: frozenset[str]):
        self.path, self.member, self.fields = path, member, fields

    def refuse(self, what: str) -> None:
        raise ModelFileError(f"{self.path}: {self.member} {what}; refused before torch reads it")

    def walk(self, document) -> None:
        """Visit every value (iteratively, at most :data:`MAX_DEPTH` deep)."""
        stack = [(document, None, 0)]
        while stack:
            value, key, depth = stack.pop()
            if depth > MAX_DEPTH:
                self.refuse(f"nests deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                stack.extend(self._dict(value, key, depth))
            elif isinstance(value, list):
                stack.extend((item, key, depth + 1) for item in value)
            elif isinstance(value, str):
                self._string(value, key)
            elif not (value is None or isinstance(value, (bool, int, float))):
                self.refuse(f"holds a {type(value).__name__}")

    def _dict(self, value: dict, key, depth: int):
        if key in _EMPTY and value:
            self.refuse(f"has {key} (custom objects or named tuples): spikesmith reads plain tensor programs")
        if key in _NAME_MAPS:
            for name in value:
                if not _NAME_MAPS[key].fullmatch(name):
                    self.refuse(f"has a {key} name {_shown(name)} that is not an identifier")
            return [(item, None, depth + 1) for item in value.values()]
        if key == "metadata":
            return []       # node metadata: stripped by _sanitise before the walk
        for field in value:
            if field not in self.fields:
                self.refuse(f"has a field {_shown(field)} that torch's export schema does not define")
            self._field(field, value[field], value)
        return [(item, field, depth + 1) for field, item in value.items()]

    def _field(self, field: str, item, owner: dict) -> None:
        if field in _DENIED_ARGUMENTS and item is not None:
            self.refuse(f"passes an argument of kind {field} (graphs, operators and custom objects are refused)")
        if field == "target":
            self._operator(item, owner)
        if field in ("input_specs", "output_specs"):
            allowed = _INPUT_KINDS if field == "input_specs" else _OUTPUT_KINDS
            for spec in item if isinstance(item, list) else [None]:
                kinds = [k for k, v in spec.items() if v is not None] if isinstance(spec, dict) else ["?"]
                if len(kinds) != 1 or kinds[0] not in allowed:
                    self.refuse(f"has a program {field[:-6]} of kind {kinds} (spikesmith reads {sorted(allowed)}; "
                                "export the model in eval mode)")
        if field == "verifiers" and not (isinstance(item, list) and set(item) <= _VERIFIERS):
            self.refuse(f"names verifiers {_shown(item)}")
        if field in ("in_spec", "out_spec") and item is not None:
            self._treespec(item)

    def _string(self, text: str, key) -> None:
        if key == "expr_str":
            try:
                check_symbolic_expression(text)
            except ValueError as exc:
                self.refuse(f"has a symbolic size {_shown(text)} that is not plain arithmetic ({exc})")
        elif key in _NAME_KEYS:
            if not _NAME_KEYS[key].fullmatch(text):
                self.refuse(f"has a {key} {_shown(text)} that is not an identifier")
        elif key in ("target", "in_spec", "out_spec", "verifiers"):
            pass            # checked with their owner
        elif len(text) > 4096 or not text.isprintable():
            self.refuse(f"has a string {_shown(text)} that is not a short printable value")

    def _operator(self, target, node: dict) -> None:
        name = target_name(target) if isinstance(target, str) else repr(target)
        if name in READ:
            return
        layer, cls = _layer_of(node)
        from .passes import SUPPORTED
        shown = name if re.fullmatch(r"[A-Za-z0-9_.]{1,200}", name) else _shown(name)
        raise UnsupportedModelError(f"unsupported layer '{layer}' ({cls}: {shown}) in {self.path}; "
                                    f"supported: {SUPPORTED}")

    def _treespec(self, text) -> None:
        try:
            spec = json.loads(text) if isinstance(text, str) and len(text) <= 65536 else None
        except (ValueError, RecursionError):
            spec = None
        if spec is None:
            self.refuse("has an input/output structure that is not a JSON tree spec")
        stack = [(spec, 0)]
        while stack:
            item, depth = stack.pop()
            if depth > MAX_DEPTH:
                self.refuse("has an input/output structure nested too deep")
            if isinstance(item, dict):
                if "type" in item and item["type"] not in _TREESPEC_TYPES:
                    self.refuse(f"has an input/output of type {_shown(item['type'])} (tuples, lists and dicts only)")
                stack.extend((v, depth + 1) for v in item.values())
            elif isinstance(item, list):
                stack.extend((v, depth + 1) for v in item)


def _layer_of(node: dict) -> tuple[str, str]:
    """The user's layer path and class of a serialized node, from its ``nn_module_stack`` metadata."""
    stack = (node.get("metadata") or {}).get("nn_module_stack") if isinstance(node.get("metadata"), dict) else None
    if isinstance(stack, str) and stack:
        parts = stack.split(";")[-1].split(",")
        if len(parts) >= 3 and parts[1]:
            return parts[1][:200], parts[-1].rsplit(".", 1)[-1][:100]
    return str(node.get("name", "?"))[:100], "function"


def _shown(value) -> str:
    text = repr(value)
    return text[:60] + ("..." if len(text) > 60 else "")


def _sanitise(document: dict) -> None:
    """Keep only what the importer reads: node metadata but the module stack dropped, no guard code."""
    graph = document.get("graph_module", {}).get("graph", {}) if isinstance(document.get("graph_module"), dict) \
        else {}
    for node in graph.get("nodes", []) if isinstance(graph, dict) else []:
        if isinstance(node, dict):
            meta = node.get("metadata") if isinstance(node.get("metadata"), dict) else {}
            stack = meta.get("nn_module_stack")
            keep = isinstance(stack, str) and len(stack) <= 4096 and stack.isprintable()
            node["metadata"] = {"nn_module_stack": stack} if keep else {}
    if isinstance(document.get("graph_module"), dict):
        document["graph_module"]["metadata"] = {}
    document["guards_code"] = []


# ---------------------------------------------------------------------------------- payloads

def _check_payloads(path: Path, member: str, config: dict, sizes: dict[str, int], folder: str) -> set[str]:
    """Each payload of a weights or constants config: raw numeric tensor, never pickled, fitting its bytes."""
    def refuse(what):
        raise ModelFileError(f"{path}: {member} {what}; refused before torch reads it")

    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict) or set(config) != {"config"}:
        refuse("is not a payload config")
    used = set()
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            refuse(f"asks to unpickle {_shown(fqn)}; spikesmith never unpickles model files (export plain tensors)")
        name = f"{folder}/{meta.get('path_name')}"
        if name not in sizes:
            refuse(f"names a payload {_shown(meta.get('path_name'))} the archive does not hold")
        tensor = meta.get("tensor_meta")
        if not isinstance(tensor, dict):
            refuse(f"has no tensor description for {_shown(fqn)}")
        _check_extent(tensor, sizes[name], lambda what: refuse(f"{_shown(fqn)}: {what}"))
        used.add(name)
    return used


def _ints(items, what, refuse) -> list[int]:
    if not isinstance(items, list) or len(items) > _MAX_RANK:
        refuse(f"{what} are not a list of at most {_MAX_RANK} sizes")
    values = [item.get("as_int") if isinstance(item, dict) and set(item) == {"as_int"} else None for item in items]
    if not all(type(v) is int and 0 <= v < _MAX_INTEGER for v in values):
        refuse(f"{what} are not literal non-negative integers")
    return values


def _check_extent(tensor: dict, stored: int, refuse) -> None:
    """The declared dtype, layout and device are plain, and the strided extent fits the ``stored`` bytes."""
    element = _ELEMENT_BYTES.get(tensor.get("dtype"))
    if element is None:
        refuse(f"dtype {tensor.get('dtype')!r} is not a real number type")
    if tensor.get("layout") != _STRIDED or not isinstance(tensor.get("device"), dict) \
            or tensor["device"].get("type") != "cpu":
        refuse("is not a strided CPU tensor")
    sizes = _ints(tensor.get("sizes"), "sizes", refuse)
    strides = _ints(tensor.get("strides"), "strides", refuse)
    offset = _ints([tensor.get("storage_offset")], "storage offset", refuse)[0]
    if len(sizes) != len(strides):
        refuse("has as many strides as sizes")
    if 0 in sizes:
        return
    extent = offset + 1 + sum((size - 1) * stride for size, stride in zip(sizes, strides))
    if stored % element or extent * element > stored:
        refuse(f"declares {extent:,} elements of {element} bytes, the archive stores {stored:,} bytes")


# ---------------------------------------------------------------------------------- the archive

def _members(path: Path, archive: zipfile.ZipFile) -> tuple[str, dict[str, zipfile.ZipInfo]]:
    """The root folder and the members below it; any name torch.export.save does not write is refused."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ModelFileError(f"{path} holds {len(infos):,} files: not a torch.export program")
    roots = {info.filename.split("/", 1)[0] for info in infos}
    if len(roots) != 1 or not _ROOT.fullmatch(next(iter(roots), "")):
        raise ModelFileError(f"{path} is not a torch.export program (.pt2): its files are not in one folder")
    root = roots.pop()
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename[len(root) + 1:]
        if info.filename.endswith("/") and not name:
            continue
        if name not in MEMBERS and not PAYLOAD.fullmatch(name):
            raise ModelFileError(f"{path}: {_shown(info.filename)} is not a file torch.export.save writes; "
                                 "refused before torch reads it")
        if name in members:
            raise ModelFileError(f"{path}: {info.filename} is stored twice")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1 or info.compress_size != info.file_size:
            raise ModelFileError(f"{path}: {info.filename} is compressed or encrypted; torch.export.save stores "
                                 "files as they are, and spikesmith reads only such archives")
        members[name] = info
    missing = [name for name in _REQUIRED if name not in members]
    if missing:
        raise ModelFileError(f"{path} is not a torch.export program (.pt2): it has no {missing[0]}")
    return root, members


def _read(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: MemoryBudget, limit: int) -> bytes:
    if info.file_size > limit:
        raise ModelFileError(f"{path}: {info.filename} is {info.file_size:,} bytes, more than the "
                             f"{limit:,} spikesmith reads for it")
    budget.take(3 * info.file_size, f"{path}: {info.filename}")       # read, rewritten, torch's copy
    with archive.open(info) as stream:
        data = stream.read(info.file_size + 1)      # the header's size may lie: read no further
    if len(data) != info.file_size:
        raise ModelFileError(f"{path}: {info.filename} does not hold the {info.file_size:,} bytes it declares")
    return data


def _json(path: Path, name: str, data: bytes):
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(f"{path}: {name} is not valid JSON ({type(exc).__name__})") from None


def _check_markers(path: Path, data: dict[str, bytes]) -> None:
    from torch.export.pt2_archive.constants import ARCHIVE_FORMAT_VALUE, ARCHIVE_VERSION_VALUE

    expected = {"archive_format": {ARCHIVE_FORMAT_VALUE.encode()}, "archive_version": {ARCHIVE_VERSION_VALUE.encode()},
                "byteorder": {b"little"}}
    for name, values in expected.items():
        if name in data and data[name] not in values:
            raise ModelFileError(f"{path}: {name} is {_shown(data[name])}, not what this torch writes "
                                 f"({sorted(values)[0].decode()}); re-export the model with torch.export.save")
    if ".data/version" in data and not re.fullmatch(rb"[0-9]{1,4}\n?", data[".data/version"]):
        raise ModelFileError(f"{path}: .data/version is not a version number")


def _check_schema(path: Path, document: dict) -> None:
    from torch._export.serde.schema import SCHEMA_VERSION

    version = document.get("schema_version") if isinstance(document, dict) else None
    if not isinstance(version, dict) or version.get("major") != SCHEMA_VERSION[0]:
        raise ModelFileError(f"{path}: models/model.json is not of the export schema version {SCHEMA_VERSION[0]} "
                             "this torch reads; re-export the model with this torch")


def checked_program_archive(path: str | Path, budget: MemoryBudget | None = None) -> bytes:
    """The bytes of a new ``.pt2`` holding only the checked parts of ``path`` (see the module docstring).

    Raises :class:`ModelFileError` (or :class:`UnsupportedModelError` for an operator spikesmith does not
    read, naming the layer) in one line.
    """
    path, budget = Path(path), budget or MemoryBudget()
    try:
        with zipfile.ZipFile(path) as archive:
            root, members = _members(path, archive)
            data = {name: _read(path, archive, info, budget, MAX_JSON_BYTES if not PAYLOAD.fullmatch(name)
                                else budget.limit) for name, info in members.items()}
    except zipfile.BadZipFile as exc:
        raise ModelFileError(f"{path} is not a readable torch.export program (.pt2): {exc}") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    _check_markers(path, data)
    sizes = {name: len(blob) for name, blob in data.items() if PAYLOAD.fullmatch(name)}
    configs, used = {}, set()
    for name, folder in (("data/weights/model_weights_config.json", "data/weights"),
                         ("data/constants/model_constants_config.json", "data/constants")):
        configs[name] = _json(path, name, data[name])
        used |= _check_payloads(path, name, configs[name], sizes, folder)
        _ProgramCheck(path, name, _schema_fields()).walk(configs[name])
    document = _json(path, "models/model.json", data["models/model.json"])
    _check_schema(path, document)
    _sanitise(document)
    _ProgramCheck(path, "models/model.json", _schema_fields()).walk(document)
    rewritten = {"models/model.json": json.dumps(document).encode(), "data/sample_inputs/model.pt": b"",
                 **{name: json.dumps(configs[name]).encode() for name in configs}}
    return _write(root, data, rewritten, used)


def _write(root: str, data: dict[str, bytes], rewritten: dict[str, bytes], payloads: set[str]) -> bytes:
    """A stored zip under ``root``: the format markers, the rewritten JSON, the payloads the configs use."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as out:
        for name in ("archive_format", "archive_version", "byteorder", ".data/version"):
            if name in data:
                out.writestr(f"{root}/{name}", data[name])
        for name, blob in rewritten.items():
            out.writestr(f"{root}/{name}", blob)
        for name in sorted(payloads):
            out.writestr(f"{root}/{name}", data[name])
    return buffer.getvalue()
