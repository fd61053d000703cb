""".pt2 model files, deny by default (SECURITY.md "Model files"): only the members, fields, operators and
symbolic sizes spikesmith allows reach torch; nothing in a file runs, reads another file or bombs memory."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from spikesmith.errors import ModelFileError, SpikesmithError, UnsupportedModelError
from spikesmith.gen import operators
from spikesmith.gen.archive import check_symbolic_expression, checked_program_archive
from spikesmith.gen.importer import _GraphWalk, export_module, import_program, load_program
from spikesmith.resources import MemoryBudget, MemoryBudgetError

from conftest import assert_one_line_error


def _rewrite(src: Path, dst: Path, edit_json=None, rename=None, compress=None, add=None) -> Path:
    """Copy a .pt2, editing model.json (a function of the parsed document), renaming or compressing members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data, name = zin.read(item.filename), item.filename
            if edit_json and name.endswith("models/model.json"):
                document = json.loads(data)
                edit_json(document)
                data = json.dumps(document).encode()
            if rename and name.endswith(rename[0]):
                name = name[:-len(rename[0])] + rename[1]
            kind = zipfile.ZIP_DEFLATED if compress and name.endswith(compress) else zipfile.ZIP_STORED
            zout.writestr(name, data, compress_type=kind)
        for name, data in (add or {}).items():
            zout.writestr(f"{zin.namelist()[0].split('/')[0]}/{name}", data)
    return dst


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "good.pt2"
    torch.export.save(export_module(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), (4,)), path)
    return path


def _nodes(document):
    return document["graph_module"]["graph"]["nodes"]


def _plant_code(marker: Path):
    """An edit that makes the input's first size a Python expression creating ``marker``."""
    def edit(document):
        sizes = document["graph_module"]["graph"]["tensor_values"]["input"]["sizes"]
        sizes[0] = {"as_expr": {"expr_str": f"__import__('pathlib').Path({str(marker)!r}).touch()",
                                "hint": {"as_int": 1}}}
    return edit


# ---------------------------------------------------------------------------------- members

@pytest.mark.parametrize("member", ["models/Model.json", "models/model.JSON", "models/model.json.bak", "models/evil",
                                    "data/weights/Weight_0", "extra/notes.txt", "data/constants/custom_obj_0"])
def test_a_member_torch_export_save_does_not_write_is_refused_by_name(tmp_path, model_file, member):
    """torch reads every file under models/ as a program: a second one, in any case or suffix, would carry code
    past a check of names ending in .json."""
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(model_file) as archive:
        program = json.loads(archive.read(f"{model_file.stem}/models/model.json"))
    _plant_code(marker)(program)
    bad = _rewrite(model_file, tmp_path / "bad.pt2", add={member: json.dumps(program)})
    with pytest.raises(ModelFileError, match="is not a file torch.export.save writes"):
        load_program(bad)
    assert not marker.exists()


def test_a_compressed_member_is_refused_before_it_is_decompressed(tmp_path, model_file):
    """A deflated member can unpack to gigabytes; torch.export.save stores members as they are."""
    bad = _rewrite(model_file, tmp_path / "bad.pt2", compress="weight_0")
    with pytest.raises(ModelFileError, match="compressed"):
        load_program(bad)


def test_a_payload_larger_than_the_budget_is_refused(model_file):
    with pytest.raises(MemoryBudgetError, match="weight_0 would need"):
        checked_program_archive(model_file, MemoryBudget(limit=100))


def test_a_tensor_declaring_more_elements_than_it_stores_is_refused(tmp_path, model_file):
    """torch allocates a zero-byte payload's declared sizes as zeros: 10^12 of them from a 1 KB file."""
    def huge(data):
        config = json.loads(data)
        meta = next(iter(config["config"].values()))["tensor_meta"]
        meta["sizes"] = [{"as_int": 1_000_000}, {"as_int": 1_000_000}]
        meta["strides"] = [{"as_int": 1_000_000}, {"as_int": 1}]
        return json.dumps(config).encode()

    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(model_file) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("model_weights_config.json"):
                data = huge(data)
            if item.filename.endswith("weights/weight_0"):
                data = b""
            zout.writestr(item.filename, data)
    with pytest.raises(ModelFileError, match="declares 1,000,000,000,000 elements"):
        load_program(bad)


# ---------------------------------------------------------------------------------- strings torch evaluates

