"""Session rules through the SSH gateway: environment requests as the role allows, X11
refused, exit by signal, the role's idle timeout, several channels on one connection."""

import contextlib
import json
import subprocess
import time

from conftest import run, wait_until


def _identity(gw, new_name, role, tmp_path):
    name = new_name(role)
    gw.add_identity(name)
    gw.grant(name, role)
    return name, gw.ssh_cert(name, tmp_path / "keys")


@contextlib.contextmanager
def _control_master(opts, dest, tmp_path):
    """An OpenSSH control master (ssh -N) for the block; yields the options that share it."""
    control = tmp_path / "ctl"
    mux = ["-o", f"ControlPath={control}"]
    master = subprocess.Popen(["ssh", *opts, *mux, "-o", "ControlMaster=yes", "-N", dest],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        wait_until(lambda: control.exists(), 15, what="the control socket")
        yield mux
    finally:
        master.terminate()
        master.wait(timeout=10)


def _events(gw, session_id):
    out = gw.cli("export", session_id, "--format", "json").stdout
    return [json.loads(line) for line in out.splitlines()]


def test_env_passes_only_what_the_role_allows(ssh_gateway, new_name, tmp_path):
    name, key = _identity(ssh_gateway, new_name, "ops", tmp_path)
    env = {"PATH": "/usr/bin:/bin", "SP_TEST_VAR": "allowed-value",
           "SP_OTHER_VAR": "not-passed-value"}
    r = subprocess.run(["ssh", *ssh_gateway.ssh_base(key)[0], "-o", "SendEnv=SP_TEST_VAR",
                        "-o", "SendEnv=SP_OTHER_VAR", ssh_gateway.ssh_base(key)[1],
                        'echo "test=$SP_TEST_VAR other=$SP_OTHER_VAR"'],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "test=allowed-value other="
    events = _events(ssh_gateway, ssh_gateway.session_of(name, ended=True)["id"])
    envs = [e["fields"][1:] for e in events if e["type"] == "env"]
    assert envs == [["SP_TEST_VAR", "allowed-value"]]
    # The refusal is noted by name; the refused value is kept nowhere.
    notes = [e["fields"][0] for e in events if e["type"] == "note"]
    assert any("env SP_OTHER_VAR refused" in n for n in notes), notes
    assert "not-passed-value" not in json.dumps(events)


def test_exec_command_longer_than_record_max_text_is_recorded_whole(ssh_gateway, new_name,
                                                                   tmp_path):
    """A command padded past record_max_text (64k) so that its tail would be cut: the exec
    event keeps it whole, unmarked, because the tail is what runs."""
    name, key = _identity(ssh_gateway, new_name, "ops", tmp_path)
    cmd = ": " + "x" * 70000 + "; echo tail-ran"
    r = ssh_gateway.ssh(key, cmd)
    assert (r.returncode, r.stdout.strip()) == (0, "tail-ran"), r.stderr
    events = _events(ssh_gateway, ssh_gateway.session_of(name, ended=True)["id"])
    execs = [e for e in events if e["type"] == "exec"]
    assert len(execs) == 1 and execs[0]["fields"][1] == cmd
    assert not execs[0].get("flags"), execs[0]


def test_x11_forwarding_is_refused_and_noted(ssh_gateway, new_name, tmp_path):
    """X11 forwarding is never relayed: the client is told, its command still runs, and the
    recording notes the refused request."""
    name, key = _identity(ssh_gateway, new_name, "ops", tmp_path)
    opts, dest = ssh_gateway.ssh_base(key)
    r = subprocess.run(["ssh", *opts, "-X", dest, "echo ran"], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "DISPLAY": "127.0.0.1:99"}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ran"
    assert "X11 forwarding request failed" in r.stderr
    events = _events(ssh_gateway, ssh_gateway.session_of(name, ended=True)["id"])
    notes = [e["fields"][0] for e in events if e["type"] == "note"]
    assert any("x11-req refused" in n for n in notes), notes


def test_exit_by_signal_reaches_the_client_and_the_recording(ssh_gateway, new_name, tmp_path):
    name, key = _identity(ssh_gateway, new_name, "ops", tmp_path)
    r = ssh_gateway.ssh(key, "echo before; kill -TERM $$; echo after")
    assert r.stdout.strip() == "before"
    assert r.returncode == 255  # what OpenSSH's ssh returns for a remote killed by a signal
    events = _events(ssh_gateway, ssh_gateway.session_of(name, ended=True)["id"])
    exits = [e["fields"][1:] for e in events if e["type"] == "exit"]
    assert exits == [["signal", "TERM"]]


def test_idle_session_ends_after_the_roles_idle_timeout(ssh_gateway, new_name, tmp_path):
    """The sshidle role has idle_timeout = 2s: a command that prints nothing for longer is
    ended with the reason idle, and the client is told."""
    name, key = _identity(ssh_gateway, new_name, "sshidle", tmp_path)
    t0 = time.monotonic()
    r = ssh_gateway.ssh(key, "echo started; sleep 30; echo never", timeout=30)
    took = time.monotonic() - t0
    assert "started" in r.stdout and "never" not in r.stdout
    assert r.returncode != 0
    assert took < 10, f"idle session lasted {took:.1f}s"
    sess = ssh_gateway.session_of(name, ended=True)
    assert sess["end_reason"] == "idle"


def test_several_channels_share_one_connection(ssh_gateway, new_name, tmp_path):
    """OpenSSH connection sharing (ControlMaster): one gateway session, one channel per
    command, run at the same time, each with its own output and exit status."""
    name, key = _identity(ssh_gateway, new_name, "ops", tmp_path)
    opts, dest = ssh_gateway.ssh_base(key)
    with _control_master(opts, dest, tmp_path) as mux:
        slow = subprocess.Popen(["ssh", *opts, *mux, dest, "sleep 1; echo slow; exit 3"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        fast = run(["ssh", *opts, *mux, dest, "echo fast; exit 4"], check=False)
        slow_out, _ = slow.communicate(timeout=30)
        assert (fast.stdout.strip(), fast.returncode) == ("fast", 4)
        assert (slow_out.strip(), slow.returncode) == ("slow", 3)
    sessions = [s for s in ssh_gateway.sessions() if s.get("identity") == name]
    assert len(sessions) == 1
    events = _events(ssh_gateway, ssh_gateway.session_of(name, ended=True)["id"])
    execs = {e["fields"][1]: e["fields"][0] for e in events if e["type"] == "exec"}
    assert set(execs) == {"sleep 1; echo slow; exit 3", "echo fast; exit 4"}
    assert len(set(execs.values())) == 2  # two channels


def test_exit_status_after_the_output_ends_reaches_a_client_that_closed(ssh_gateway, new_name,
                                                                         tmp_path):
    """A command that closes its output and exits later: the target sends EOF, then (a second
    later) the exit status. An OpenSSH client whose input is at EOF (-n, or a multiplexed
    channel) closes its channel on that EOF and still waits for the exit status, as it would
    from sshd; the gateway must pass it on, not drop the channel with the client's close."""
    name, key = _identity(ssh_gateway, new_name, "ops", tmp_path)
    opts, dest = ssh_gateway.ssh_base(key)
    cmd = "echo out; exec >&- 2>&-; sleep 1; exit 4"
    r = run(["ssh", *opts, "-n", dest, cmd], check=False)
    assert (r.stdout.strip(), r.returncode) == ("out", 4), r.stderr
    with _control_master(opts, dest, tmp_path) as mux:
        r = run(["ssh", *opts, *mux, dest, cmd], check=False)
        assert (r.stdout.strip(), r.returncode) == ("out", 4), r.stderr
    def ended():
        rows = [s for s in ssh_gateway.sessions() if s.get("identity") == name]
        return rows if len(rows) == 2 and all(s.get("ended_at") for s in rows) else None
    for sess in wait_until(ended, 15, what="both sessions ended"):
        exits = [e["fields"][1:] for e in _events(ssh_gateway, sess["id"]) if e["type"] == "exit"]
        assert exits == [["status", "4"]]
