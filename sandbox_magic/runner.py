"""run(): the one place where a sandbox is created, streamed, waited for and torn down.

config (validated) -> spec (pure) -> side effects under one ExitStack -> result.
Every resource is registered for teardown before it is created, and teardown
runs whatever happens: success, failure, timeout, interrupt, runsc failing.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Mapping

from . import ledger, network, streams
from .background import ThreadSet
from .config import SandboxConfig, default_hidden, make_config, sandbox_environment
from .errors import SandboxConfigError, SandboxError
from .result import NetworkInfo, SandboxResult, decode_wait_status, parse_runsc_log
from .runsc import Container, Runsc, locate, oom_kills, precreate_memory_cgroup
from .spec import SCRIPT_PATH, build_spec, script_command, script_file_text, with_args
from .standby import STANDBYS

OutputCallback = Callable[[str], None]

POLL_SECONDS = 0.1       # the longest the main thread blocks: SIGINT is seen within it
READ_SIZE = 1 << 16
INTERRUPT_GRACE = 0.5    # SIGINT to the script, then SIGKILL after this long
DRAIN_SECONDS = 2.0      # how long to collect output still in flight after a stop
ORPHAN_GRACE = 2.0       # runsc exited but something still holds the pipes open: give up


def run(script: str, *, root: str = "/", cwd: str | None = None,
        env: Mapping[str, str] | Iterable[str] | None = None, env_all: bool = False,
        hostname: str | None = None, timeout: float | None = None, runsc: str | None = None,
        network: str | None = None, ip: str | None = None, peer: str | None = None,
        netns: bool = True, nat: bool = True, dns: Iterable[str] | None = None,
        hide: Iterable[str] | None = None, memory: int | str | None = None,
        cpus: float | None = None, pids: int | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        stop: threading.Event | None = None, standby: bool = True) -> SandboxResult:
    """Run `script` in a fresh gVisor sandbox and return how it ended.

    Returns the result whatever the exit status (see SandboxResult.check()).
    Raises SandboxConfigError (a ValueError naming the option) for bad
    arguments, SandboxError when the sandbox itself cannot run, and
    KeyboardInterrupt, after removing the sandbox, when interrupted.
    `on_stdout`/`on_stderr` receive decoded text as it arrives. Setting `stop`
    (from another thread) stops the sandbox as an interrupt would, and the
    result comes back with `stopped=True`. `standby=False` boots a sandbox for
    this cell even if one is waiting, and keeps none for the next (see standby.py).
    """
    config = make_config(script, root=root, cwd=cwd, env=env, env_all=env_all,
                         hostname=hostname, timeout=timeout, runsc=runsc, network=network,
                         ip=ip, peer=peer, netns=netns, nat=nat, dns=dns, hide=hide,
                         memory=memory, cpus=cpus, pids=pids)
    return run_config(config, on_stdout=on_stdout, on_stderr=on_stderr, stop=stop,
                      standby=standby)


def run_config(config: SandboxConfig, *, on_stdout: OutputCallback | None = None,
               on_stderr: OutputCallback | None = None, stop: threading.Event | None = None,
               standby: bool = True) -> SandboxResult:
    binary = locate(config.runsc)
    environment = sandbox_environment(os.environ, config.env, config.env_all)
    rootless = os.geteuid() != 0
    check_privileges(config, rootless)
    state = ledger.state_root()
    started = time.monotonic()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    with disk_errors_named(state):
        return run_prepared(config, binary, environment, rootless, state, started, started_at,
                            on_stdout, on_stderr, stop, standby)


@contextlib.contextmanager
def disk_errors_named(state: str):
    """A full disk under the state root is the user's to fix: say where and how."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise SandboxError(f"no space left under the state root {state} ({exc.strerror}); "
                           f"free space there, or set {ledger.STATE_ENV} to a directory with "
                           "room") from exc