@pytest.mark.parametrize("text", ["9^9^9^9", "s0**999999", "PowByNatural(9, 999999)", "Float('1e99999999')",
                                  "s0.__class__", "Symbol('s0', positive=__import__('os'))", "Max(" * 30 + "s0" + ", 1)" * 30,
                                  "[s0 for s0 in s1]", "lambda: 0", "1.5 * s0", "s0 / 2", "99999999999999999999 * s0"])
def test_symbolic_sizes_outside_the_grammar_are_refused(text):
    with pytest.raises(ValueError):
        check_symbolic_expression(text)


@pytest.mark.parametrize("text", ["s0", "Symbol('s31', positive=True, integer=True)", "FloorDiv(s0, 2) + 3",
                                  "8*s0", "Max(1, s0) - s1 % 4", "PowByNatural(s0, 2)", "s0 >= 2", "Eq(s0, 4)"])
def test_the_symbolic_sizes_torch_writes_pass(text):
    check_symbolic_expression(text)


def test_a_power_by_xor_in_a_file_is_refused_before_sympy_sees_it(tmp_path, model_file):
    """sympify reads ``^`` as a power: ``9^9^9^9`` would compute for ever."""
    def edit(document):
        sizes = document["graph_module"]["graph"]["tensor_values"]["input"]["sizes"]
        sizes[0] = {"as_expr": {"expr_str": "9^9^9^9", "hint": {"as_int": 1}}}

    with pytest.raises(ModelFileError, match="not plain arithmetic"):
        load_program(_rewrite(model_file, tmp_path / "bad.pt2", edit_json=edit))


def test_guard_code_and_stack_traces_never_reach_torch(tmp_path, model_file):
    """Guards are Python source torch compiles when a program is run as a module; spikesmith drops them."""
    def edit(document):
        document["guards_code"] = ["__import__('os').system('true')"]
        _nodes(document)[0]["metadata"]["stack_trace"] = "anything"

    program = load_program(_rewrite(model_file, tmp_path / "guarded.pt2", edit_json=edit))
    assert program._guards_code == []
    assert all("stack_trace" not in node.meta for node in program.graph.nodes)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["graph_module"].update(secret=1), "field 'secret'"),
    (lambda d: _nodes(d)[0]["inputs"][0]["arg"].update(as_graph={"graph": {}, "name": "g"}), "kind as_graph"),
    (lambda d: d["graph_module"]["signature"]["input_specs"].append({"custom_obj": {"arg": {"name": "c"},
                                                                                    "custom_obj_name": "c"}}),
     "input of kind"),
    (lambda d: d["graph_module"]["graph"]["tensor_values"].update({"a b": {}}), "not an identifier"),
])
def test_json_the_allowlists_do_not_name_is_refused(tmp_path, model_file, edit, message):
    with pytest.raises(ModelFileError, match=message):
        load_program(_rewrite(model_file, tmp_path / "bad.pt2", edit_json=edit))


# ---------------------------------------------------------------------------------- operators

def _from_file_program(tmp_path: Path, secret: Path) -> Path:
    """A program whose weight is ``torch.ones(8)`` (a constant op), retargeted to ``aten.from_file(secret)``."""
    class OnesWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x):
            return nn.functional.linear(x, torch.ones(8).view(2, 4) + self.linear.weight, self.linear.bias)

    source = tmp_path / "ones.pt2"
    torch.export.save(torch.export.export(OnesWeight().eval(), (torch.zeros(1, 4),)), source)

    def edit(document):
        node = next(n for n in _nodes(document) if n["target"] == "torch.ops.aten.ones.default")
        node["target"] = "torch.ops.aten.from_file.default"
        node["inputs"] = [{"name": "filename", "arg": {"as_string": str(secret)}, "kind": 1},
                          {"name": "shared", "arg": {"as_bool": False}, "kind": 1},
                          {"name": "size", "arg": {"as_int": 8}, "kind": 1},
                          {"name": "dtype", "arg": {"as_scalar_type": 7}, "kind": 2}]
    return _rewrite(source, tmp_path / "fromfile.pt2", edit_json=edit)


def test_an_operator_that_reads_a_file_is_refused_by_name(tmp_path):
    """Folding every all-constant op once copied any readable file (an SSH key) into a layer's weights."""
    secret = tmp_path / "id_rsa"
    secret.write_bytes(b"\x00\x00\x80\x3f" * 8)
    bad = _from_file_program(tmp_path, secret)
    with pytest.raises(UnsupportedModelError, match="aten.from_file.default"):
        import_program(load_program(bad))
    proc = subprocess.run([sys.executable, "-m", "spikesmith.cli", "convert", str(bad), "--calib", "digits",
                           "-o", str(tmp_path / "x.net.npz"), "-q"], capture_output=True, text=True, cwd=tmp_path)
    assert_one_line_error(proc, "aten.from_file.default")
    assert not (tmp_path / "x.net.npz").exists()


