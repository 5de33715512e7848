"""The shared guards: guarded JSON, plain names, the output lock, deletion, overwrite, number checks, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from gpt1cli.checks import check_number
from gpt1cli.errors import Gpt1Error, Interrupted, interrupt_leaves
from gpt1cli.fileio import (TRASH_PREFIX, clean_trash, parse_json, plain_name, read_json, refuse_to_replace,
                            remove_tree)
from gpt1cli.interop.hf import _index_files
from gpt1cli.interop.openai_release import _read_shapes
from gpt1cli.locking import LOCK_NAME, exclusive_output

BOMBS = ["1" * 5000, "[" * 100_000 + "]" * 100_000, '{"a": ' * 50_000 + "1" + "}" * 50_000, "{", "nan-ish"]


@pytest.mark.parametrize("text", BOMBS, ids=["huge-int", "deep-list", "deep-object", "truncated", "garbage"])
def test_parse_json_turns_every_hostile_document_into_one_error(text):
    with pytest.raises(Gpt1Error) as info:
        parse_json(text, "x.json")
    assert "x.json" in str(info.value) and "\n" not in str(info.value)


def test_read_json_strips_a_bom_and_names_the_file(tmp_path):
    path = tmp_path / "m.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": 1}).encode())
    assert read_json(path, "manifest") == {"a": 1}
    path.write_text("[" * 100_000)
    with pytest.raises(Gpt1Error, match=r"manifest .*m\.json.*nested too deeply"):
        read_json(path, "manifest")


@pytest.mark.parametrize("name", ["/etc/passwd", "../x.arrow", "a/b.arrow", "..", ".", "", ".hidden", "a\\b", "a\0b", "a\nb", "a\rb", 7, None])
def test_plain_name_rejects_anything_that_is_not_a_file_name_in_its_folder(name):
    with pytest.raises(Gpt1Error, match="not a plain file name"):
        plain_name(name, "shard", "manifest.json")


def test_plain_name_accepts_ordinary_names():
    assert plain_name("train_00000.arrow", "shard", "manifest.json") == "train_00000.arrow"


def test_weights_index_cannot_point_outside_its_folder(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "../../secret.safetensors"}}))
    with pytest.raises(Gpt1Error, match="not a plain file name"):
        _index_files(index)


def test_release_shapes_file_with_a_json_bomb_is_one_error(tmp_path):
    (tmp_path / "params_shapes.json").write_text("[" * 100_000)
    with pytest.raises(Gpt1Error, match="params_shapes.json"):
        _read_shapes(tmp_path)


def test_remove_tree_leaves_either_the_folder_or_a_hidden_trash_name(tmp_path, monkeypatch):
    folder = tmp_path / "step_00000001"
    folder.mkdir()
    (folder / "checkpoint.json").write_text("{}")
    import shutil

    def killed(path, ignore_errors=False):  # the process dies while deleting
        raise SystemExit("killed")

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(SystemExit):
        remove_tree(folder)
    assert not folder.exists()
    assert [p.name.startswith(TRASH_PREFIX) for p in tmp_path.iterdir()] == [True]
    monkeypatch.undo()
    clean_trash(tmp_path)
    assert list(tmp_path.iterdir()) == []
    remove_tree(tmp_path / "missing")  # nothing to delete is not an error


def test_refuse_to_replace(tmp_path):
    path = tmp_path / "out.json"
    refuse_to_replace(path, overwrite=False)
    path.write_text("{}")
    with pytest.raises(Gpt1Error, match="already exists; pass --overwrite"):
        refuse_to_replace(path, overwrite=False)
    refuse_to_replace(path, overwrite=True)


@pytest.mark.parametrize("value,bounds,message", [
    (float("nan"), {}, "finite"), (float("inf"), {}, "finite"), (-1, {"minimum": 0}, "at least 0"),
    (0.0, {"above": 0}, "greater than 0"), (1.5, {"maximum": 1}, "at most 1"), (1.0, {"below": 1}, "less than 1"),
    (True, {}, "must be a number"), ("3", {}, "must be a number"),
])
def test_check_number_refuses(value, bounds, message):
    with pytest.raises(Gpt1Error, match=message):
        check_number(value, "--x", **bounds)


def test_check_number_passes_good_values():
    assert check_number(0, "--x", minimum=0) == 0
    assert check_number(0.5, "--x", above=0, below=1) == 0.5
    assert check_number(None, "--x", minimum=0) is None


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "run"
    with exclusive_output(out):
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
        code = textwrap.dedent(f"""
            from gpt1cli.locking import exclusive_output
            from gpt1cli.errors import Gpt1Error
            try:
                with exclusive_output({str(out)!r}, "run directory"):
                    print("got it")
            except Gpt1Error as exc:
                print(exc)
        """)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert f"in use by another gpt1 process (PID {os.getpid()})" in result.stdout
    # Released on exit: the next writer gets it.
    with exclusive_output(out):
        pass


def test_the_lock_dies_with_its_process(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from gpt1cli.locking import exclusive_output
        with exclusive_output({str(out)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(Gpt1Error, match=f"PID {holder.pid}"):
        with exclusive_output(out):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with exclusive_output(out):  # no stale lock after a SIGKILL
        pass


def test_lock_on_a_path_that_is_a_file_is_one_error(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(Gpt1Error, match="is not a directory"):
        with exclusive_output(path):
            pass


def test_interrupt_leaves_names_the_state():
    with pytest.raises(Interrupted, match="interrupted: no manifest written"):
        with interrupt_leaves("no manifest written"):
            raise KeyboardInterrupt


def test_main_exits_130_when_typer_swallows_a_keyboard_interrupt(monkeypatch, capsys):
    from gpt1cli.cli import app as app_module

    def interrupted(**kwargs):
        return 130  # what Typer returns for a KeyboardInterrupt without standalone mode

    monkeypatch.setattr(app_module, "app", interrupted)
    with pytest.raises(SystemExit) as info:
        app_module.main(["verify", "x"])
    assert info.value.code == 130
    assert "interrupted" in capsys.readouterr().err


def test_plain_ctrl_c_on_a_command_exits_130():
    # A command interrupted by a real SIGINT with Python's default handler (no handler of ours).
    code = textwrap.dedent("""
        import time, typer
        from gpt1cli.cli import app as a
        app = typer.Typer()
        @app.command()
        def work():
            print("working", flush=True)
            time.sleep(60)
        a.app = app
        a.main([])
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "working"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == "interrupted"