def run_prepared(config, binary, environment, rootless, state, started, started_at,
                 on_stdout, on_stderr, stop, standby) -> SandboxResult:
    key = standby_key(config, binary, environment, rootless)
    if standby:
        warm = STANDBYS.take(key)
    else:
        STANDBYS.discard()
        warm = None
    sandbox = warm or boot(config, binary, environment, state, rootless, waiter=False)
    with sandbox.teardown:
        if warm:
            warm.hand_over(config.script)
        ended = watch(sandbox.container, binary, sandbox.log_file, state, sandbox.container_id,
                      config, started, stop, on_stdout, on_stderr)
        # Read before teardown removes the cgroup: did the memory limit kill it?
        limit_hit = ("memory" if config.memory and ended.signal == signal.SIGKILL
                     and oom_kills(sandbox.container_id) else None)
    if standby:
        STANDBYS.prepare(key, lambda: boot(config, binary, environment, state, rootless,
                                           waiter=True))
    return ended.result(config=config, started=started, started_at=started_at, binary=binary,
                        spec=with_args(sandbox.spec, script_command(config.script)),
                        container_id=sandbox.container_id, network=network_info(sandbox.plan),
                        warm=warm is not None, limit_hit=limit_hit)


@dataclass
class Ended:
    """How a process inside a sandbox ended, with its captured streams."""

    stdout: streams.StreamCapture
    stderr: streams.StreamCapture
    timed_out: bool
    stopped: bool
    exit_code: int | None
    signal: int | None
    outputs: str

    def result(self, *, config: SandboxConfig, started: float, started_at: str,
               binary: Runsc, **fields) -> SandboxResult:
        """The SandboxResult; its output files go when it is garbage-collected."""
        result = SandboxResult(
            exit_code=self.exit_code, signal=self.signal, stdout_output=self.stdout.output(),
            stderr_output=self.stderr.output(), timed_out=self.timed_out, stopped=self.stopped,
            duration=time.monotonic() - started, config=config, started=started_at,
            runsc_version=binary.version, platform=binary.platform, **fields)
        weakref.finalize(result, streams.remove_output_dir, self.outputs)
        return result


def watch(process_owner, binary: Runsc, log_file: str, state: str, output_name: str,
          config: SandboxConfig, started: float, stop: threading.Event | None,
          on_stdout: OutputCallback | None, on_stderr: OutputCallback | None) -> Ended:
    """Follow a started sandbox process (a fresh run's runsc, or a session cell's
    `runsc exec`) to its end: streams to files, deadline, stop, wait status.
    Its output files are removed if this raises."""
    outputs = streams.output_dir(state, output_name)
    try:
        deadline = started + config.timeout if config.timeout else None
        stdout, stderr, timed_out, stopped = follow(process_owner, outputs, deadline, stop,
                                                    on_stdout, on_stderr)
        exit_code, signal_number = wait_status(binary, log_file, process_owner.process,
                                               stderr.text())
    except BaseException:
        streams.remove_output_dir(outputs)
        raise
    return Ended(stdout, stderr, timed_out, stopped, exit_code, signal_number, outputs)


# The standby's init waits for one line on stdin, then becomes the cell's script:
# the script is PID 1 with the same argv, environment and stdin (a pipe at end
# of file) as in a sandbox booted for it, so a cell cannot tell the difference.
# Its variable has a name no environment has: `read` into an exported variable
# would hand the script a changed environment.
WAITER = ["/bin/sh", "-c", "read _sbx_how && exec $_sbx_how " + SCRIPT_PATH]
# A session's init says it is up, then waits for its stdin to close.
KEEP_ALIVE = ["/bin/sh", "-c", "echo ready; read _; exit 0"]


@dataclass
class Booted:
    """A sandbox whose resources all exist and whose runsc is running; `teardown`
    (an ExitStack) removes everything, whatever happens."""

    config: SandboxConfig
    run_dir: ledger.RunDir
    plan: network.NetworkPlan
    container: Container
    spec: dict                      # the spec of a fresh run of `config`
    teardown: contextlib.ExitStack

    @property
    def container_id(self) -> str:
        return self.run_dir.container_id

    @property
    def log_file(self) -> str:
        return self.run_dir.file("runsc.log")

    def cell_file(self, name: str = "cell") -> str:
        return os.path.join(self.run_dir.file("cells"), name)

    def hand_over(self, script: str) -> None:
        """Give a waiting standby its script: it execs it as PID 1."""
        write_script(self.cell_file(), script)
        how = "" if script.startswith("#!") else "/bin/sh"
        stdin = self.container.process.stdin
        stdin.write(f"{how}\n".encode())
        stdin.close()

    def discard(self) -> None:
        """End an unused standby: closing its stdin ends the waiter's `read`, and the
        sandbox exits by itself (faster and gentler than runsc kill); then tear down."""
        process = self.container.process
        if process is not None and process.poll() is None and not process.stdin.closed:
            process.stdin.close()
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        self.teardown.close()


