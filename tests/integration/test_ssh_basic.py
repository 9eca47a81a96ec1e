"""SSH through the gateway: exec with exit status, refusals, the target's view of the
certificate."""

import json
import os
import re
import subprocess

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


def test_login_not_in_role_refused_with_a_clear_message(ssh_gateway, ops):
    name, key = ops
    opts, dest = ssh_gateway.ssh_base(key, login=OTHER_LOGIN)
    opts = ["LogLevel=INFO" if o == "LogLevel=ERROR" else o for o in opts]
    from conftest import run
    r = run(["ssh", *opts, dest, "true"], check=False)  # INFO: the client prints banners
    assert r.returncode == 255
    assert f'no grant for login "{OTHER_LOGIN}" on "host1"' in r.stderr


def test_unsigned_expired_and_other_principal_certs_refused(ssh_gateway, ops, tmp_path):
    name, key = ops
    # A key with no certificate at all.
    bare = tmp_path / "bare"
    import subprocess
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(bare)], check=True)
    opts, dest = ssh_gateway.ssh_base(None)
    from conftest import run
    r = run(["ssh", *opts, "-i", bare, "-o", "IdentitiesOnly=yes", dest, "true"], check=False)
    assert r.returncode == 255 and "Permission denied" in r.stderr
    # A certificate signed by another CA, for the right principal.
    rogue_ca = tmp_path / "rogue_ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(rogue_ca)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-s", str(rogue_ca), "-I", f"{name} cred=aaaaaaaaaaaa",
                    "-n", name, "-V", "-1m:+10m", f"{bare}.pub"], check=True)
    r = run(["ssh", *opts, "-i", bare, "-o", f"CertificateFile={bare}-cert.pub",
             "-o", "IdentitiesOnly=yes", dest, "true"], check=False)
    assert r.returncode == 255 and "Permission denied" in r.stderr
    # The gateway's own user CA, but expired, and then for another principal.
    ca = ssh_gateway.dir / "user_ca.pem"
    ossh_ca = tmp_path / "user_ca_openssh"
    subprocess.run(["cp", str(ca), str(ossh_ca)], check=True)
    for validity, principal in (("-2h:-1h", name), ("-1m:+10m", name + "x")):
        subprocess.run(["ssh-keygen", "-q", "-s", str(ossh_ca), "-I", f"{principal} cred=aaaaaaaaaaaa",
                        "-n", principal, "-V", validity, f"{bare}.pub"], check=False)
        r = run(["ssh", *opts, "-i", bare, "-o", f"CertificateFile={bare}-cert.pub",
                 "-o", "IdentitiesOnly=yes", dest, "true"], check=False)
        assert r.returncode == 255 and "Permission denied" in r.stderr
    audit = "".join(p.read_text() for p in (ssh_gateway.dir / "audit").glob("*.jsonl"))
    assert "certificate refused" in audit or "not a certificate" in audit


def test_banner_shown_and_token_as_password(ssh_gateway, new_name):
    paramiko = pytest.importorskip("paramiko")
    name = new_name("tok")
    ssh_gateway.add_identity(name)
    ssh_gateway.grant(name, "ops")
    token = ssh_gateway.issue(name)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", port=ssh_gateway.ssh_port, username="sp-ops+host1",
                   password=token, look_for_keys=False, allow_agent=False, timeout=10)
    banner = client.get_transport().get_banner()
    assert banner and SSH_BANNER.encode() in banner
    _, out, _ = client.exec_command("id -un; exit 5")
    assert out.read().decode().strip() == "sp-ops"
    assert out.channel.recv_exit_status() == 5
    client.close()
    # A wrong token is refused like any other failure.
    bad = paramiko.SSHClient()
    bad.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    with pytest.raises(paramiko.AuthenticationException):
        bad.connect("127.0.0.1", port=ssh_gateway.ssh_port, username="sp-ops+host1",
                    password=token[:-2] + "xx", look_for_keys=False, allow_agent=False,
                    timeout=10)
    bad.close()


@pytest.mark.parametrize("method", ["password", "keyboard-interactive"])
def test_openssh_client_types_a_token(ssh_gateway, new_name, tmp_path, method):
    """A stock `ssh` with the token typed at its prompt (SSH_ASKPASS stands in for the
    person): as a password, and as the answer to a keyboard-interactive prompt."""
    name = new_name("kbd")
    ssh_gateway.add_identity(name)
    ssh_gateway.grant(name, "ops")
    token = ssh_gateway.issue(name)
    askpass = tmp_path / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\necho '{token}'\n")
    askpass.chmod(0o700)
    env = dict(os.environ, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
               DISPLAY=":0")
    opts, dest = ssh_gateway.ssh_base()
    opts = ["BatchMode=no" if o == "BatchMode=yes" else o for o in opts]
    argv = ["ssh", *opts, "-o", f"PreferredAuthentications={method}",
            "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1", dest,
            "id -un; exit 7"]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, start_new_session=True)
    assert r.returncode == 7, r.stderr
    assert r.stdout.strip() == "sp-ops"
    sess = ssh_gateway.session_of(name, ended=True)
    events = [json.loads(line) for line in
              ssh_gateway.cli("export", sess["id"], "--format", "json").stdout.splitlines()]
    start = next(e for e in events if e["type"] == "session_start")
    fields = dict(zip(start["fields"][::2], start["fields"][1::2]))
    assert fields["auth"] == "token" and fields["user"] == name
