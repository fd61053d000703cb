"""Output files and folders are safe (docs: SECURITY.md): nothing spikesmith did not write is removed or
replaced, modes follow the user's umask, and bad options end in one line before any work."""

import json
import os
import shutil
import signal
import stat

import numpy as np
import pytest

from spikesmith.errors import SpikesmithError
from spikesmith.fileio import (MANIFEST, check_output_folder, check_writable_file, replace_outputs,
                               write_atomic)
from spikesmith.gen import emit
from spikesmith.gen.netfile import load_network, save_network
from spikesmith.gen.sizing import plan_core

from conftest import assert_one_line_error, make_network, run_cli, signal_a_waiting_infer


@pytest.fixture(scope="module")
def small_net(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "small.net.npz"
    save_network(make_network(np.random.default_rng(1), [64, 6, 10], 4), path)     # digits-sized
    return path


@pytest.mark.parametrize("command", ["build", "generate"])
def test_the_working_directory_is_never_an_output_folder(tmp_path, small_net, command):
    """``build -o .`` used to delete every file of the current folder after the synthesis."""
    (tmp_path / "thesis.tex").write_text("years of work")
    extra = ["--board", "icebreaker"] if command == "build" else []
    for target in (".", str(tmp_path), "..", os.path.expanduser("~")):
        proc = run_cli(command, str(small_net), *extra, "-o", target, check=False, cwd=tmp_path)
        assert_one_line_error(proc, "will not write into")
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("command", ["build", "generate"])
def test_a_folder_spikesmith_did_not_write_is_refused(tmp_path, small_net, command):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    extra = ["--board", "icebreaker"] if command == "build" else []
    proc = run_cli(command, str(small_net), *extra, "-o", str(folder), check=False)
    assert_one_line_error(proc, "holds files spikesmith did not write")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_generate_twice_replaces_only_its_own_files(tmp_path, small_net):
    out = tmp_path / "core"
    run_cli("generate", str(small_net), "-o", str(out), "-q")
    listed = json.loads((out / MANIFEST).read_text())["files"]
    assert sorted(listed) == ["report.json", "spikesmith_core.v"]
    (out / "notes.txt").write_text("mine")
    run_cli("generate", str(small_net), "-o", str(out), "-q", "--no-skip")
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "report.json").read_text())["skip_silent"] is False


def _staged(tmp_path, files: dict[str, str]):
    staging = tmp_path / "staging"
    staging.mkdir()
    for name, text in files.items():
        (staging / name).write_text(text)
    return staging


def test_replacing_removes_the_previous_run_first_and_keeps_other_files(tmp_path):
    out = tmp_path / "out"
    replace_outputs(_staged(tmp_path, {"a.v": "old", "report.json": "old", "stale.log": "old"}), out)
    (out / "user.txt").write_text("user")
    replace_outputs(_staged(tmp_path, {"a.v": "new", "report.json": "new"}), out)
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "a.v", "report.json", "user.txt"])
    assert (out / "a.v").read_text() == "new" and (out / "user.txt").read_text() == "user"