def boot(config: SandboxConfig, binary: Runsc, environment: Mapping[str, str], state: str,
         rootless: bool, waiter: bool = False, init: list[str] | None = None) -> Booted:
    """Create everything a run needs and start runsc: with the script as init
    (a fresh run), with WAITER (a standby), or with `init` (a session)."""
    fresh = not waiter and init is None
    stack = contextlib.ExitStack()
    try:
        run_dir = ledger.create_run(state, binary.path, rootless)
        finish = stack.enter_context(RunFinisher(run_dir, state))
        plan = network.prepare(config, run_dir.container_id, state, run_dir.file("network.json"),
                               lambda: ledger.live_network_plans(state, run_dir.container_id))
        finish.network = plan
        network.apply(plan, state)
        write_etc_files(run_dir, plan)
        spec = spec_for(config, binary, environment, run_dir.path, plan)
        os.mkdir(run_dir.file("cells"), 0o755)
        open(run_dir.file(EMPTY_FILE), "w").close()
        if fresh:
            write_script(os.path.join(run_dir.file("cells"), "cell"), config.script)
        launch = spec if fresh else with_args(spec, init or WAITER)
        with open(run_dir.file("config.json"), "w") as fh:
            json.dump(launch, fh)
        container = Container(binary, state_dir=ledger.runsc_root(state), bundle=run_dir.path,
                              container_id=run_dir.container_id, rootless=rootless)
        stack.callback(deferring_interrupts(container.remove), state, run_dir.path)
        if config.memory is not None:
            precreate_memory_cgroup(run_dir.container_id, config.memory)
        process = container.start(
            run_dir.file("runsc.log"), network=plan.mode, cgroups=config.limited,
            private_proc_sys_net=plan.mode == "sandbox"
            and binary.needs_proc_sys_net_workaround(os.uname().release))
        if fresh:
            process.stdin.close()   # the script's stdin: a pipe at end of file
    except BaseException:
        stack.close()
        raise
    return Booted(config, run_dir, plan, container, spec, stack)


