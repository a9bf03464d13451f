"""--ip networking for real: namespaces, veth, routes, NAT rules, runsc netstack and
hostinet, with both Debian runsc builds. Traffic goes only to addresses the tests
create (DESIGN.md §4): a server bound to the veth's host side, which exists only
while the sandbox runs (IP_FREEBIND lets the server bind to it beforehand)."""

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import settle

from sandbox_magic import SandboxConfigError, SandboxError, ledger, network, run

IP_FREEBIND = 15
REPO = Path(__file__).resolve().parent.parent


class PeerServer(ThreadingHTTPServer):
    """An HTTP server on an address that only exists while a sandbox runs."""

    def server_bind(self):
        self.socket.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        super().server_bind()


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def peer_server():
    """Serve on 10.213.7.3 (the default peer of --ip 10.213.7.2)."""
    server = PeerServer(("10.213.7.3", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address
    server.shutdown()
    server.server_close()


FETCH = ("python3 -c \"import urllib.request as u; "
         "print(u.urlopen('http://{host}:{port}/', timeout=5).read().decode(), end='')\"")


@pytest.mark.parametrize("mode", ["sandbox", "host"])
def test_sandbox_reaches_a_server_on_the_peer(peer_server, runsc_path, mode):
    host, port = peer_server
    result = run(FETCH.format(host=host, port=port), ip="10.213.7.2", network=mode,
                 runsc=runsc_path)
    assert result.ok, result.stderr
    assert result.stdout == "hello 10.213.7.2\n"   # seen from the sandbox's own address
    info = result.network
    assert (info.mode, info.address, info.prefix, info.peer) == (mode, "10.213.7.2", 24,
                                                                 "10.213.7.3")
    assert info.namespace == result.container_id and info.nat
    assert result.spec["linux"]["namespaces"][-1] == {
        "type": "network", "path": f"/run/netns/{result.container_id}"}


def test_etc_files_and_interfaces(runsc_path):
    result = run("cat /etc/hosts; echo --; cat /etc/hostname; echo --; cat /etc/resolv.conf;"
                 "echo --; cat /proc/net/route | tail -n +2 | cut -f1,2,3", ip="10.213.8.2/26",
                 hostname="box", dns=["192.0.2.53", "192.0.2.54"], runsc=runsc_path)
    assert result.ok, result.stderr
    hosts, hostname, resolv, routes = result.stdout.split("--\n")
    assert "127.0.0.1\tlocalhost" in hosts and "10.213.8.2\tbox" in hosts
    assert hostname == "box\n"
    assert resolv == "nameserver 192.0.2.53\nnameserver 192.0.2.54\n"
    assert result.network.nameservers == ("192.0.2.53", "192.0.2.54")
    assert result.network.peer == "10.213.8.3"
    veth = result.network.veth[1]
    # default route via the peer (0300D50A is 10.213.0.3 little-endian hex ... check loosely)
    assert any(line.startswith(f"{veth}\t00000000") for line in routes.splitlines()), routes


def test_default_nameservers_are_the_hosts():
    result = run("cat /etc/resolv.conf", ip="10.213.9.2")
    expected = network.host_nameservers() or ["8.8.8.8"]
    assert result.stdout == "".join(f"nameserver {ns}\n" for ns in expected)


def test_nat_rules_and_forwarding_exist_while_running_and_go_after():
    before = Path(network.IP_FORWARD).read_text()
    seen = {}

    def look(text):
        if "running" in text and not seen:
            seen["rules"] = network.our_iptables_rules()
            seen["forward"] = Path(network.IP_FORWARD).read_text().strip()
            seen["links"] = network.our_links()
            seen["netns"] = network.our_namespaces()

    result = run("echo running; sleep 1", ip="10.213.10.2", on_stdout=look)
    cid = result.container_id
    assert len([r for r in seen["rules"] if f"sandbox-magic {cid}" in r]) == 3
    assert any("MASQUERADE" in r and "-s 10.213.10.2/32" in r for r in seen["rules"])
    assert seen["forward"] == "1"
    assert seen["links"] == [f"sbx{cid[4:]}-h"] and seen["netns"] == [cid]
    settle()
    assert network.our_iptables_rules() == [] and network.our_links() == []
    assert Path(network.IP_FORWARD).read_text() == before


def test_no_nat_adds_no_rules():
    seen = []
    result = run("echo x; sleep 0.5", ip="10.213.11.2", nat=False,
                 on_stdout=lambda text: seen.append(network.our_iptables_rules()))
    assert result.ok and seen[0] == [] and not result.network.nat


def test_host_network_without_namespace():
    result = run("cat /proc/net/dev", network="host", netns=False)
    assert result.ok, result.stderr
    host_links = [line.split(":")[0].strip() for line in
                  Path("/proc/net/dev").read_text().splitlines()[2:]]
    seen = [line.split(":")[0].strip() for line in result.stdout.splitlines()[2:]]
    assert set(host_links) - {"lo"} <= set(seen)
    assert all(ns["type"] != "network" for ns in result.spec["linux"]["namespaces"])


def test_subnet_overlapping_a_host_route_is_refused():
    routed = [n for n, dev in network.host_routes() if n.prefixlen > 0 and
              not dev.startswith("sbx")]
    assert routed, "the host has no non-default route to test against"
    inside = routed[0].network_address + 2
    with pytest.raises(SandboxConfigError, match="overlaps .* routed on the host"):
        run("true", ip=f"{inside}/{routed[0].prefixlen}")


@pytest.mark.parametrize("step", network.SETUP_STEPS)
def test_failure_at_each_setup_step_leaves_nothing(step, monkeypatch):
    forward_before = Path(network.IP_FORWARD).read_text()

    def fail(name):
        if name == step:
            raise RuntimeError(f"injected failure before {name}")

    monkeypatch.setattr(network, "before_step", fail)
    with pytest.raises(RuntimeError, match=f"before {step}"):
        run("true", ip="10.213.12.2")
    settle()
    assert ledger.leftovers() == []
    assert Path(network.IP_FORWARD).read_text() == forward_before


def test_fifty_network_cells_in_a_row_leave_nothing():
    for i in range(50):
        result = run("true", ip="10.213.13.2")
        assert result.ok, (i, result.stderr)
    settle()
    assert ledger.leftovers() == []


def run_in_thread(results, key, *args, **kwargs):
    def target():
        try:
            results[key] = run(*args, **kwargs)
        except Exception as exc:
            results[key] = exc
    thread = threading.Thread(target=target)
    thread.start()
    return thread


def test_two_sandboxes_side_by_side():
    results = {}
    threads = [run_in_thread(results, i, "echo up; sleep 1.5; cat /etc/hosts | tail -1",
                             ip=f"10.213.{20 + i}.2") for i in range(2)]
    for thread in threads:
        thread.join(60)
    for i in range(2):
        assert results[i].ok, results[i]
        assert results[i].stdout.endswith(f"10.213.{20 + i}.2\t{os.uname().nodename}\n")
    assert results[0].duration + results[1].duration > 2.5   # they did overlap in time


def test_same_address_twice_at_once():
    results = {}
    running = threading.Event()
    first = run_in_thread(results, "first", "echo up; sleep 3; echo still here",
                          ip="10.213.30.2", on_stdout=lambda text: running.set())
    assert running.wait(20), results   # the first cell holds its address now
    with pytest.raises(SandboxConfigError, match="10.213.30.2 is in use by another live sandbox"):
        run("true", ip="10.213.30.2")
    with pytest.raises(SandboxConfigError, match="overlaps the subnet 10.213.30.0/24"):
        run("true", ip="10.213.30.9")
    first.join(60)
    assert results["first"].ok and results["first"].stdout == "up\nstill here\n"


def test_same_address_right_after_a_cell_ends():
    first = run("true", ip="10.213.31.2")
    second = run("true", ip="10.213.31.2")     # waits for the first's teardown if needed
    assert first.ok and second.ok


def test_rootless_network_needs_root_message():
    from sandbox_magic.runner import check_privileges
    from sandbox_magic import make_config
    with pytest.raises(SandboxConfigError, match="needs root"):
        check_privileges(make_config("true", ip="10.213.32.2"), rootless=True)
    with pytest.raises(SandboxConfigError, match="--memory: .*need a cgroup, which needs root"):
        check_privileges(make_config("true", memory="1G"), rootless=True)
    check_privileges(make_config("true", pids=10), rootless=True)   # an rlimit: no root needed


OWNER = """
import sys, sandbox_magic
sandbox_magic.run("echo started; sleep 60", ip="10.213.40.2",
                  on_stdout=lambda t: print(t, end="", flush=True))
"""


def test_owner_killed_mid_cell_then_cleanup():
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    assert owner.stdout.readline() == "started\n"
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert any("netns" in item for item in ledger.leftovers())   # the network outlived it
    done = subprocess.run([sys.executable, "-m", "sandbox_magic.cli", "cleanup"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "removed run sbx-" in done.stdout, done.stderr
    assert ledger.leftovers() == []


def test_cleanup_leaves_live_runs_alone():
    results = {}
    running = threading.Event()
    thread = run_in_thread(results, "live", "echo up; sleep 2", ip="10.213.41.2",
                           on_stdout=lambda text: running.set())
    assert running.wait(20), results
    assert ledger.cleanup() == []
    thread.join(60)
    assert results["live"].ok


def test_network_cells_in_a_real_kernel(kernel):
    """pyroute2 inside ipykernel's running event loop (DESIGN.md §3): a --ip cell, twice,
    in a real kernel, reaching a server on the peer."""
    _, client = kernel
    server = PeerServer(("10.213.50.3", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        outputs = []
        for _ in range(2):
            reply = client.execute_interactive(
                "%%sandbox --ip 10.213.50.2 --result r\n" + FETCH.format(host="10.213.50.3",
                                                                         port=port),
                timeout=60, output_hook=lambda m: outputs.append(m))
            assert reply["content"]["status"] == "ok", reply["content"]
        texts = [m["content"]["text"] for m in outputs if m["msg_type"] == "stream"]
        assert texts.count("hello 10.213.50.2\n") == 2, texts
        reply = client.execute_interactive(
            "import sandbox_magic; assert r.network.address == '10.213.50.2'; "
            "assert sandbox_magic.wait_for_teardowns()", timeout=60)
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        server.shutdown()
        server.server_close()


def test_network_notebook_through_nbclient(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from sandbox_magic.notebooks import execute_notebook
    cells = [
        "%load_ext sandbox_magic",
        "%%sandbox --ip 10.213.52.2 --hostname nbhost --result r\ncat /etc/hosts",
        "%%sandbox --ip 10.213.52.2 --network host --out again\ncat /etc/hostname",
        "assert r.ok and r.network.address == '10.213.52.2', r\n"
        "assert 'nbhost' in r.stdout and again.strip() == __import__('socket').gethostname()\n"
        "import sandbox_magic; assert sandbox_magic.wait_for_teardowns()\nprint('checked')",
    ]
    notebook = new_notebook(cells=[new_code_cell(source) for source in cells])
    path = tmp_path / "net.ipynb"
    nbformat.write(notebook, path)
    executed = execute_notebook(path)
    assert executed.cells[-1].outputs[0]["text"] == "checked\n"


def start_owner(address: str) -> subprocess.Popen:
    """Another process (as another kernel would be) running a network sandbox."""
    code = OWNER.replace("10.213.40.2", address)
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert owner.stdout.readline() == "started\n"
    return owner


def test_same_address_from_another_process_and_its_interrupt():
    owner = start_owner("10.213.43.2")
    try:
        with pytest.raises(SandboxConfigError, match="in use by another live sandbox"):
            run("true", ip="10.213.43.2")
        assert run("true", ip="10.213.44.2").ok          # another subnet runs side by side
    finally:
        owner.send_signal(signal.SIGINT)                   # Ctrl-C in that "kernel"
        owner.wait(30)
    assert "KeyboardInterrupt" in owner.stderr.read()
    settle()
    assert ledger.leftovers() == []


def test_loading_the_extension_cleans_up_dead_owners(ipython_shell, capsys):
    owner = start_owner("10.213.45.2")
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert ledger.leftovers()
    import sandbox_magic
    sandbox_magic.load_ipython_extension(ipython_shell)
    assert "removed leftovers of dead kernels: run sbx-" in capsys.readouterr().out
    assert ledger.leftovers() == []


def test_percent_sandbox_cleanup(ipython_shell, capsys):
    owner = start_owner("10.213.46.2")
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    ipython_shell.run_line_magic("sandbox", "cleanup")
    assert "removed: run sbx-" in capsys.readouterr().out
    assert ledger.leftovers() == []
    ipython_shell.run_line_magic("sandbox", "cleanup --all")
    assert "nothing to clean up" in capsys.readouterr().out


def test_cleanup_all_removes_tagged_orphans_only():
    """Resources tagged as ours whose run directory is gone (e.g. the state root was
    wiped) go with `cleanup --all`; an untagged rule of the host stays."""
    cid = "sbx-0rphan00"
    plan = network.NetworkPlan(mode="sandbox", container_id=cid, address="10.213.47.2",
                               prefix=24, peer="10.213.47.3", namespace=cid,
                               veth_host="sbx0rphan00-h", veth_sandbox="sbx0rphan00-s",
                               nat=True, nat_device="lo", hostname="x")
    foreign = ["-t", "filter", "-A", "FORWARD", "-i", "sbx-not-ours", "-m", "comment",
               "--comment", "somebody else", "-j", "ACCEPT"]
    network.off_loop(lambda: os.close(network.create_namespace(plan)))
    network.off_loop(lambda: network.with_iproute(lambda ipr: ipr.link(
        "add", ifname=plan.veth_host, kind="veth", peer={"ifname": "sbx0rphan00-x"})))
    network.run_iptables_restore(network.iptables_batch(network.nat_rules(plan), "-A"))
    subprocess.run(["iptables", *foreign], check=True)
    try:
        found = ledger.leftovers()
        assert f"netns {cid}" in found and "link sbx0rphan00-h" in found
        assert ledger.cleanup() == []          # no run dir, no dead owner: not touched
        removed = ledger.cleanup(everything=True)
        assert f"netns {cid}" in removed and any("iptables" in item for item in removed)
        assert ledger.leftovers() == []
        assert "somebody else" in subprocess.run(["iptables-save"], capture_output=True,
                                                 text=True).stdout
    finally:
        foreign[2] = "-D"
        subprocess.run(["iptables", *foreign], capture_output=True)


@pytest.mark.parametrize("ending", ["exit", "signal", "timeout", "interrupt"])
def test_network_teardown_after_every_ending(ending):
    script = {"exit": "exit 3", "signal": "kill -KILL $$", "timeout": "sleep 30",
              "interrupt": "echo started; sleep 30"}[ending]
    if ending == "interrupt":
        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            run(script, ip="10.213.48.2")
    else:
        result = run(script, ip="10.213.48.2", timeout=1 if ending == "timeout" else None)
        assert not result.ok
    settle()
    assert ledger.leftovers() == []
