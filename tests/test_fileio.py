"""cluda_kit.fileio: the kit's one atomic writer (checkpoints, run files, dataset conversion,
caches). A failed or killed write never leaves a partial file under the target name."""
from __future__ import annotations

import os
import stat

import pytest
import torch

from cluda_kit.fileio import atomic_torch_save, atomic_write, atomic_write_bytes, atomic_write_text


def _boom(fh):
    fh.write(b"partial")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("durable", [True, False])
def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path, durable):
    target = tmp_path / "sub" / "out.bin"
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, _boom, durable=durable)
    assert list((tmp_path / "sub").iterdir()) == []  # the folder was created, nothing else
    atomic_write_bytes(target, b"old")
    with pytest.raises(OSError):
        atomic_write(target, _boom, durable=durable)
    assert target.read_bytes() == b"old" and list(target.parent.iterdir()) == [target]


def test_stale_temps_of_a_killed_writer_are_swept_by_the_next_write(tmp_path):
    target = tmp_path / "last.pt"
    stale = [tmp_path / ".last.pt.tmp999999", tmp_path / ".last.pt.tmp1"]
    other = tmp_path / ".other.pt.tmp5"
    for p in stale + [other]:
        p.write_bytes(b"cut")
    atomic_write(target, lambda fh: fh.write(b"new"), sweep=False)
    assert all(p.exists() for p in stale)  # bulk mode does not scan the folder
    atomic_write_text(target, "newer")
    assert not any(p.exists() for p in stale) and other.exists()  # only this file's temps
    assert target.read_text() == "newer"


def test_previous_keeps_the_old_content_under_its_name(tmp_path):
    last, prev = tmp_path / "last.pt", tmp_path / "prev.pt"
    atomic_write_bytes(last, b"one")
    atomic_write(last, lambda fh: fh.write(b"two"), previous=prev)
    assert last.read_bytes() == b"two" and prev.read_bytes() == b"one"
    atomic_write(last, lambda fh: fh.write(b"three"), previous=prev)
    assert last.read_bytes() == b"three" and prev.read_bytes() == b"two"
    with pytest.raises(OSError):  # a failed write changes neither name
        atomic_write(last, _boom, previous=prev)
    assert last.read_bytes() == b"three" and prev.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]


def test_torch_save_round_trips_and_mode_bits(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "iter": 7}
    path = atomic_torch_save(state, tmp_path / "ckpt" / "a.pt")
    back = torch.load(path, weights_only=True)
    assert torch.equal(back["w"], state["w"]) and back["iter"] == 7
    old = os.umask(0o077)
    try:
        text = atomic_write_text(tmp_path / "t.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(text.stat().st_mode) == 0o644  # readable like any other file, whatever the temp's mode
