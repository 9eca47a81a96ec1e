"""Issue 5, the upstream unreachable: a target port with nothing listening (refused at once)
and one that never answers (a listener whose accept queue is full drops every SYN). The client
gets its error in its protocol's own form within the target's connect_timeout, and the gateway
keeps serving everyone else."""

import socket
import time

import pytest

import pgwire
from conftest import free_port, run
from sshenv import TARGET_LOGIN

CONNECT_TIMEOUT_S = 3
MARGIN_S = 2.5  # a shared, loaded machine and the ASan build
# The SSH side checks its timers once a second, and closes a refused client connection after
# a linger of up to 2 s (its last bytes, the reason, go out first); ssh itself needs ~1 s.
SSH_MARGIN_S = 1 + 2 + 1


@pytest.fixture(scope="module")
def black_hole():
    """A loopback port that accepts no connection and refuses none: listen(0), queue filled."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.3)
    probe = socket.socket()
    probe.settimeout(1)
    with pytest.raises(OSError):
        probe.connect(("127.0.0.1", port))  # the queue is full: the SYN goes unanswered
    probe.close()
    yield port
    for s in fillers:
        s.close()
    listener.close()


def extra_config(gw, text):
    gw.write_config()
    with open(gw.cfg, "a") as f:
        f.write(text)
    gw.reload()
    time.sleep(0.5)


def pg_target(gw, name, port):
    return "\n".join([
        "", f"[target {name}]", "kind = postgres", f"address = 127.0.0.1:{port}",
        "database = clinic", "upstream_tls = verify-full", f"upstream_ca = {gw.pg.ca}",
        f"upstream_cert = {gw.pg.client_cert}", f"upstream_key = {gw.pg.client_key}",
        "admin_dsn_file = admin.dsn", f"connect_timeout = {CONNECT_TIMEOUT_S}s", "",
    ])


def ssh_target(gw, name, port):
    return "\n".join([
        "", f"[target {name}]", "kind = ssh", f"address = 127.0.0.1:{port}",
        f"host_key = {gw.sshd.host_pub_line}", f"connect_timeout = {CONNECT_TIMEOUT_S}s", "",
    ])


@pytest.fixture
def pg_dead_targets(gateway, black_hole):
    dead = free_port()
    extra_config(gateway, pg_target(gateway, "deadpg", dead) + pg_target(gateway, "holepg", black_hole)
                 + "\n[role unreach]\ntargets = deadpg, holepg\ndb_roles = phi_read\n"
                   "max_ttl = 1h\n")
    yield gateway
    gateway.write_config()
    gateway.reload()
    time.sleep(0.5)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("target", ["deadpg", "holepg"], ids=["refused", "black-holed"])
def test_pg_target_unreachable_gets_08001_within_connect_timeout(pg_dead_targets, new_name,
                                                                  target):
    gw = pg_dead_targets
    name = new_name()
    token = gw.identity_with_token(name, "unreach")
    bystander = new_name()
    btoken = gw.identity_with_token(bystander)
    with gw.connect(bystander, btoken) as other:
        started = time.monotonic()
        out = pgwire.attempt(gw.port, {"user": name, "database": target}, token, timeout=30)
        took = time.monotonic() - started
        assert out.code == "08001", out
        assert out.message == "sallyport could not reach the target", out
        assert out.error.get("S") == "FATAL", out
        # Refused: at once, not after the timeout. Black-holed: at the timeout.
        limit = CONNECT_TIMEOUT_S - 0.5 if target == "deadpg" else CONNECT_TIMEOUT_S + MARGIN_S
        assert took <= limit, f"the 08001 came after {took:.2f}s"
        if target == "holepg":
            assert took >= CONNECT_TIMEOUT_S - 0.3, f"gave up after {took:.2f}s"
        print(f"{target}: 08001 after {took:.2f}s (connect_timeout {CONNECT_TIMEOUT_S}s)")
        # psql says the same, and the gateway still serves the session already open.
        r = gw.psql(name, token, "-c", "select 1", db=target, check=False, timeout=30)
        assert r.returncode == 2 and "sallyport could not reach the target" in r.stderr, r.stderr
        assert other.execute("select 1").fetchone() == (1,)
    row = gw.session_of(name, ended=True)
    expected = "upstream-unreachable"
    assert row["end_reason"] == expected, row
    assert gw.running


@pytest.fixture
def ssh_dead_targets(ssh_gateway, black_hole):
    gw = ssh_gateway
    dead = free_port()
    extra_config(gw, ssh_target(gw, "deadssh", dead) + ssh_target(gw, "holessh", black_hole)
                 + f"\n[role sshunreach]\ntargets = deadssh, holessh\nlogins = {TARGET_LOGIN}\n"
                   "max_ttl = 1h\n")
    yield gw
    gw.write_config()
    gw.reload()
    time.sleep(0.5)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("target", ["deadssh", "holessh"], ids=["refused", "black-holed"])
def test_ssh_target_unreachable_clear_message_within_connect_timeout(ssh_dead_targets, new_name,
                                                                      tmp_path, target):
    gw = ssh_dead_targets
    name = new_name("ssu")
    gw.add_identity(name)
    gw.grant(name, "sshunreach")
    gw.grant(name, "ops")
    key = gw.ssh_cert(name, tmp_path / "keys")
    opts, dest = gw.ssh_base(key, target=target)
    opts = ["LogLevel=INFO" if o == "LogLevel=ERROR" else o for o in opts]  # shows the banner
    started = time.monotonic()
    r = run(["ssh", *opts, dest, "true"], check=False, timeout=30)
    took = time.monotonic() - started
    assert r.returncode == 255, r
    assert f'cannot open a session on target "{target}": upstream-unreachable' in r.stderr, \
        r.stderr
    assert took <= CONNECT_TIMEOUT_S + SSH_MARGIN_S, f"the refusal came after {took:.2f}s"
    print(f"{target}: ssh exit 255 after {took:.2f}s (connect_timeout {CONNECT_TIMEOUT_S}s)")
    # The gateway keeps serving: the same identity reaches the live target.
    ok = gw.ssh(key, "echo still-served")
    assert ok.returncode == 0 and ok.stdout == "still-served\n", ok
