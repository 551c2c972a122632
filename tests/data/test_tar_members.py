"""The shard parser agrees with Python's tarfile on every format shard writers produce, and refuses damage
(also a cut exactly at a member boundary); the header walk sees the same members without reading them."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from vispre.data.tar_members import TarFormatError, TarHeader, iter_tar_headers, iter_tar_members


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
    assert list(iter_tar_headers(io.BytesIO(data))) == [TarHeader(n, len(d)) for n, d in reference(data)]


def test_ustar_prefix_and_large_member() -> None:
    data = archive(tarfile.USTAR_FORMAT, members=[("d" * 120 + "/x.bin", bytes(range(256)) * 4097)])
    assert list(iter_tar_members(io.BytesIO(data))) == reference(data)


def test_empty_archive_and_cut_at_member_boundary() -> None:
    assert list(iter_tar_members(io.BytesIO(archive(tarfile.PAX_FORMAT, members=[])))) == []
    data = archive(tarfile.PAX_FORMAT, members=[("k.png", b"x" * 700), ("k.cls", b"1")])
    for end in (512 + 1024 + 512, 512 + 1024 + 512 + 1024, 0):  # after k.png; after k.cls (end blocks cut off); empty
        for read in (iter_tar_members, iter_tar_headers):
            with pytest.raises(TarFormatError, match="no end-of-archive block .*exactly at a member boundary"):
                list(read(io.BytesIO(data[:end])))


@pytest.mark.parametrize("cut", [100, 512 + 300, 512 + 512 + 10, 512 + 512 + 512 + 100])
def test_truncated_stream_raises(cut: int, tmp_path: Path) -> None:
    data = archive(tarfile.PAX_FORMAT, members=[("k.png", b"x" * 700)])
    with pytest.raises(TarFormatError, match="unexpected end of tar data"):
        list(iter_tar_members(io.BytesIO(data[:cut])))
    (tmp_path / "cut.tar").write_bytes(data[:cut])  # a file: the header walk seeks over payloads
    with open(tmp_path / "cut.tar", "rb") as fh, pytest.raises(TarFormatError, match="unexpected end of tar data"):
        list(iter_tar_headers(fh))


def test_header_walk_seeks_over_payloads(tmp_path: Path) -> None:
    sizes = (("jpg", 70_000), ("cls", 1))  # payloads over 64 KiB are seeked over, small ones read
    members = [(f"{i:04d}.{ext}", bytes([i]) * (size + i)) for i in range(20) for ext, size in sizes]
    (tmp_path / "s.tar").write_bytes(archive(tarfile.PAX_FORMAT, members=members))

    class CountingReads(io.FileIO):
        read_bytes = 0

        def read(self, size: int = -1) -> bytes:
            data = super().read(size)
            CountingReads.read_bytes += len(data)
            return data

    with CountingReads(tmp_path / "s.tar") as fh:
        headers = list(iter_tar_headers(fh))  # type: ignore[arg-type]
    assert headers == [TarHeader(n, len(d)) for n, d in members]
    assert CountingReads.read_bytes < 512 * (2 * len(members) + 10)  # headers and the small payloads only
    assert sum(len(d) for _, d in members) > 1_400_000


def test_corrupt_header_raises() -> None:
    data = bytearray(archive(tarfile.PAX_FORMAT, members=[("k.png", b"x" * 10)]))
    data[512 + 3] ^= 0xFF  # a byte of the file header's name
    with pytest.raises(TarFormatError, match="bad tar header checksum"):
        list(iter_tar_members(io.BytesIO(bytes(data))))