def test_constants_are_folded_only_by_listed_pure_operators():
    """``torch.ones(2)`` in forward runs on no activation and is not listed: refused, never run; a listed layer
    op on a parameter (``relu(weight)``) is not a pure fold either."""
    class OnesBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x):
            return self.linear(x) + torch.ones(2)

    class RectifiedWeight(OnesBias):
        def forward(self, x):
            return nn.functional.linear(x, torch.relu(self.linear.weight), self.linear.bias)

    with pytest.raises(UnsupportedModelError, match="aten.ones.default"):
        import_program(torch.export.export(OnesBias().eval(), (torch.zeros(1, 4),)))
    with pytest.raises(UnsupportedModelError, match="aten.relu.default.*does not evaluate"):
        import_program(torch.export.export(RectifiedWeight().eval(), (torch.zeros(1, 4),)))


def test_a_folded_constant_is_counted_against_the_budget():
    class TransposedWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(64, 64))

        def forward(self, x):
            return x @ self.weight.t()

    program = torch.export.export(TransposedWeight().eval(), (torch.zeros(1, 64),))
    with pytest.raises(MemoryBudgetError, match="on constants would need 16.0 KiB"):
        _GraphWalk(program, MemoryBudget(limit=1000)).run()


def test_every_operator_the_importer_converts_is_listed_and_no_other():
    walk = _GraphWalk.__new__(_GraphWalk)
    _GraphWalk.__init__(walk, program=None)
    assert {str(target) for target in walk.handlers} == operators.LAYERS


# ---------------------------------------------------------------------------------- nothing else is touched

_AUDIT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from spikesmith.gen.convert import load_model_graph
    from spikesmith.gen.netfile import load_network
    from spikesmith.errors import SpikesmithError

    def read(path):
        return load_network(path) if path.endswith(".npz") else load_model_graph(path)

    good, files = sys.argv[1:4], sys.argv[4:]
    for path in good:
        read(path)                                # every lazy import done before the hook
    allowed = {os.path.realpath(p) for p in sys.argv[1:]} | {"/proc/meminfo"}
    roots = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, *sys.path) if p})
    seen = []

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes)):
            path = os.path.realpath(os.fsdecode(args[0]))
            if path not in allowed and not path.startswith(roots) and not path.startswith("/dev/"):
                seen.append(("open", path))
        elif event.startswith(("subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                               "socket.connect", "ctypes.dlopen")):
            seen.append((event, str(args)[:80]))
    sys.addaudithook(hook)
    for path in files:
        try:
            read(path)
        except SpikesmithError:
            pass
    print(seen)
""")


def _nir_with_an_external_link(tmp_path: Path, good_nir: Path, secret: Path) -> Path:
    """A copy of ``good_nir`` whose first node's weight is an HDF5 external link to a dataset in ``secret``."""
    import shutil

    import h5py
    import numpy as np

    with h5py.File(secret, "w") as f:
        f["data"] = np.ones((4, 4))
    bad = shutil.copy(good_nir, tmp_path / "linked.nir")
    with h5py.File(bad, "a") as f:
        nodes = f["node/nodes"]
        name = next(key for key in nodes if "weight" in nodes[key])
        del nodes[name]["weight"]
        nodes[name]["weight"] = h5py.ExternalLink(str(secret), "/data")
    return Path(bad)


def test_reading_model_and_network_files_opens_no_other_file_and_starts_no_process(tmp_path, model_file,
                                                                                   small_digits_net):
    """Checked with a Python audit hook (it sees Python's opens and process starts; a read by a C library, like
    HDF5 following an external link, is kept out by the readers' refusals, tested with them): loading hostile
    .pt2, .nir and .npz files opens only those files (and the installed packages' own), and starts no process."""
    from conftest import run_cli

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 32)
    good_nir = tmp_path / "good.nir"
    run_cli("export-nir", str(_converted(tmp_path)), "-o", str(good_nir), "-q")
    hostile = [_from_file_program(tmp_path, secret),
               _rewrite(model_file, tmp_path / "code.pt2", edit_json=_plant_code(tmp_path / "pwned")),
               _nir_with_an_external_link(tmp_path, good_nir, tmp_path / "secret.h5")]
    proc = subprocess.run([sys.executable, "-c", _AUDIT, str(model_file), str(good_nir), str(small_digits_net),
                           *map(str, hostile)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
    assert not (tmp_path / "pwned").exists()


def _converted(tmp_path: Path) -> Path:
    """A small converted digits MLP (float parameters kept, so it exports to NIR)."""
    from conftest import run_cli

    model = tmp_path / "mlp.pt2"
    torch.export.save(export_module(nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10)),
                                    (1, 8, 8)), model)
    run_cli("convert", str(model), "--calib", "digits", "--calib-range", ":50", "-o", str(tmp_path / "mlp.net.npz"),
            "-q")
    return tmp_path / "mlp.net.npz"


# ---------------------------------------------------------------------------------- fuzz

def _model_bytes() -> bytes:
    import io
    buffer = io.BytesIO()
    torch.export.save(export_module(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)),
                                    (1, 2, 2)), buffer)
    return buffer.getvalue()


