"""COPY streams through the gateway byte for byte, in both directions."""

import hashlib

import pytest

from conftest import run

TEXT_BYTES = 200 * 1024 * 1024


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_text_copy_file(path, size):
    """Deterministic COPY text data: `id<TAB>payload` lines, no characters COPY would escape."""
    written, i = 0, 0
    with open(path, "wb") as f:
        while written < size:
            lines = []
            for _ in range(4096):
                i += 1
                digest = hashlib.sha256(str(i).encode()).hexdigest()
                lines.append(f"{i}\t{digest}{digest}{digest}\n")
            block = "".join(lines).encode()
            f.write(block)
            written += len(block)
    return i


@pytest.fixture
def scratch(tmp_path):
    """A directory for the large COPY files, emptied afterwards (pytest keeps old tmp dirs)."""
    yield tmp_path
    for f in tmp_path.iterdir():
        f.unlink()


@pytest.fixture
def copy_tables(pg):
    pg.psql("DROP TABLE IF EXISTS copy_text, copy_bin_src, copy_bin_dst; "
            "CREATE TABLE copy_text (id integer, payload text); "
            "CREATE TABLE copy_bin_dst (id integer, payload bytea, at timestamptz, amount numeric); "
            "GRANT SELECT, INSERT ON copy_text, copy_bin_dst TO phi_write")
    yield
    pg.psql("DROP TABLE IF EXISTS copy_text, copy_bin_src, copy_bin_dst")


@pytest.mark.timeout(420)
def test_copy_text_200_mib_each_direction(gateway, pg, copy_tables, new_name, scratch):
    name = new_name()
    token = gateway.identity_with_token(name, "writer")
    source, back = scratch / "in.copy", scratch / "out.copy"
    rows = write_text_copy_file(source, TEXT_BYTES)

    gateway.psql(name, token, "-c", f"\\copy copy_text FROM '{source}'", timeout=300)
    assert pg.scalar("SELECT count(*) FROM copy_text") == rows
    gateway.psql(name, token, "-c",
                 f"\\copy (SELECT id, payload FROM copy_text ORDER BY id) TO '{back}'",
                 timeout=300)
    assert back.stat().st_size == source.stat().st_size
    assert sha256_file(back) == sha256_file(source)


@pytest.mark.timeout(180)
def test_copy_binary_round_trip(gateway, pg, copy_tables, new_name, scratch):
    pg.psql("CREATE TABLE copy_bin_src AS "
            "SELECT i AS id, sha256(i::text::bytea) || '\\x00ff0a0d5c'::bytea AS payload, "
            "timestamptz '2024-01-01 00:00:00+00' + make_interval(secs => i) AS at, "
            "(i * 1.25)::numeric AS amount FROM generate_series(1, 200000) AS i")
    original = scratch / "src.bin"
    with pg.connect() as direct, open(original, "wb") as f:
        with direct.cursor().copy("COPY (SELECT * FROM copy_bin_src ORDER BY id) "
                                  "TO STDOUT (FORMAT binary)") as copy:
            for block in copy:
                f.write(block)

    name = new_name()
    token = gateway.identity_with_token(name, "writer")
    back = scratch / "back.bin"
    with gateway.connect(name, token) as conn:
        with conn.cursor().copy("COPY copy_bin_dst FROM STDIN (FORMAT binary)") as copy, \
                open(original, "rb") as f:
            for block in iter(lambda: f.read(64 * 1024), b""):
                copy.write(block)
        with conn.cursor().copy("COPY (SELECT * FROM copy_bin_dst ORDER BY id) "
                                "TO STDOUT (FORMAT binary)") as copy, open(back, "wb") as f:
            for block in copy:
                f.write(block)
    assert sha256_file(back) == sha256_file(original)
    assert pg.scalar("SELECT count(*) FROM copy_bin_dst") == 200000
