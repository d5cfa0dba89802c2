"""Opening a shard's tar for every reader (training streams, evaluation, ``verify``): plain tar only,
members up to a size limit.

``data_prep`` writes plain (uncompressed) tar, so a compressed shard is refused from its first bytes
instead of being decompressed: a few MB of gzip can expand to many GB. A member whose header
declares more than the limit is refused before any of it is read; a real image sample is a few
hundred kB at most, so the default leaves ample room.
"""
from __future__ import annotations

import tarfile
from typing import IO

MAX_MEMBER_MB = 64  # the one home of the default limit on a shard member

# Magic bytes of the compressions tarfile (and webdataset's "r|*") would decompress silently.
COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))


class ShardFormatError(tarfile.TarError):
    """A shard that is compressed, or holds a member above the limit (one line naming shard and member)."""


def open_tar(f: IO[bytes], shard: str, stream: bool) -> tarfile.TarFile:
    """A :class:`tarfile.TarFile` over the seekable binary file ``f`` of ``shard``: ``stream`` reads it
    once front to back (``r|``), else with seeks (``r:``); never decompressing. Raises
    :class:`ShardFormatError` for a compressed shard."""
    head = f.read(6)
    f.seek(0)
    for magic, name in COMPRESSED:
        if head.startswith(magic):
            raise ShardFormatError(f"shard {shard} is {name}-compressed; shards are plain tar (as data_prep "
                                   f"writes them): rebuild it with python -m data_prep")
    return tarfile.open(fileobj=f, mode="r|" if stream else "r:")


def check_member(member: tarfile.TarInfo, shard: str, max_member_mb: float = MAX_MEMBER_MB) -> None:
    """Raise :class:`ShardFormatError` if ``member`` declares more bytes than ``max_member_mb`` MB
    (checked on its header, before anything of it is read)."""
    if member.size > max_member_mb * 2**20:
        raise ShardFormatError(f"shard {shard}: member {member.name} declares {member.size} bytes, above the "
                               f"{max_member_mb:g} MB a shard member may hold; the shard is damaged or not from "
                               f"data_prep: rebuild it")