MODEL_BYTES = _model_bytes()
PAYLOADS = ["__import__('os').system('touch {marker}')", "9^9^9^9", "open({marker!r}, 'w')", "s0", "",
            "Symbol('s0', integer=True)", "x" * 5000, "torch.ops.aten.from_file.default", "\x00", "{marker}"]


def _mutated(tmp_path: Path, marker: Path, data) -> Path:
    """The model with hypothesis's edits: renamed members (case, suffix), strings and numbers of its JSON replaced."""
    out = tmp_path / "fuzzed.pt2"
    src = tmp_path / "source.pt2"
    src.write_bytes(MODEL_BYTES)
    renames = data.draw(st.lists(st.tuples(st.integers(0, 20), st.sampled_from(["upper", "suffix", "dir"])),
                                 max_size=2))
    edits = data.draw(st.lists(st.tuples(st.integers(0, 10_000), st.one_of(
        st.sampled_from(PAYLOADS).map(lambda p: p.format(marker=str(marker))), st.integers(-(1 << 70), 1 << 70),
        st.text(max_size=20))), max_size=4))
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        infos = zin.infolist()
        for index, item in enumerate(infos):
            data_bytes, name = zin.read(item.filename), item.filename
            for target, how in renames:
                if target % len(infos) == index:
                    name = {"upper": name.upper(), "suffix": name + ".json", "dir": name.replace("/", "/x/", 1)}[how]
            if item.filename.endswith(".json"):
                data_bytes = _edit_json(data_bytes, edits)
            zout.writestr(name, data_bytes)
    return out


def _edit_json(raw: bytes, edits) -> bytes:
    document = json.loads(raw)
    slots = []
    stack = [document]
    while stack:
        item = stack.pop()
        pairs = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, value in pairs:
            if isinstance(value, (dict, list)):
                stack.append(value)
            else:
                slots.append((item, key))
    for position, value in edits:
        if slots:
            owner, key = slots[position % len(slots)]
            owner[key] = value
    return json.dumps(document).encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_archives_run_nothing_and_raise_only_one_line_errors(tmp_path, data):
    marker = tmp_path / "pwned"
    path = _mutated(tmp_path, marker, data)
    try:
        import_program(load_program(path, MemoryBudget(limit=64 << 20)))
    except SpikesmithError as exc:
        assert "\n" not in str(exc)
    assert not marker.exists()


def test_refusing_a_decompression_bomb_stays_under_a_gigabyte(tmp_path, model_file):
    """A 1 MB archive whose deflated weight unpacks to 1 GiB: refused before reading; peak RSS measured."""
    bomb = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(model_file) as zin, zipfile.ZipFile(bomb, "w") as zout:
        for item in zin.infolist():
            if item.filename.endswith("weights/weight_0"):
                info = zipfile.ZipInfo(item.filename)
                info.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(info, "w", force_zip64=True) as member:
                    chunk = bytes(1 << 24)
                    for _ in range(64):
                        member.write(chunk)
            else:
                zout.writestr(item.filename, zin.read(item.filename))
    assert bomb.stat().st_size < 8 << 20
    script = ("import resource, sys\nfrom spikesmith.gen.importer import load_program\nfrom spikesmith.errors import "
              "SpikesmithError\ntry:\n    load_program(sys.argv[1])\nexcept SpikesmithError as exc:\n    print(exc)\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", script, str(bomb)], capture_output=True, text=True)
    message, peak_kib = proc.stdout.strip().splitlines()
    assert "compressed" in message
    assert int(peak_kib) < 1 << 20
