"""The shard parser agrees with Python's tarfile on every format shard writers produce, and refuses damage."""

from __future__ import annotations

import io
import tarfile

import pytest

from vispre.data.tar_members import TarFormatError, iter_tar_members


def archive(fmt: int, compression: str = "", members: list[tuple[str, bytes]] | None = None) -> bytes:
    """A tar with regular files (short, ustar-prefixed and > 255-character names, empty, non-ASCII), a
    directory and a symlink, written by tarfile in ``fmt``."""
    members = members if members is not None else [
        ("a/000001.png", b"\x89PNG" + bytes(range(256)) * 3),
        ("a/000001.cls", b"7"),
        ("a/empty.txt", b""),
        ("p" * 90 + "/" + "q" * 90 + "/000002.jpg", b"jpeg" * 300),  # fits ustar only through the prefix field
        ("long/" + "n" * 300 + ".json", b"{}"),  # needs a pax or GNU long-name header
        ("unicode/é-ü.cls", "3".encode()),
    ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}", format=fmt) as tar:
        directory = tarfile.TarInfo("a")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("a/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "000001.png"
        tar.addfile(link)
    return buffer.getvalue()


def reference(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]  # type: ignore[union-attr]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_members_equal_tarfile(fmt: int, compression: str) -> None:
    if fmt == tarfile.GNU_FORMAT and compression:
        pytest.skip("compression is format-independent: covered with PAX")
    data = archive(fmt, compression)
    members = list(iter_tar_members(io.BytesIO(data)))
    assert members == reference(data)
    assert [name for name, _ in members][3].startswith("p" * 90 + "/") and len(members[4][0]) == 310
    assert members[5] == ("unicode/é-ü.cls", b"3")


def test_ustar_prefix_and_large_member() -> None:
    data = archive(tarfile.USTAR_FORMAT, members=[("d" * 120 + "/x.bin", bytes(range(256)) * 4097)])
    assert list(iter_tar_members(io.BytesIO(data))) == reference(data)


def test_empty_archive_and_eof_at_block_boundary() -> None:
    assert list(iter_tar_members(io.BytesIO(archive(tarfile.PAX_FORMAT, members=[])))) == []
    data = archive(tarfile.PAX_FORMAT, members=[("k.png", b"x" * 700)])
    end = 512 + 1024 + 512  # directory header, file header + 2 data blocks; end-of-archive blocks cut off
    assert list(iter_tar_members(io.BytesIO(data[:end]))) == [("k.png", b"x" * 700)]


@pytest.mark.parametrize("cut", [100, 512 + 300, 512 + 512 + 10])
def test_truncated_stream_raises(cut: int) -> None:
    data = archive(tarfile.PAX_FORMAT, members=[("k.png", b"x" * 700)])
    with pytest.raises(TarFormatError, match="unexpected end of tar data"):
        list(iter_tar_members(io.BytesIO(data[:cut])))


def test_corrupt_header_raises() -> None:
    data = bytearray(archive(tarfile.PAX_FORMAT, members=[("k.png", b"x" * 10)]))
    data[512 + 3] ^= 0xFF  # a byte of the file header's name
    with pytest.raises(TarFormatError, match="bad tar header checksum"):
        list(iter_tar_members(io.BytesIO(bytes(data))))