def test_an_interrupted_replacement_never_mixes_old_and_new(tmp_path, monkeypatch):
    """Interrupted after any number of moves: never a new Verilog beside an old report."""
    for moves_before_interrupt in range(2):
        out = tmp_path / f"out{moves_before_interrupt}"
        replace_outputs(_staged(tmp_path, {"core.v": "old", "report.json": "old"}), out)
        real, calls = os.replace, []

        def interrupted(src, dst, real=real, calls=calls, limit=moves_before_interrupt):
            if str(dst).endswith((".v", "report.json")):
                if len(calls) == limit:
                    raise KeyboardInterrupt
                calls.append(dst)
            return real(src, dst)

        monkeypatch.setattr(os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            replace_outputs(_staged(tmp_path, {"core.v": "new", "report.json": "new"}), out)
        monkeypatch.setattr(os, "replace", real)
        texts = {p.name: p.read_text() for p in out.iterdir() if p.name != MANIFEST}
        assert "old" not in texts.values(), texts
        assert json.loads((out / MANIFEST).read_text())["files"], "the folder is still marked as ours"
        shutil.rmtree(tmp_path / "staging")


def test_a_new_file_follows_the_umask_and_an_existing_file_keeps_its_mode(tmp_path):
    old = os.umask(0o027)
    try:
        new = write_atomic(tmp_path / "new.txt", "x")
        assert stat.S_IMODE(new.stat().st_mode) == 0o640
        kept = tmp_path / "kept.txt"
        kept.write_text("old")
        os.chmod(kept, 0o604)
        write_atomic(kept, "new")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o604 and kept.read_text() == "new"
    finally:
        os.umask(old)


def test_only_regular_files_are_replaced(tmp_path):
    """As root, ``-o /dev/null`` would have replaced the device; a FIFO stands in for it here."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(SpikesmithError, match="not a regular file"):
        write_atomic(fifo, "x")
    with pytest.raises(SpikesmithError, match="not a regular file"):
        check_writable_file(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_an_unwritable_output_is_found_before_the_work(tmp_path, monkeypatch):
    """Root ignores permission bits, so the probe file is what finds a read-only folder."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with pytest.raises(SpikesmithError, match="cannot write .*Read-only file system"):
        check_writable_file(tmp_path / "net.npz")
    with pytest.raises(SpikesmithError, match="cannot write .*Read-only file system"):
        check_output_folder(tmp_path / "new-folder")


def test_convert_checks_its_output_before_the_work(tmp_path):
    proc = run_cli("convert", "missing.pt2", "--calib", "digits", "-o", str(tmp_path / "no" / "net.npz"),
                   check=False)
    assert_one_line_error(proc, "folder", "does not exist")


def test_an_interrupted_generate_leaves_nothing_behind(tmp_path, small_net, monkeypatch):
    """Ctrl-C or SIGTERM (raised as KeyboardInterrupt) during the lint: no staging folder, no output."""
    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(emit, "lint_verilog", interrupted)
    plan = plan_core(load_network(small_net))
    with pytest.raises(KeyboardInterrupt):
        emit.write_core(plan, tmp_path / "core")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigterm_ends_a_command_like_ctrl_c(small_net):
    returncode, stderr = signal_a_waiting_infer(small_net, signal.SIGTERM)
    assert returncode == 143 and stderr.strip() == "spikesmith: terminated"


@pytest.mark.parametrize("args,fragment", [
    (["convert", "m.pt2", "--calib", "digits", "-o", "n.npz", "-T", "-1"], "--timesteps/-T: must be between 1 and 16"),
    (["convert", "m.pt2", "--calib", "digits", "-o", "n.npz", "-T", "1000"], "must be between 1 and 16, not 1000"),
    (["convert", "m.pt2", "--calib", "digits", "-o", "n.npz", "--percentile", "150"], "--percentile: must be between"),
    (["infer", "n.npz", "--sim", "--window", "-3"], "--window: must be between 1 and 255"),
    (["infer", "n.npz", "--sim", "--window", "300"], "--window: must be between 1 and 255"),
    (["infer", "n.npz", "--sim", "--timeout", "-1"], "--timeout: must be between"),
    (["infer", "n.npz", "--sim", "--retries", "-1"], "--retries: must be between 0 and 1000, not -1"),
    (["infer", "n.npz", "--sim", "--retries", "two"], "--retries: must be an integer, not 'two'"),
    (["demo", "--epochs", "-3"], "--epochs: must be between"),
    (["eval"], "the following arguments are required: NET"),
    (["no-such-command"], "invalid choice"),
])
def test_bad_options_end_in_one_line_and_exit_1(args, fragment, tmp_path):
    proc = run_cli(*args, check=False, cwd=tmp_path)
    assert_one_line_error(proc, fragment)
    assert "Traceback" not in proc.stderr and "RuntimeWarning" not in proc.stderr


def test_demo_refuses_a_file_as_its_output_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(run_cli("demo", "-o", str(tmp_path / "file"), "-q", check=False), "it is a file")


def test_generate_refuses_a_core_the_machine_has_no_memory_to_elaborate(tmp_path, small_net, monkeypatch, capsys):
    """It used to run for minutes and die with MemoryError; now one line before the work."""
    from spikesmith import cli, resources

    monkeypatch.setattr(resources, "available_memory", lambda: 200_000_000)
    assert cli.main(["generate", str(small_net), "-o", str(tmp_path / "core"), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs about" in err[0] and "GiB free" in err[0]
    assert not (tmp_path / "core").exists()


# ------------------------------------------------------------------ the manifest is advice, never authority

def _forge_manifest(folder, files):
    (folder / MANIFEST).write_text(json.dumps({"files": files}))


@pytest.mark.parametrize("listing", ["list", "hashes"])
def test_a_forged_manifest_deletes_nothing_spikesmith_did_not_write(tmp_path, listing):
    """A manifest listing the user's files and folders (forged, or copied from elsewhere) removes none of them."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "thesis").mkdir()
    (out / "thesis" / "chapter1.tex").write_text("years of work")
    outside = tmp_path / "id_rsa"
    outside.write_text("secret")
    (out / "link.v").symlink_to(outside)
    names = ["notes.txt", "thesis", "link.v", "../id_rsa"]
    _forge_manifest(out, names if listing == "list" else {name: "0" * 64 for name in names})
    replace_outputs(_staged(tmp_path, {"core.v": "new"}), out)
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / "thesis" / "chapter1.tex").read_text() == "years of work"
    assert (out / "link.v").is_symlink() and outside.read_text() == "secret"
    assert (out / "core.v").read_text() == "new"


def test_a_file_changed_since_spikesmith_wrote_it_is_neither_removed_nor_replaced(tmp_path):
    out = tmp_path / "out"
    replace_outputs(_staged(tmp_path, {"core.v": "ours", "report.json": "ours"}), out)
    (out / "report.json").write_text("the user's notes")
    with pytest.raises(SpikesmithError, match="not the file spikesmith wrote there"):
        replace_outputs(_staged(tmp_path, {"report.json": "new"}), out)
    assert (out / "report.json").read_text() == "the user's notes"
    shutil.rmtree(tmp_path / "staging")
    replace_outputs(_staged(tmp_path, {"core.v": "new"}), out)       # an unchanged output is replaced
    assert (out / "core.v").read_text() == "new" and (out / "report.json").read_text() == "the user's notes"


def test_the_manifest_records_what_was_written(tmp_path):
    import hashlib

    out = tmp_path / "out"
    replace_outputs(_staged(tmp_path, {"core.v": "module m; endmodule\n"}), out)
    recorded = json.loads((out / MANIFEST).read_text())["files"]
    assert recorded == {"core.v": hashlib.sha256(b"module m; endmodule\n").hexdigest()}


# ------------------------------------------------------------------ a full disk

@pytest.mark.parametrize("command", ["generate", "export-nir", "convert", "demo"])
def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, small_net, command):
    """Each command writing into a 4 KiB tmpfs (a user and mount namespace of its own: no root needed) ends in
    one line "no space left on device" and leaves no file there."""
    import shutil
    import subprocess
    import sys

    import torch
    from spikesmith.gen.importer import export_module, save_program

    model = tmp_path / "m.pt2"
    save_program(export_module(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                                   torch.nn.Linear(256, 10)), (1, 8, 8)), model)
    converted = tmp_path / "m.net.npz"
    if command == "export-nir":
        run_cli("convert", str(model), "--calib", "digits", "--calib-range", ":50", "-o", str(converted), "-q")
    full = tmp_path / "full"
    full.mkdir()
    argv = {"generate": ["generate", str(small_net), "-o", f"{full}/out"],
            "export-nir": ["export-nir", str(converted), "-o", f"{full}/net.nir"],
            "convert": ["convert", str(model), "--calib", "digits", "--calib-range", ":50", "-o", f"{full}/m.net.npz"],
            "demo": ["demo", "-o", f"{full}/out", "--models", "mlp", "--epochs", "1", "--sweep", "2"]}[command]
    script = (f"mount -t tmpfs -o size=4k tmpfs {full}{' && mkdir ' + str(full) + '/out' if command == 'demo' else ''} && "
              f"\"$@\"; status=$?; find {full} -type f; exit $status")
    proc = subprocess.run([shutil.which("unshare"), "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh",
                           sys.executable, "-m", "spikesmith.cli", *argv, "-q"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert_one_line_error(proc, "no space left on device")
    assert proc.stdout.strip() == "", f"left behind: {proc.stdout}"


def test_a_claimed_folder_is_claimed_again_by_the_next_run(tmp_path):
    """A sweep's folder: its cache folder and outputs stay listed across runs; an output changed by hand is kept."""
    from spikesmith.fileio import claim_outputs, write_output

    out = tmp_path / "sweep"
    claim_outputs(out, ["builds", "sweep.csv"])
    (out / "builds").mkdir()
    write_output(out, "sweep.csv", "a,b\n")
    claim_outputs(out, ["builds", "sweep.csv"])
    write_output(out, "sweep.csv", "a,b\n1,2\n")
    assert (out / "sweep.csv").read_text() == "a,b\n1,2\n"
    (out / "sweep.csv").write_text("edited")
    with pytest.raises(SpikesmithError, match="not the file spikesmith wrote there"):
        claim_outputs(out, ["builds", "sweep.csv"])
    assert (out / "sweep.csv").read_text() == "edited"
