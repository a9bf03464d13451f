"""SandboxPanel: the %%sandbox options as an ipywidgets form, with previews, Run and Stop.

The form is a presenter, like the magic: its values go through the same
make_config() (the validation messages are that function's), the previews come
from the same spec builder and magic-line writer, and Run calls the same
run_config(), in a background thread so that the kernel stays responsive.
Output reaches the panel's Output widget through append_stdout/append_stderr,
never print(), as ipywidgets recommends for threads.
"""

from __future__ import annotations

import html
import json
import threading

import ipywidgets as widgets
from IPython.display import display

from . import session as sessions
from .config import DEFAULT_PREFIX, SandboxConfig, make_config
from .errors import SandboxConfigError, SandboxError
from .options import magic_line
from .records import RunRecord, sha256
from .result import SandboxResult
from .runner import preview_spec, run_config
from .streams import BoundedWriter

# The form's fields, in the order they appear, by run() keyword.
TEXT_FIELDS = ("root", "cwd", "hostname", "timeout", "runsc", "ip", "peer", "dns", "session",
               "memory", "cpus", "pids", "hide")
PLACEHOLDERS = {
    "root": "/", "cwd": "the kernel's current directory", "hostname": "the host's",
    "timeout": "seconds (none)", "runsc": "runsc on PATH", "ip": "e.g. 10.0.0.2",
    "peer": "last octet + 1", "dns": "the host's nameservers (comma-separated)",
    "session": "none: a fresh sandbox (see %sandbox start)",
    "memory": "e.g. 512M (no limit)", "cpus": "e.g. 0.5 (no limit)", "pids": "e.g. 64 (no limit)",
    "hide": "paths that appear empty (comma-separated)",
}
LABELS = {
    "root": "Root", "cwd": "Working dir", "hostname": "Hostname", "timeout": "Timeout",
    "runsc": "runsc", "ip": "IP address", "peer": "Peer", "dns": "DNS", "session": "Session",
    "memory": "Memory", "cpus": "CPUs", "pids": "Processes", "hide": "Hide",
    "env": "Environment", "env_all": "All env", "network": "Network", "prefix": "Prefix",
    "nat": "NAT", "netns": "Own netns",
}
OUTPUT_LIMIT = 100_000   # characters of each stream shown in the panel
STATUS_STYLE = {"ok": "color:#1a7f37", "fail": "color:#cf222e", "info": "color:#57606a"}


class EnvRow(widgets.HBox):
    """One NAME=VALUE row of the environment editor."""

    def __init__(self, name: str = "", value: str = "", on_change=None, on_remove=None):
        self.name = widgets.Text(value=name, placeholder="NAME",
                                 layout=widgets.Layout(width="180px"))
        self.value = widgets.Text(value=value, placeholder="value",
                                  layout=widgets.Layout(width="260px"))
        self.remove = widgets.Button(description="✕", tooltip="remove this variable",
                                     layout=widgets.Layout(width="36px"))
        for field in (self.name, self.value):
            field.observe(lambda _: on_change and on_change(), names="value")
        self.remove.on_click(lambda _: on_remove and on_remove(self))
        super().__init__([self.name, self.value, self.remove])

    @property
    def item(self) -> str | None:
        if not self.name.value and not self.value.value:
            return None
        return f"{self.name.value}={self.value.value}"


