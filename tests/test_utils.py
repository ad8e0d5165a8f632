import os

import pytest

from monai_uda.utils import atomic_write, atomic_write_text


def test_atomic_write_keeps_old_file_when_the_writer_fails(tmp_path):
    p = tmp_path / "vol.nii.gz"
    atomic_write_text(p, "old")

    def half_then_crash(tmp):
        assert tmp.endswith(".nii.gz")  # writers that pick a format from the name still work
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        atomic_write(p, half_then_crash)
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["vol.nii.gz"]


def test_atomic_write_creates_folders(tmp_path):
    p = atomic_write_text(tmp_path / "a" / "b.txt", "x")
    assert open(p).read() == "x"
