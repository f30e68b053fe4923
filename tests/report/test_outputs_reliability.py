"""Reports, exports, configuration and the /metrics server against hostile and boundary input
("Reliability, round two", items 4, 9, 11, 14, 18, 19, 22 and their siblings).

Every export format gets every user-supplied field filled with text that is live in some
format (Markdown, HTML, spreadsheet formulas, control characters, JSON-breaking code points), and
each format is read back by what its readers do: Markdown rendered by markdown-it, HTML parsed,
CSV and FOCUS parsed as a spreadsheet would see the first character, JSON by a strict parser.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import html.parser
import io
import json
import math
import os
import socket
import threading
import urllib.request
from pathlib import Path

import pytest
from conftest import profiler_env, run_cli, start_daemon

from profiler.config import ConfigError, load_config
from profiler.ledger.store import Ledger, Rollup
from profiler.report.model import ReportError, parse_month
from profiler.report.monthly import build_report, to_focus
from profiler.report.render import render

UTC = dt.timezone.utc
NOV = dt.datetime(2026, 11, 1, tzinfo=UTC).timestamp()
NOW = NOV + 40 * 86400  # December 11th, 2026: November is complete

# What users supply, live in at least one format each.
HOSTILE = {
    "markdown": "![px](http://evil.example/p.png) [click](javascript:alert(1)) **bold**",
    "md_lead": "# heading\n- item\n1. first `code` _em_ ~~del~~ {x} www.evil.example",
    "html": "\"'><img src=x onerror=alert(1)><script>alert(2)</script>&amp;",
    "formula": '=HYPERLINK("http://evil.example","x")',
    "plus": "+1+cmd|' /C calc'!A0",
    "minus": "-2+3",
    "at": "@SUM(1+1)",
    "tab": "\tx",
    "cr": "\rx",
    "control": "red\x1b[31m\x07bell\x00nul\x7f\x9bcsi",
    "wide_formula": "\uff1dSUM(1)",  # FULLWIDTH EQUALS SIGN, a formula in some spreadsheets
}
FIELDS = ("id", "name", "project", "user", "framework", "host", "gpu_model")
SPREADSHEET_TRIGGERS = tuple("=+-@\t\r\n\uff1d\uff0b\uff0d\uff20")


def display(text: str) -> str:
    """What a display format (Markdown, HTML, terminal) shows for ``text``: control characters
    (C0, C1, DEL) and lone surrogates are unreadable, newlines and tabs become spaces."""
    out = []
    for ch in text:
        if ch in "\t\n\r":
            out.append(" ")
        elif ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or 0xD800 <= ord(ch) < 0xE000:
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)


def hostile_ledger(path: Path, field: str) -> Ledger:
    """Two runs with work in November 2026, every value of ``field`` hostile (one per kind)."""
    ledger = Ledger(path)
    runs, devices, rollups = [], [], []
    for i, (kind, text) in enumerate(HOSTILE.items()):
        row = dict(id=f"r{i}-{kind}", name=f"n{i}", project=f"p{i}", user=f"u{i}",
                   framework="pytorch", host="node1", status="finished", started_at=NOV + 3600,
                   simulated=False, currency="USD",
                   meta={"budgets": [{"amount": 1.0, "scope": "run", "source": "track",
                                      "on_exceed": "stop", "warn_at": 0.8}]})  # fmt: skip
        model = "A100"
        if field == "gpu_model":
            model = text
        else:
            row[field] = text
        runs.append(row)
        devices.append((row["id"], f"GPU-{i}", model, 1.0, 1.0))
        rollups.append(Rollup(row["id"], NOV + 86400 * (i + 1), gpu_energy_j=3.6e6,
                              cpu_energy_j=0.0, gpu_seconds=3600.0, steps=10, samples=100,
                              cost_gpu_time=1.0 + i, cost_energy=0.0, co2_g=1.0,
                              waste_cost=0.0))  # fmt: skip
    ledger.write(runs, devices, rollups, [])
    with ledger.db:  # every run stopped for its budget: the reports' Budgets sections list them
        ledger.db.executemany(
            "INSERT INTO budget_events (run_id, at, event, reason, scope, source, spent, budget)"
            " VALUES (?, ?, 'stop', 'budget', 'run', 'track', 1.0, 1.0)",
            [(r["id"], NOV + 7200) for r in runs],
        )  # fmt: skip
    return ledger


def markdown_html(md: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(md)


class _Html(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs += attrs

    def handle_data(self, data):
        self.text.append(data)


def parse_html(page: str) -> _Html:
    parser = _Html()
    parser.feed(page)
    parser.close()
    return parser


MD_LIVE_TAGS = ("<img", "<a ", "<strong", "<em", "<h1", "<h2>", "<li", "<ol", "<ul", "<code",
                "<s>", "<del", "<script", "<br", "<p>#")  # fmt: skip


def check_markdown(md: str, values: list[str]) -> None:
    rendered = markdown_html(md)
    # the report's own structure only: headings of its sections, tables, no user-made markup
    user_part = rendered.split("<h2>Top runs by cost</h2>", 1)[-1]
    for tag in MD_LIVE_TAGS:
        assert tag not in user_part.replace("<h2>Daily cost by project</h2>", ""), (tag, md)
    text = html.unescape(rendered)
    for value in values:  # (a table cell's outer spaces are not its content)
        assert display(value).strip() in text, (value, rendered)
    # no bare URL for a GFM autolink: every ':' and "www." of user text is escaped
    assert "://" not in md and "www." not in md, md


def check_html(page: str, values: list[str]) -> None:
    parsed = parse_html(page)
    allowed = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "div", "p", "b",
               "span", "br", "table", "tr", "th", "td", "svg", "line", "text", "rect", "i",
               "footer"}  # fmt: skip
    assert parsed.tags <= allowed, parsed.tags - allowed
    assert not [a for a, _ in parsed.attrs if a.startswith("on") or a in ("src", "href")]
    text = "".join(parsed.text)
    for value in values:
        assert display(value) in text, value
    assert not any(ord(c) < 0x20 and c not in "\t\n\r" for c in page)
    page.encode("utf-8")  # no lone surrogate


def check_spreadsheet(rows: list[dict[str, str]], columns: list[str], values: list[str]) -> None:
    seen = set()
    for row in rows:
        for column in columns:
            cell = row[column] or ""
            assert not cell.startswith(SPREADSHEET_TRIGGERS), (column, cell)
            seen.add(cell[1:] if cell.startswith("'") else cell)
    for value in values:
        assert value in seen, value  # exact, after the one apostrophe OWASP asks for


def check_json(text: str, values: list[str]) -> None:
    text.encode("utf-8")  # a lone surrogate cannot be written as UTF-8
    body = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                found.append(k)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str):
            found.append(node)

    walk(body)
    for value in values:
        assert value in found, value


REPORT_FORMATS = ("md", "html", "csv", "json", "focus")
CSV_TEXT_COLUMNS = ["id", "name", "project", "user", "framework", "host", "gpu_model"]
FOCUS_TEXT_COLUMNS = ["ResourceId", "ResourceName", "SubAccountId", "SubAccountName", "x_RunId",
                      "x_Project", "x_User", "x_Framework"]  # fmt: skip


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("fmt", REPORT_FORMATS)
def test_every_report_format_escapes_every_user_field(tmp_path, fmt, field):
    ledger = hostile_ledger(tmp_path / "ledger.sqlite", field)
    try:
        groups = ["project", "user", "framework", "host", "gpu_model"]
        report = build_report(ledger, "2026-11", groups, budget=100.0, now=NOW,
                              project_budgets={HOSTILE["markdown"]: 5.0})  # fmt: skip
        text = to_focus(ledger, "2026-11", now=NOW) if fmt == "focus" else render(report, fmt)
    finally:
        ledger.close()
    values = list(HOSTILE.values())
    if fmt == "md":
        check_markdown(text, values)
    elif fmt == "html":
        check_html(text, values)
    elif fmt == "json":
        check_json(text, values)
    elif fmt == "csv":
        check_spreadsheet(list(csv.DictReader(io.StringIO(text))), CSV_TEXT_COLUMNS, values)
    else:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        columns = [c for c in FOCUS_TEXT_COLUMNS if field != "gpu_model" or c == "x_RunId"]
        if field in ("host", "gpu_model"):  # these two are in the Tags JSON only
            for row in rows:
                assert row["x_RunId"].startswith("r")
            tags = [json.loads(r["Tags"]) for r in rows]
            key = f"mlprofiler/{field}"
            assert {t[key] for t in tags} == set(values)
        else:
            check_spreadsheet(rows, columns, values)


def test_markdown_report_example_from_the_issue_is_plain_text(tmp_path):
    ledger = hostile_ledger(tmp_path / "ledger.sqlite", "name")
    try:
        md = render(build_report(ledger, "2026-11", now=NOW), "md")
    finally:
        ledger.close()
    rendered = markdown_html(md)
    assert "<img" not in rendered and "<a " not in rendered and "<strong>bold" not in rendered
    assert "![px](http://evil.example/p.png)" in html.unescape(rendered)


def test_focus_writer_cleans_lone_surrogates_and_neutralises_formulas():
    from profiler.report.focus import FocusUsage, write_focus

    u = FocusUsage(run_id="=1+1", run_name="x\ud800", project="@p", user="-u", framework="+f",
                   host="h", gpu_model="g", day=dt.date(2026, 11, 2), currency="USD",
                   cost_gpu_time=1.0, cost_energy=0.0, gpu_hours=1.0, kwh=1.0, co2_kg=None,
                   pricing_profile="=flat", simulated=False)  # fmt: skip
    out = io.StringIO(newline="")
    write_focus([u], dt.date(2026, 11, 1), out)
    out.getvalue().encode("utf-8")
    row = next(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert row["ResourceId"] == "'=1+1" and row["x_RunId"] == "'=1+1"
    assert row["ResourceName"] == "x\ufffd" and row["SubAccountId"] == "'@p"
    assert row["x_User"] == "'-u" and row["x_Framework"] == "'+f"
    assert row["x_PricingProfile"] == "'=flat"
    assert json.loads(row["Tags"])["user"] == "-u"  # inside JSON nothing is a formula


@pytest.mark.parametrize("fmt", ("md", "json", "table"))
def test_compare_escapes_every_format(tmp_path, fmt):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    names = [HOSTILE["markdown"], HOSTILE["control"] + "[/bold][link=http://x]y"]
    common = dict(project="", user="", host="h", status="finished", ended_at=NOV + 60,
                  simulated=False, currency="USD", meta={}, steps=10, samples=100,
                  gpu_energy_j=50.0, cost=1.0)  # fmt: skip
    rows = [
        dict(common, id=f"c{i}", name=name, framework=name, started_at=NOV + i)
        for i, name in enumerate(names)
    ]
    ledger.write(rows, [("c0", "GPU-0", "A100\x1b[2J", 1.0, 1.0)], [], [])
    ledger.close()
    out = run_cli(profiler_env(tmp_path), "compare", "c0", "c1", "--format", fmt)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout
    if fmt == "json":
        body = json.loads(out.stdout)
        assert [r["name"] for r in body] == names  # JSON keeps the text exactly (escaped)
    elif fmt == "md":
        rendered = markdown_html(out.stdout)
        assert "<img" not in rendered and "<a " not in rendered and "<strong>" not in rendered
        assert display(HOSTILE["markdown"]) in html.unescape(rendered)
    else:
        assert display(names[1]) in out.stdout  # rich markup in a name is text, not style


# ---- item 9 and the configuration sweep ------------------------------------------------------

BOUNDS = {  # key: (lowest accepted, highest accepted, just below, just above)
    "sample_interval_s": (0.01, 60, 0.0099, 60.01),
    "flush_interval_s": (0.1, 5, 0.099, 5.01),
    "finished_run_ttl_s": (0, 604800, -0.001, 604800.5),
    "cpu_tdp_w": (1, 5000, 0.99, 5000.5),
    "metrics_port": (0, 65535, -1, 65536),
    "max_runs": (10, 100000, 9, 100001),
}
ENV = {"sample_interval_s": "PROFILER_SAMPLE_INTERVAL", "flush_interval_s":
       "PROFILER_FLUSH_INTERVAL", "finished_run_ttl_s": "PROFILER_FINISHED_RUN_TTL",
       "cpu_tdp_w": "PROFILER_CPU_TDP", "metrics_port": "PROFILER_METRICS_PORT",
       "max_runs": "PROFILER_MAX_RUNS"}  # fmt: skip


@pytest.mark.parametrize("key", sorted(BOUNDS))
def test_documented_bounds_are_accepted_and_just_outside_refused(tmp_path, key):
    lo, hi, below, above = BOUNDS[key]
    for value in (lo, hi):
        for text in (f"{key} = {value}\n", f"[daemon]\n{key} = {value}\n"):
            (tmp_path / "profiler.toml").write_text(text)
            assert getattr(load_config(env={"PROFILER_HOME": str(tmp_path)}), key) == value
        (tmp_path / "profiler.toml").unlink()
        env = {"PROFILER_HOME": str(tmp_path), ENV[key]: str(value)}
        assert getattr(load_config(env=env), key) == value
    for value in (below, above):
        env = {"PROFILER_HOME": str(tmp_path), ENV[key]: str(value)}
        with pytest.raises(ConfigError) as e:
            load_config(env=env)
        assert f"got '{value}'" in str(e.value) and ENV[key] in str(e.value)
    for text in ("nan", "inf", "-inf"):
        for env_value, toml in ((text, f"{key} = {text}\n"),):
            with pytest.raises(ConfigError):
                load_config(env={"PROFILER_HOME": str(tmp_path), ENV[key]: env_value})
            (tmp_path / "profiler.toml").write_text(toml)
            with pytest.raises(ConfigError) as e:
                load_config(env={"PROFILER_HOME": str(tmp_path)})
            assert key in str(e.value) and "\n" not in str(e.value)
            (tmp_path / "profiler.toml").unlink()


def test_finished_run_ttl_of_zero_is_accepted_from_file_and_environment(tmp_path):
    (tmp_path / "profiler.toml").write_text("finished_run_ttl_s = 0\n")
    assert load_config(env={"PROFILER_HOME": str(tmp_path)}).finished_run_ttl_s == 0
    env = {"PROFILER_HOME": str(tmp_path), "PROFILER_FINISHED_RUN_TTL": "0"}
    assert load_config(env=env).finished_run_ttl_s == 0


@pytest.mark.parametrize(
    "text, hint",
    [
        ('pricing = "aws:p4d.24xlarge"', "belongs under [cost]"),
        ("gpu_hour_price = 2.5", "belongs under [cost]"),
        ("monthly = 500", "belongs under [budget]"),
        ("metrics_prot = 1", "did you mean 'metrics_port'"),
        ("[daemon]\npricing = 'flat'", "belongs under [cost]"),
        ("[costs]\npricing = 'flat'", "did you mean [cost]?"),
    ],
)
def test_a_key_in_the_wrong_table_says_where_it_belongs(tmp_path, text, hint):
    (tmp_path / "profiler.toml").write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(env={"PROFILER_HOME": str(tmp_path)})
    assert hint in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_top_level_keys_next_to_a_daemon_table_are_not_ignored(tmp_path):
    (tmp_path / "profiler.toml").write_text("metrics_port = 1234\n[daemon]\nmax_runs = 20\n")
    c = load_config(env={"PROFILER_HOME": str(tmp_path)})
    assert (c.metrics_port, c.max_runs) == (1234, 20)
    (tmp_path / "profiler.toml").write_text("metrics_port = 1234\n[daemon]\nmetrics_port = 99\n")
    with pytest.raises(ConfigError, match="'metrics_port' is set twice"):
        load_config(env={"PROFILER_HOME": str(tmp_path)})


# ---- item 18 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "var, value",
    [("PROFILER_GPU_HOUR_PRICE", "abc"), ("PROFILER_GPU_HOUR_PRICE", "nan"),
     ("PROFILER_CARBON_G_PER_KWH", "lots")],
)  # fmt: skip
def test_pricing_errors_show_what_the_user_gave(var, value):
    from profiler.cost.pricing import resolve_pricing
    from profiler.cost.settings import PricingError

    with pytest.raises(PricingError) as e:
        resolve_pricing({}, env={"PROFILER_PRICING": "flat", "PROFILER_GPU_HOUR_PRICE": "1",
                                 var: value})  # fmt: skip
    assert f"got {value!r}" in str(e.value) and var in str(e.value), str(e.value)
    assert "None" not in str(e.value)


def test_cli_pricing_error_shows_the_value(tmp_path):
    env = profiler_env(tmp_path, PROFILER_GPU_HOUR_PRICE="abc", PROFILER_PRICING="flat")
    out = run_cli(env, "prices")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "got 'abc'" in out.stderr and "None" not in out.stderr


# ---- item 11 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("month", ["9999-12", "0001-01", "10000-01", "2026-00", "-1-5"])
def test_extreme_months_are_one_line(tmp_path, month):
    ledger = hostile_ledger(tmp_path / "ledger.sqlite", "name")
    ledger.close()
    for fmt in ("md", "focus"):
        out = run_cli(profiler_env(tmp_path), "report", "--month", month, "--format", fmt)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert "Traceback" not in out.stderr and "--month" in out.stderr


def test_a_future_month_is_refused_and_the_current_one_is_not(tmp_path):
    ledger = hostile_ledger(tmp_path / "ledger.sqlite", "name")
    try:
        with pytest.raises(ReportError, match="has not begun"):
            build_report(ledger, "2027-01", now=NOW)
        with pytest.raises(ReportError, match="has not begun"):
            to_focus(ledger, "2027-01", now=NOW)
        current = build_report(ledger, "2026-12", now=NOW)  # the month so far
        assert current.totals.runs == 0 and current.forecast is not None
        assert "No work was recorded in 2026-12" in render(current, "md")
        assert "No work was recorded in 2026-12" in render(current, "html")
        assert parse_month("1970-01")[0] == "1970-01"
    finally:
        ledger.close()


# ---- item 22: budgets ------------------------------------------------------------------------


@pytest.mark.parametrize("budget", ["inf", "nan", "0", "-5", "1e400"])
def test_budget_flag_must_be_a_finite_positive_amount(tmp_path, budget):
    hostile_ledger(tmp_path / "ledger.sqlite", "name").close()
    out = run_cli(profiler_env(tmp_path), "report", "--month", "2026-11", f"--budget={budget}")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "--budget" in out.stderr and "used" not in out.stdout


def test_fleet_report_checks_the_budget_before_asking_prometheus():
    from profiler.report.fleet import build_fleet_report

    with pytest.raises(ReportError, match="--budget"):
        build_fleet_report("http://127.0.0.1:9", "2026-11", budget=math.inf, now=NOW)


# ---- item 19: hostnames and other environment text -------------------------------------------


def test_hostname_with_control_characters_is_refused_in_one_line(tmp_path):
    env = {"PROFILER_HOME": str(tmp_path), "PROFILER_HOSTNAME": "node\x1b[31m\nevil"}
    with pytest.raises(ConfigError) as e:
        load_config(env=env)
    assert "PROFILER_HOSTNAME" in str(e.value) and "\n" not in str(e.value)
    assert "\x1b" not in str(e.value)  # the message shows it escaped (repr)


def test_label_values_and_watch_are_cleaned_of_control_characters(tmp_path):
    from inprocess import hello, make_daemon

    from profiler.cli import watch
    from profiler.daemon.exporter import labels, render_metrics

    assert labels(("a",), ("x\x1b[2J\ny\x00",)) == 'a="x[2Jy"'
    d, _sim, clock = make_daemon(tmp_path, [[(100.0, 300.0)]])
    d.hostname = "node\x1b]0;pwned\x07"  # a daemon built without load_config's check
    d.sample()
    h = hello("w1", os.getpid(), clock.now)
    d.handle(h)
    d.runs["w1"].name = "[bold]x[/bold][/]\x1b[2J"  # as an older ledger could hold it
    clock.now += 1
    d.sample()
    text = render_metrics(d).decode()
    assert "\x1b" not in text and "\x07" not in text and 'hostname="node]0;pwned"' in text
    snap = watch.build_snapshot(watch.parse(text), clock.now, d.wall())
    frame = watch.render_text(snap, "http://127.0.0.1:1/metrics")
    assert "\x1b" not in frame and "[bold]x[/bold][/]" in frame


# ---- item 14: the /metrics server ------------------------------------------------------------


def test_metrics_listen_backlog_holds_fifty_waiting_connections(tmp_path):
    from inprocess import make_daemon

    from profiler.daemon.metrics_http import serve_metrics

    d, _sim, _clock = make_daemon(tmp_path, [[(100.0, 300.0)]])
    server, port = serve_metrics(d, "127.0.0.1", 0)
    server.shutdown()  # nobody accepts now: every connection waits in the kernel's queue
    sockets = []
    try:
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
            sockets.append(s)
    except (TimeoutError, OSError):
        pass
    finally:
        for s in sockets:
            s.close()
        server.server_close()
    # a backlog of 5 completes 6 handshakes; the rest wait for a SYN retry (1 s and more)
    assert len(sockets) == 50


def request(url: str, method: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.slow
def test_metrics_server_answers_every_method_and_fifty_concurrent_scrapes(tmp_path):
    d = start_daemon(tmp_path / "home")
    try:
        url = d.metrics_url
        status, headers, body = request(url, "GET")
        assert status == 200 and body.startswith(b"# HELP")
        status, headers, body = request(url, "HEAD")
        assert status == 200 and body == b"" and headers["Content-Type"].startswith("text/plain")
        assert int(headers["Content-Length"]) > 0
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            status, headers, _ = request(url, method)
            assert status == 405 and headers["Allow"] == "GET, HEAD, OPTIONS", method
        status, headers, _ = request(url, "OPTIONS")
        assert status == 204 and headers["Allow"] == "GET, HEAD, OPTIONS"
        assert request(url.replace("/metrics", "/nope"), "HEAD")[0] == 404
        assert request(url, "BREW")[0] == 501  # not a method HTTP knows
        results: list[int] = []

        def scrape() -> None:
            results.append(request(url, "GET")[0])

        threads = [threading.Thread(target=scrape) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [200] * 50
        assert "Traceback" not in (d.home / "test-daemon.log").read_text()
    finally:
        d.stop()


def test_report_file_is_utf8_whatever_the_locale(tmp_path):
    hostile_ledger(tmp_path / "ledger.sqlite", "name").close()  # "\uff1dSUM(1)" is not ASCII
    env = profiler_env(tmp_path, LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0", PYTHONUTF8="0")
    for fmt in ("md", "html", "csv", "json", "focus"):
        out_file = tmp_path / f"nov.{fmt}"
        out = run_cli(env, "report", "--month", "2026-11", "--format", fmt, "--out", str(out_file))
        assert out.returncode == 0, out.stderr
        text = out_file.read_text(encoding="utf-8")
        shown = json.dumps(json.loads(text), ensure_ascii=False) if fmt == "json" else text
        assert "\uff1dSUM" in shown


ASCII_COMMANDS = [
    ["report", "--month", "2026-11"],
    ["runs"],
    ["compare", "r10-wide_formula", "r10-wide_formula"],
]


@pytest.mark.parametrize("command", ASCII_COMMANDS)
def test_text_the_terminal_cannot_encode_is_escaped_not_a_traceback(tmp_path, command):
    """A terminal whose encoding cannot show a run's name (here ASCII) gets the name as
    backslash escapes: the command succeeds with no UnicodeEncodeError traceback."""
    hostile_ledger(tmp_path / "ledger.sqlite", "name").close()  # "\\uff1dSUM(1)" is not ASCII
    env = profiler_env(tmp_path, PYTHONIOENCODING="ascii")
    out = run_cli(env, *command)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 0, out.stderr
    assert "\\uff1dSUM" in out.stdout


def test_compare_error_naming_recorded_runs_is_cleaned_of_control_characters(tmp_path):
    """The one line for an unknown run lists the newest run ids: hostile ones reach the
    terminal without their control characters."""
    hostile_ledger(tmp_path / "ledger.sqlite", "id").close()
    out = run_cli(profiler_env(tmp_path), "compare", "nope", "nope")
    assert out.returncode == 2
    line = out.stderr.strip()
    assert "no run with id or name 'nope'" in line and "\n" not in line
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in line), repr(line)