def write_script(path: str, script: str) -> None:
    """The script as a file the sandbox sees at SCRIPT_PATH; executable for `#!` lines."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write(script_file_text(script))


def standby_key(config: SandboxConfig, binary: Runsc, environment: Mapping[str, str],
                rootless: bool) -> tuple:
    """What a standby must share with a cell to serve it: all but the script and the
    timeout (which we apply, not runsc)."""
    options = config.to_dict()
    del options["script"], options["timeout"]
    return (json.dumps(options, sort_keys=True), tuple(sorted(environment.items())),
            binary.path, binary.version, rootless)


def follow(container: Container, outputs: str, deadline: float | None,
           stop: threading.Event | None, on_stdout: OutputCallback | None,
           on_stderr: OutputCallback | None) -> tuple[streams.StreamCapture, streams.StreamCapture, bool, bool]:
    """Stream the sandbox's output until it ends. At the deadline kill it; when
    `stop` is set, or on SIGINT, stop it (SIGINT inside, then SIGKILL). A SIGINT
    is re-raised once the sandbox is gone and its last output collected.
    Returns (stdout, stderr, timed_out, stopped)."""
    process = container.process
    stdout = streams.StreamCapture(os.path.join(outputs, "stdout"), on_stdout)
    stderr = streams.StreamCapture(os.path.join(outputs, "stderr"), on_stderr)
    pipes = {process.stdout: stdout, process.stderr: stderr}
    try:
        timed_out, stopped = pump(process, pipes, deadline, stop, container.stop)
        wait_in_slices(process)
    except KeyboardInterrupt:
        with interrupts_deferred():
            container.stop(grace=INTERRUPT_GRACE)
            drain(process, pipes)
        raise
    finally:
        stdout.close()
        stderr.close()
    return stdout, stderr, timed_out, stopped


class RunFinisher:
    """The end of every run, after the sandbox itself is gone: the network's
    teardown and the removal of the run's ledger.

    Removing a network takes ~50 ms (iptables-nft deletes, veth deletion waits
    for RCU), which the cell does not need to wait for: it runs in a background
    thread, and a later run that wants the same subnet waits for it
    (network.prepare). The thread is not a daemon, so Python's exit waits for it;
    if the process dies first, `cleanup` finds the run in the ledger.
    """

    pending = ThreadSet()

    def __init__(self, run_dir: ledger.RunDir, state: str) -> None:
        self.run_dir = run_dir
        self.state = state
        self.network: network.NetworkPlan | None = None

    def __enter__(self) -> "RunFinisher":
        return self

    def __exit__(self, *exc_info) -> None:
        with interrupts_deferred():
            if self.network is None or not self.network.has_veth:
                ledger.remove_run(self.run_dir)
                return
            ledger.mark_tearing_down(self.run_dir)
            self.pending.start(self.finish, name="sandbox-magic-teardown", daemon=False)

    def finish(self) -> None:
        try:
            network.teardown(self.network, self.state,
                             on_released=lambda: ledger.mark_address_released(self.run_dir))
            ledger.remove_run(self.run_dir)
        except Exception as exc:  # the ledger stays for `cleanup`
            print(f"sandbox-magic: {exc}; `sandbox-magic cleanup` will retry",
                  file=sys.__stderr__)


def wait_for_teardowns(timeout: float = 30.0) -> bool:
    """Wait until every background teardown of this process is done; True if all are."""
    return RunFinisher.pending.join(timeout)


def check_privileges(config: SandboxConfig, rootless: bool) -> None:
    if rootless and config.ip is not None:
        raise SandboxConfigError("ip", "a network namespace with a veth pair needs root "
                                 "(CAP_NET_ADMIN and CAP_SYS_ADMIN)",
                                 "run the kernel as root, or use --network host --no-netns "
                                 "(the host's network), or no network")
    if rootless and config.limited:
        field = "memory" if config.memory is not None else "cpus"
        raise SandboxConfigError(field, "memory and CPU limits need a cgroup, which needs root",
                                 "run the kernel as root, or leave the limit out (--pids "
                                 "works without root)")


def spec_for(config: SandboxConfig, binary: Runsc, environment: Mapping[str, str],
             run_path: str, plan: network.NetworkPlan) -> dict:
    return build_spec(config, environment=environment,
                      script_source=os.path.join(run_path, "cells"),
                      capabilities=binary.capabilities, network_namespace=plan.namespace_path,
                      etc_files=etc_sources(run_path, plan),
                      hidden=hidden_paths(config, run_path),
                      cgroup_name=os.path.basename(run_path))


EMPTY_FILE = "empty"   # in the run dir: bind-mounted over hidden files


def hidden_paths(config: SandboxConfig, run_path: str) -> dict[str, str]:
    """{path inside the sandbox: "dir" or the empty file to mount over it} for the
    default hidden paths and --hide, those that exist under the root."""
    hidden = {}
    for path in (*default_hidden(), *config.hide):
        host_path = os.path.join(config.root, path.lstrip("/"))
        if os.path.isdir(host_path):
            hidden[path] = "dir"
        elif os.path.lexists(host_path):
            hidden[path] = os.path.join(run_path, EMPTY_FILE)
    return hidden


def preview_spec(config: SandboxConfig) -> dict:
    """The spec a run of `config` would use, with `sbx-XXXXXXXX` for the run's id.
    Creates nothing (the panel calls it as the user types)."""
    binary = locate(config.runsc)
    placeholder = ledger.CONTAINER_PREFIX + "X" * 8
    plan = network.plan_network(config, placeholder, default_device=None,
                                host_nameservers=network.host_nameservers())
    run_path = os.path.join(ledger.runs_dir(ledger.state_root(create=False)), placeholder)
    environment = sandbox_environment(os.environ, config.env, config.env_all)
    return spec_for(config, binary, environment, run_path, plan)


def etc_sources(run_path: str, plan: network.NetworkPlan) -> dict[str, str]:
    """Where the run keeps the files bind-mounted over the sandbox's /etc ones."""
    return {destination: os.path.join(run_path, "etc-" + os.path.basename(destination))
            for destination in network.etc_files(plan)} if plan.has_veth else {}


