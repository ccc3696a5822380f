"""Files written atomically get the permissions a plain open() would give them."""

import os
import stat

from bayesprune.io import atomic_write_bytes, atomic_write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_match_a_plain_open(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"x")
    written = atomic_write_bytes(tmp_path / "atomic.bin", b"y")
    as_json = atomic_write_json(tmp_path / "a.json", {"a": 1})
    assert _mode(written) == _mode(plain)
    assert _mode(as_json) == _mode(plain)
    assert written.read_bytes() == b"y"
    assert not list(tmp_path.glob(".*.tmp"))
