"""The checks a cache directory and its files pass before they are trusted (oci/files.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wasm_shim.oci.files import UnsafeFile, check_private_dir, open_checked

NOBODY = 65534


def test_a_private_directory_passes_and_a_missing_one_is_made_0700(tmp_path: Path) -> None:
    check_private_dir(str(tmp_path))
    made = tmp_path / "a" / "b"
    check_private_dir(str(made), create=True)
    assert made.is_dir() and (made.stat().st_mode & 0o777) == 0o700
    (tmp_path / "readable").mkdir(mode=0o755)
    os.chmod(tmp_path / "readable", 0o755)
    check_private_dir(str(tmp_path / "readable"))  # others may read it, not write it
    with pytest.raises(UnsafeFile, match="has mode 0755"):
        check_private_dir(str(tmp_path / "readable"), mode_mask=0o077)  # a cache of machine code is stricter


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o1777])
def test_a_directory_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    os.chmod(directory, mode)
    with pytest.raises(UnsafeFile, match=f"{directory} has mode {mode & 0o7777:04o} .group and others must not "
                                         "write to it."):
        check_private_dir(str(directory))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    os.chown(directory, NOBODY, NOBODY)
    with pytest.raises(UnsafeFile, match=f"{directory} is owned by uid {NOBODY}, not by root or by us"):
        check_private_dir(str(directory))


def test_a_symlinked_directory_is_refused_not_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "cache").symlink_to(real)
    with pytest.raises(UnsafeFile, match=f"{tmp_path / 'cache'} is a symbolic link .to {real}."):
        check_private_dir(str(tmp_path / "cache"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UnsafeFile, match="is not a directory"):
        check_private_dir(str(tmp_path / "file"))


def test_files_are_opened_without_following_links_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_bytes(b"ok")
    os.chmod(good, 0o600)
    fd = open_checked(str(good))
    assert os.read(fd, 10) == b"ok"
    os.close(fd)
    (tmp_path / "link").symlink_to(good)
    with pytest.raises(UnsafeFile, match="is a symbolic link"):
        open_checked(str(tmp_path / "link"))
    os.chmod(good, 0o666)
    with pytest.raises(UnsafeFile, match="has mode 0666"):
        open_checked(str(good))
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(UnsafeFile, match="is not a regular file"):  # and the open does not hang
        open_checked(str(tmp_path / "fifo"))
    with pytest.raises(FileNotFoundError):
        open_checked(str(tmp_path / "missing"))
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(UnsafeFile, match="link is a symbolic link"):
            open_checked("link", dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