def write_etc_files(run_dir: ledger.RunDir, plan: network.NetworkPlan) -> None:
    """The sandbox's /etc/hosts, hostname and resolv.conf, as files in the run dir."""
    sources = etc_sources(run_dir.path, plan)
    for destination, text in network.etc_files(plan).items() if plan.has_veth else ():
        with open(sources[destination], "w") as fh:
            fh.write(text)


def network_info(plan: network.NetworkPlan) -> NetworkInfo:
    return NetworkInfo(mode=plan.mode, address=plan.address, prefix=plan.prefix,
                       peer=plan.peer, namespace=plan.namespace,
                       nameservers=plan.nameservers, nat=plan.nat,
                       veth=(plan.veth_host, plan.veth_sandbox) if plan.has_veth else None)


def pump(process: subprocess.Popen, streams: dict, deadline: float | None,
         stop: threading.Event | None, stop_sandbox: Callable[[float], None]) -> tuple[bool, bool]:
    """Forward output until both pipes close. Past the deadline, kill the sandbox
    at once; when `stop` is set, stop it gracefully. Blocks at most POLL_SECONDS
    at a time so that a SIGINT is seen promptly. Returns (timed_out, stopped)."""
    timed_out = stopped = False
    exited_at = None
    with selectors.DefaultSelector() as selector:
        for pipe in streams:
            selector.register(pipe, selectors.EVENT_READ, streams[pipe])
        while selector.get_map():
            if process.poll() is not None:
                # The pipes normally close before runsc exits; if an orphan of a
                # crashed runsc keeps them open, stop waiting (teardown kills it).
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > ORPHAN_GRACE:
                    break
            wait = POLL_SECONDS
            if stop is not None and stop.is_set() and not (stopped or timed_out):
                stopped = True
                stop_sandbox(INTERRUPT_GRACE)
                continue
            if deadline is not None and not (timed_out or stopped):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    stop_sandbox(0)
                    continue
                wait = min(wait, remaining)
            for key, _ in selector.select(wait):
                read_into(selector, key)
    return timed_out, stopped


def read_into(selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
    data = os.read(key.fd, READ_SIZE)
    if data:
        key.data.feed(data)
    else:
        key.data.feed(b"", final=True)
        selector.unregister(key.fileobj)


def drain(process: subprocess.Popen, streams: dict) -> None:
    """After a stop: collect what is left in the pipes, for a bounded time."""
    end = time.monotonic() + DRAIN_SECONDS
    with selectors.DefaultSelector() as selector:
        for pipe in streams:
            if not pipe.closed:
                selector.register(pipe, selectors.EVENT_READ, streams[pipe])
        while selector.get_map() and time.monotonic() < end:
            for key, _ in selector.select(POLL_SECONDS):
                read_into(selector, key)


def wait_in_slices(process: subprocess.Popen) -> int:
    while True:
        try:
            return process.wait(timeout=POLL_SECONDS)
        except subprocess.TimeoutExpired:
            continue


def wait_status(binary: Runsc, log_file: str, process: subprocess.Popen,
                stderr_text: str) -> tuple[int | None, int | None]:
    """(exit_code, signal) of the script, or SandboxError if runsc itself failed."""
    try:
        with open(log_file, errors="replace") as fh:
            outcome = parse_runsc_log(fh.read())
    except FileNotFoundError:
        outcome = parse_runsc_log("")
    if outcome.error:
        raise SandboxError(f"runsc {binary.version} could not run the sandbox: {outcome.error}")
    if outcome.wait_status is None:
        tail = stderr_text.strip().splitlines()[-3:]
        raise SandboxError(f"runsc {binary.version} ended with status {process.returncode} "
                           f"without reporting the script's status (runsc crashed?)"
                           + (": " + " / ".join(tail) if tail else ""))
    return decode_wait_status(outcome.wait_status)


@contextlib.contextmanager
def interrupts_deferred():
    """Hold SIGINT back while a teardown step runs; re-raise it afterwards.

    A second Ctrl-C (or Jupyter's interrupt button pressed twice) must not
    leave half a sandbox behind. Only the main thread receives signals.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            raise KeyboardInterrupt


def deferring_interrupts(function: Callable) -> Callable:
    def shielded(*args, **kwargs):
        with interrupts_deferred():
            return function(*args, **kwargs)
    return shielded