class SandboxPanel(widgets.VBox):
    """A form for every %%sandbox option, a script editor, previews, Run and Stop.

    Scripting API: set(**options) with run()'s keywords, `script` (the editor),
    `run_button`, `stop()`, `wait(timeout)`, `result`, `magic_line`, `spec`, `output`.
    """

    def __init__(self, script: str = "", **options) -> None:
        self.result: SandboxResult | None = None
        self.config: SandboxConfig | None = None
        self.error: SandboxConfigError | SandboxError | None = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._updating = False
        self._record_display = None
        self._build_widgets(script)
        super().__init__(self._layout(), layout=widgets.Layout(width="100%"))
        self.add_class("sandbox-magic-panel")
        self.set(**options)
        self.refresh()

    # ------------------------------------------------------------ widgets

    def _build_widgets(self, script: str) -> None:
        self.fields = {name: widgets.Text(placeholder=PLACEHOLDERS[name],
                                          layout=widgets.Layout(width="320px"))
                       for name in TEXT_FIELDS}
        self.fields["root"].value = "/"
        self.env_all = widgets.Checkbox(value=False, indent=False)
        self.network = widgets.Dropdown(options=[("none (loopback only)", "none"),
                                                 ("sandbox (gVisor netstack)", "sandbox"),
                                                 ("host (gVisor hostinet)", "host")],
                                        value="none", layout=widgets.Layout(width="320px"))
        self.prefix = widgets.BoundedIntText(value=DEFAULT_PREFIX, min=1, max=30,
                                             layout=widgets.Layout(width="80px"))
        self.nat = widgets.Checkbox(value=True, indent=False)
        self.netns = widgets.Checkbox(value=True, indent=False)
        self.env_rows = widgets.VBox([])
        self.add_env = widgets.Button(description="+ variable", layout=widgets.Layout(width="110px"))
        self.add_env.on_click(lambda _: self.add_env_row())
        self.messages = {name: widgets.HTML() for name in
                         (*TEXT_FIELDS, "env", "env_all", "network", "nat", "netns", "script")}
        self.script = widgets.Textarea(value=script, placeholder="shell script (#! for another "
                                       "interpreter)", rows=8,
                                       layout=widgets.Layout(width="98%"))
        self.script.add_class("sandbox-magic-script")
        # What the kernel has of the script (the record's script_sha256 will match it):
        # also how one sees that the last keystrokes have reached the kernel.
        self.script_info = widgets.HTML()
        self.script_info.add_class("sandbox-magic-script-info")
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop",
                                          disabled=True)
        self.run_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.request_stop())
        self.status = widgets.HTML(value=self._status_html("info", "ready"))
        self.status.add_class("sandbox-magic-status")
        self.output = widgets.Output(layout=widgets.Layout(border="1px solid #d0d7de",
                                                           min_height="40px", width="98%"))
        self.output.add_class("sandbox-magic-output")
        self.line_preview = widgets.Textarea(rows=2, layout=widgets.Layout(width="98%"))
        self.spec_preview = widgets.HTML()
        for widget in (*self.fields.values(), self.env_all, self.network, self.prefix,
                       self.nat, self.netns, self.script):
            widget.observe(lambda _: self.refresh(), names="value")

    def _row(self, name: str, *controls) -> widgets.HBox:
        label = widgets.Label(LABELS.get(name, name), layout=widgets.Layout(width="100px"))
        return widgets.HBox([label, *controls, self.messages.get(name, widgets.HTML())])

    def _layout(self) -> list:
        sandbox = widgets.VBox([
            self._row("root", self.fields["root"]), self._row("cwd", self.fields["cwd"]),
            self._row("hostname", self.fields["hostname"]),
            self._row("timeout", self.fields["timeout"]),
            self._row("env_all", self.env_all),
            self._row("env", widgets.VBox([self.env_rows, self.add_env])),
            self._row("runsc", self.fields["runsc"]),
            self._row("session", self.fields["session"]),
        ])
        limits = widgets.VBox([self._row(name, self.fields[name])
                               for name in ("memory", "cpus", "pids", "hide")])
        net = widgets.VBox([
            self._row("network", self.network),
            self._row("ip", self.fields["ip"], widgets.Label("/"), self.prefix),
            self._row("peer", self.fields["peer"]), self._row("nat", self.nat),
            self._row("netns", self.netns), self._row("dns", self.fields["dns"]),
        ])
        options = widgets.Tab([sandbox, net, limits])
        options.set_title(0, "Sandbox")
        options.set_title(1, "Network")
        options.set_title(2, "Limits & secrets")
        previews = widgets.Accordion([widgets.VBox([self.line_preview]), self.spec_preview])
        previews.set_title(0, "Equivalent %%sandbox line")
        previews.set_title(1, "OCI config.json")
        previews.selected_index = 0
        return [options, self.script, self.script_info, self.messages["script"],
                widgets.HBox([self.run_button, self.stop_button, self.status]),
                self.output, previews]

    # ------------------------------------------------------------ form <-> config

    def add_env_row(self, name: str = "", value: str = "") -> EnvRow:
        row = EnvRow(name, value, on_change=self.refresh, on_remove=self.remove_env_row)
        self.env_rows.children = (*self.env_rows.children, row)
        self.refresh()
        return row

    def remove_env_row(self, row: EnvRow) -> None:
        self.env_rows.children = tuple(r for r in self.env_rows.children if r is not row)
        self.refresh()

    def set(self, **options) -> "SandboxPanel":
        """Fill the form with run()'s keywords (root, cwd, env, env_all, hostname,
        timeout, runsc, network, ip, peer, netns, nat, dns, script)."""
        unknown = set(options) - {*TEXT_FIELDS, "env", "env_all", "network", "netns", "nat",
                                  "script"}
        if unknown:
            raise TypeError(f"SandboxPanel.set() got unknown options: {', '.join(sorted(unknown))}")
        self._updating = True
        try:
            for name, value in options.items():
                self._set_one(name, value)
        finally:
            self._updating = False
        self.refresh()
        return self

    def _set_one(self, name: str, value) -> None:
        if name == "script":
            self.script.value = value
        elif name == "env":
            items = value.items() if isinstance(value, dict) else (
                item.partition("=")[::2] for item in ([value] if isinstance(value, str) else value))
            self.env_rows.children = ()
            for key, val in items:
                self.add_env_row(key, val)
        elif name == "ip":
            address, _, prefix = (value or "").partition("/")
            self.fields["ip"].value = address
            self.prefix.value = int(prefix) if prefix.isdigit() else DEFAULT_PREFIX
            if value and self.network.value == "none":
                self.network.value = "sandbox"
        elif name in ("dns", "hide"):
            self.fields[name].value = ", ".join([value] if isinstance(value, str) else value or [])
        elif name == "network":
            self.network.value = value or "none"
        elif name in ("env_all", "nat", "netns"):
            getattr(self, name).value = bool(value)
        else:
            self.fields[name].value = "" if value is None else str(value)

    @property
    def session(self) -> str | None:
        """The session the form runs in (None: a fresh sandbox each run)."""
        return self.fields["session"].value.strip() or None

    def options(self) -> dict:
        """The form as run()'s keywords (empty fields: the defaults)."""
        text = {name: self.fields[name].value.strip() or None for name in TEXT_FIELDS}
        ip = text["ip"]
        network = self.network.value
        return dict(
            root=text["root"] or "/", cwd=text["cwd"], hostname=text["hostname"],
            timeout=text["timeout"], runsc=text["runsc"], env_all=self.env_all.value,
            env=[row.item for row in self.env_rows.children if row.item is not None],
            network=None if ip and network == "none" else network,
            ip=f"{ip}/{self.prefix.value}" if ip else None,
            peer=text["peer"] if ip else None, nat=self.nat.value if ip else True,
            netns=self.netns.value,
            dns=[s.strip() for s in (text["dns"] or "").split(",") if s.strip()] if ip else None,
            memory=text["memory"], cpus=text["cpus"], pids=text["pids"],
            hide=[p.strip() for p in (text["hide"] or "").split(",") if p.strip()] or None)

    def refresh(self) -> None:
        """Validate the form with make_config() and update messages, previews and Run."""
        if self._updating:
            return
        for message in self.messages.values():
            message.value = ""
        try:
            self.config = make_config(self.script.value, **self.options())
            if self.session:
                sessions.get(self.session)   # must be running
            self.error = None
        except SandboxConfigError as exc:
            self.config, self.error = None, exc
            target = self.messages.get(exc.field, self.messages["script"])
            target.value = f'<span style="color:#cf222e">{html.escape(str(exc))}</span>'
        self._refresh_previews()
        self._refresh_buttons()

    def _refresh_previews(self) -> None:
        self.script_info.value = f"<small>{html.escape(script_summary(self.script.value))}</small>"
        if self.config is None:
            self.line_preview.value = ""
            self.spec_preview.value = "<i>fix the form to see the spec</i>"
            return
        self.line_preview.value = self.magic_line
        try:
            text = json.dumps(self.spec, indent=2)
        except SandboxError as exc:   # e.g. runsc not installed: the form is still valid
            text = f"(no preview: {exc})"
        self.spec_preview.value = f"<pre style='max-height:300px;overflow:auto'>" \
                                  f"{html.escape(text)}</pre>"

    def _refresh_buttons(self) -> None:
        running = self.running
        self.run_button.disabled = running or self.config is None
        self.stop_button.disabled = not running

    @property
    def magic_line(self) -> str:
        """The %%sandbox line (first line of a cell) that runs what the form says."""
        if self.config and self.session:
            timeout = f" --timeout {self.config.timeout:g}" if self.config.timeout else ""
            return f"%%sandbox --session {self.session}{timeout}"
        return magic_line(self.config) if self.config else ""

    @property
    def spec(self) -> dict:
        """The OCI config.json a run would use (the run's id shown as sbx-XXXXXXXX)."""
        return preview_spec(self.config) if self.config else {}

    # ------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def start(self) -> bool:
        """What Run does: validate again, then run in a background thread.
        Returns False (and runs nothing) if the form is invalid or a run is going."""
        self.refresh()   # Button.click() fires even on a disabled button: check again
        if self.config is None or self.running:
            return False
        config = self.config
        self.result = None
        self._stop.clear()
        # Cleared as state, like the appends that follow. (Output.clear_output() goes
        # through the frontend, which captures it and writes `outputs` back to the
        # kernel later: that write could land after the first lines and erase them.)
        self.output.outputs = ()
        self._set_status("info", "running…")
        self._worker = threading.Thread(target=self._run, args=(config, self.session),
                                        name="sandbox-magic-panel", daemon=True)
        self._worker.start()
        self._refresh_buttons()
        return True

    def _run(self, config: SandboxConfig, session: str | None) -> None:
        # Bounded as in the magic; the whole streams are in result.stdout / stderr.
        stdout = BoundedWriter(self.output.append_stdout, limit=OUTPUT_LIMIT,
                               where="; all of it is in panel.result.stdout")
        stderr = BoundedWriter(self.output.append_stderr, limit=OUTPUT_LIMIT,
                               where="; all of it is in panel.result.stderr")
        try:
            streams = dict(on_stdout=stdout.write, on_stderr=stderr.write, stop=self._stop)
            if session:
                result = sessions.get(session).run(config.script, timeout=config.timeout,
                                                   **streams)
            else:
                result = run_config(config, **streams)
            stdout.close()
            stderr.close()
        except (SandboxError, OSError) as exc:
            self._set_status("fail", f"error: {exc}")
        except Exception as exc:  # shown in the panel; a worker thread has nowhere else
            self._set_status("fail", f"{type(exc).__name__}: {exc}")
        else:
            self.result = result
            style = "ok" if result.ok else "fail"
            self._set_status(style, f"{result.status_text()} in {result.duration:.2f} s")
            self._record(result)
        finally:
            self._worker_done()

    def _record(self, result: SandboxResult) -> None:
        """The run record: in the panel's output, and in the panel's own cell (a
        display that each run updates, so the saved .ipynb keeps the last run's)."""
        record = RunRecord(result)
        self.output.append_display_data(record)
        if self._record_display is not None:
            self._record_display.update(record)

    def _ipython_display_(self) -> None:
        display(self._repr_mimebundle_(), raw=True)
        self._record_display = display(display_id=True)

    def _worker_done(self) -> None:
        self.run_button.disabled = self.config is None
        self.stop_button.disabled = True

    def request_stop(self) -> None:
        """What Stop does: ask the running sandbox to stop (SIGINT, then SIGKILL)."""
        if self.running:
            self._set_status("info", "stopping…")
            self._stop.set()

    def stop(self, timeout: float = 10.0) -> SandboxResult | None:
        """Stop the running sandbox and wait until it and its resources are gone."""
        self.request_stop()
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> SandboxResult | None:
        """Wait for the current run to end; return its result (None if none or still running)."""
        if self._worker is not None:
            self._worker.join(timeout)
        return None if self.running else self.result

    def _set_status(self, style: str, text: str) -> None:
        self.status.value = self._status_html(style, text)

    @staticmethod
    def _status_html(style: str, text: str) -> str:
        return f'<span style="{STATUS_STYLE[style]}">{html.escape(text)}</span>'


def script_summary(script: str) -> str:
    """'2 lines · 28 bytes · sha256 1a2b3c4d5e6f': the script as the kernel has it."""
    lines = script.count("\n") + (1 if script and not script.endswith("\n") else 0)
    size = len(script.encode("utf-8", errors="surrogateescape"))
    return (f"{lines} line{'s' * (lines != 1)} · {size} byte{'s' * (size != 1)} · "
            f"sha256 {sha256(script)[:12]}")
