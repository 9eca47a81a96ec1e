"""SSH side of the integration harness: a private OpenSSH sshd (the target) and a gateway
configured with an SSH listener in front of it.

The sshd runs as root on 127.0.0.1 with its own port, host key and TrustedUserCAKeys (the
gateway's target CA, from `sallyport ca show --target-ca`); it accepts nothing but
certificates, so the only way in is through the gateway. Its stderr (-e) is the auth log.
"""

import os
import pwd
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import Gateway, free_port, run

TARGET_LOGIN = "sp-ops"
OTHER_LOGIN = "sp-other"
SSH_BANNER = "Access to this system is monitored and recorded (integration tests)."

SSH_ROLES = {
    "ops": {"targets": "host1", "logins": TARGET_LOGIN, "max_ttl": "1h", "record_input": "yes",
            "env": "SP_TEST_VAR", "recording": "strict"},
    "fwd": {"targets": "host1", "logins": TARGET_LOGIN, "max_ttl": "1h", "forwarding": "local"},
    "agentfwd": {"targets": "host1", "logins": TARGET_LOGIN, "max_ttl": "1h",
                 "forwarding": "agent"},
    "sshidle": {"targets": "host1", "logins": TARGET_LOGIN, "max_ttl": "1h",
                "idle_timeout": "2s"},
    "sshquiet": {"targets": "host1", "logins": TARGET_LOGIN, "max_ttl": "1h",
                 "record_input": "no"},
}


def ensure_user(name):
    try:
        pwd.getpwnam(name)
    except KeyError:
        run(["useradd", "-m", "-s", "/bin/bash", name])
    # A locked account ('!') is refused by sshd without PAM even with a valid certificate.
    run(["usermod", "-p", "*", name])
    return Path(pwd.getpwnam(name).pw_dir)


class Sshd:
    def __init__(self, directory):
        self.dir = Path(directory)
        self.port = free_port()
        self.cfg = self.dir / "sshd_config"
        self.log = self.dir / "sshd.stderr"
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.ca_file = self.dir / "trusted_user_ca.pub"
        self.proc = None

    def prepare(self, target_ca_line):
        self.dir.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        if not self.host_key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.host_key])
        self.ca_file.write_text(target_ca_line.strip() + "\n")
        self.cfg.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"TrustedUserCAKeys {self.ca_file}",
            "AuthorizedKeysFile none",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "AllowTcpForwarding yes",
            "AllowAgentForwarding yes",
            "PermitTTY yes",
            "AcceptEnv SP_TEST_VAR",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
            "",
        ]))
        for login in (TARGET_LOGIN, OTHER_LOGIN):
            ensure_user(login)

    @property
    def host_pub_line(self):
        return " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])

    def start(self):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.cfg)],
                                     stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
        logf.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited at start:\n{self.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"sshd did not listen:\n{self.log_text()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        # Whatever sessions left running on the target (the test logins exist for these
        # tests only) must not outlive the suite and load the machine.
        for login in (TARGET_LOGIN, OTHER_LOGIN):
            subprocess.run(["pkill", "-KILL", "-u", login], check=False)

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class SshGateway(Gateway):
    """The gateway with an SSH listener, CA keys and a target `host1` (the private sshd)."""

    def __init__(self, directory, binary, pg, sshd):
        super().__init__(directory, binary, pg)
        self.sshd = sshd
        self.ssh_port = free_port()
        self.roles.update({k: dict(v) for k, v in SSH_ROLES.items()})
        self.ssh_ready = False

    def write_config(self):
        super().write_config()
        text = self.cfg.read_text()
        ssh_keys = "\n".join([
            f"ssh_listen = 127.0.0.1:{self.ssh_port}",
            "ssh_host_key = ssh_host_key",
            "ssh_user_ca_key = user_ca.pem",
            "ssh_target_ca_key = target_ca.pem",
            f"ssh_banner = {SSH_BANNER}",
            "ssh_keepalive = 5s",
        ])
        text = text.replace("[sallyport]\n", f"[sallyport]\n{ssh_keys}\n", 1)
        if self.ssh_ready:
            text += "\n".join([
                "", "[target host1]", "kind = ssh",
                f"address = 127.0.0.1:{self.sshd.port}",
                f"host_key = {self.sshd.host_pub_line}", "",
            ])
        self.cfg.write_text(text)

    def prepare_ssh(self):
        """Host keys first (the configuration pins the target's), then the CA keys (`ca init`
        reads the configuration), then the sshd trusting the target CA."""
        self.sshd.dir.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.sshd.host_key])
        self.ssh_ready = True
        self.dir.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.dir / "ssh_host_key"])
        self.prepare()
        self.cli("ca", "init")
        line = self.cli("ca", "show", "--target-ca").stdout
        self.sshd.prepare(line)

    def ssh_cert(self, identity, keydir, ttl=None):
        """A key pair in keydir and its certificate from `cred issue --ssh-key`."""
        keydir = Path(keydir)
        keydir.mkdir(parents=True, exist_ok=True)
        key = keydir / "id_ed25519"
        if not key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
        args = ["cred", "issue", identity, "--ssh-key", f"{key}.pub", "--force"]
        if ttl:
            args += ["--ttl", ttl]
        self.cli(*args)
        return key

    def direct_ssh_base(self, keydir, login=TARGET_LOGIN):
        """OpenSSH client options straight to the target sshd, bypassing the gateway (for
        benchmarks): a key with a certificate signed by the target CA, as the gateway's own.
        ssh-keygen does not read the CA's PKCS#8 PEM, so it gets an OpenSSH-format copy."""
        from cryptography.hazmat.primitives import serialization
        keydir = Path(keydir)
        keydir.mkdir(parents=True, exist_ok=True)
        ca = keydir / "target_ca"
        pem = serialization.load_pem_private_key((self.dir / "target_ca.pem").read_bytes(), None)
        ca.write_bytes(pem.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.OpenSSH,
                                         serialization.NoEncryption()))
        ca.chmod(0o600)
        key = keydir / "id_ed25519"
        if not key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
        run(["ssh-keygen", "-q", "-s", ca, "-I", "integration-direct", "-n", login,
             "-V", "-5m:+1h", f"{key}.pub"])
        opts = ["-p", str(self.sshd.port), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "LogLevel=ERROR", "-i", str(key), "-o", f"CertificateFile={key}-cert.pub",
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]
        return opts, f"{login}@127.0.0.1"

    def ssh_base(self, key=None, login=TARGET_LOGIN, target="host1"):
        """The OpenSSH client options for this gateway (a list, ending with the destination)."""
        opts = ["-p", str(self.ssh_port), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"]
        if key:
            opts += ["-i", str(key), "-o", f"CertificateFile={key}-cert.pub",
                     "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]
        return opts, f"{login}+{target}@127.0.0.1"

    def ssh(self, key, command, login=TARGET_LOGIN, target="host1", extra=(), timeout=60,
            check=False, input=None):
        opts, dest = self.ssh_base(key, login, target)
        return run(["ssh", *opts, *extra, dest, command], timeout=timeout, check=check,
                   input=input)

    def ssh_opts_string(self, key):
        """For `rsync -e` and friends."""
        opts, _ = self.ssh_base(key)
        return "ssh " + " ".join(opts)
