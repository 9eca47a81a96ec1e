"""SSH through the gateway: exec with exit status, refusals, the target's view of the
certificate."""

import re

import pytest

from sshenv import OTHER_LOGIN, SSH_BANNER


@pytest.fixture
def ops(ssh_gateway, new_name, tmp_path):
    name = new_name("ops")
    ssh_gateway.add_identity(name)
    ssh_gateway.grant(name, "ops")
    return name, ssh_gateway.ssh_cert(name, tmp_path / "keys")


def test_exec_prints_and_exits_with_status(ssh_gateway, ops):
    name, key = ops
    r = ssh_gateway.ssh(key, "echo hi; exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout == "hi\n"
    sshd_log = ssh_gateway.sshd.log_text()
    assert re.search(rf"ID sallyport {name} session=[0-9a-f-]+", sshd_log), sshd_log[-3000:]
