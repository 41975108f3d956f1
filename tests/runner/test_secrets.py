"""FileSecretStore: reading secret files and masking their values."""

from __future__ import annotations

import threading
from pathlib import Path

from opsconductor.runner.secrets import FileSecretStore


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


def test_read_returns_content_and_masks_it(tmp_path: Path) -> None:
    store = FileSecretStore()
    assert store.read(write(tmp_path, "pw", "hunter22\n")) == "hunter22\n"
    assert store.mask("password is hunter22, ok") == "password is ***, ok"


def test_nothing_registered_leaves_text_alone() -> None:
    assert FileSecretStore().mask("nothing to hide") == "nothing to hide"


def test_short_values_are_not_masked(tmp_path: Path) -> None:
    store = FileSecretStore()
    store.read(write(tmp_path, "a", "ab"))
    store.read(write(tmp_path, "b", "abc"))
    assert store.mask("ab abc") == "ab ***"


def test_each_line_of_a_multi_line_value_is_masked(tmp_path: Path) -> None:
    key = "-----BEGIN KEY-----\nAAAAB3NzaC1yc2EAAAADAQABAAABAQ\nZZZZmore+line/data==\n-----END KEY-----\n"
    store = FileSecretStore()
    store.read(write(tmp_path, "key", key))
    assert store.mask(key) == "***"
    printed = "log: AAAAB3NzaC1yc2EAAAADAQABAAABAQ and ZZZZmore+line/data== leaked"
    assert store.mask(printed) == "log: *** and *** leaked"


def test_value_without_trailing_newline_is_masked(tmp_path: Path) -> None:
    store = FileSecretStore()
    store.read(write(tmp_path, "token", "s3cr3t-token\n"))
    assert store.mask("Authorization: s3cr3t-token") == "Authorization: ***"


def test_longest_value_wins(tmp_path: Path) -> None:
    store = FileSecretStore()
    store.read(write(tmp_path, "short", "secret"))
    store.read(write(tmp_path, "long", "secret-and-more"))
    assert store.mask("x secret-and-more y secret z") == "x *** y *** z"


def test_regex_characters_are_literal(tmp_path: Path) -> None:
    store = FileSecretStore()
    store.read(write(tmp_path, "re", "a.b*c(d)"))
    assert store.mask("a.b*c(d) axbbbcd") == "*** axbbbcd"


def test_read_bytes_registers_text_but_not_binary(tmp_path: Path) -> None:
    store = FileSecretStore()
    assert store.read_bytes(write(tmp_path, "text", b"bytes-secret")) == b"bytes-secret"
    assert store.read_bytes(write(tmp_path, "bin", b"\xff\xfe\x00binary")) == b"\xff\xfe\x00binary"
    assert store.mask("bytes-secret") == "***"
    assert len(store) == 1


def test_register_and_mask_from_many_threads(tmp_path: Path) -> None:
    store = FileSecretStore()
    values = [f"value-{i:03d}" for i in range(64)]

    def worker(value: str) -> None:
        store.register(value)
        assert store.mask(f"<{value}>") == "<***>"

    threads = [threading.Thread(target=worker, args=(v,)) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.mask(" ".join(values)) == " ".join(["***"] * len(values))
