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


def test_results_get_the_users_normal_mode_not_0600(tmp_path):
    import stat

    from monai_uda.utils import atomic_json, atomic_torch_save

    old = os.umask(0o022)
    try:
        paths = [atomic_write_text(tmp_path / "r.csv", "x"), atomic_json({"a": 1}, tmp_path / "s.json"),
                 atomic_torch_save({"w": 1}, tmp_path / "m.pt")]
        os.umask(0o027)
        paths.append(atomic_write_text(tmp_path / "group.txt", "x"))
    finally:
        os.umask(old)
    modes = [stat.S_IMODE(os.stat(p).st_mode) for p in paths]
    assert modes == [0o644, 0o644, 0o644, 0o640]


def test_folder_lock_refuses_a_second_writer_and_is_released(tmp_path):
    from monai_uda.utils import FolderLockedError, folder_lock

    with folder_lock(tmp_path / "out"):
        with pytest.raises(FolderLockedError, match=rf"{tmp_path / 'out'} is being written by another monai-uda run "
                                                     rf"\(pid {os.getpid()}\)"):
            with folder_lock(tmp_path / "out"):
                pass
    with folder_lock(tmp_path / "out"):  # released at exit: the next run may write
        pass


def test_folder_lock_of_a_killed_process_is_gone(tmp_path):
    import subprocess
    import sys

    code = ("import os, sys; from monai_uda.utils import folder_lock\n"
            f"cm = folder_lock({str(tmp_path)!r}); cm.__enter__(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True)  # exits holding the lock, without releasing it
    from monai_uda.utils import folder_lock

    with folder_lock(tmp_path):
        pass
