"""The benchmark's results: the table, bench/results/latest.json and the chart.

Every figure is the median of its runs.  Each row shows it for every path
measured, ocsbal's ratio to HAProxy and to ``twistd portforward``, the
project's target for the row (ocsbal against HAProxy) and whether ocsbal
meets it, and whether it beats portforward.  For rows where lower is
better (latency, memory, CPU) a ratio below 1 is ocsbal doing better.
After each SIP CPU row comes ocsbal's own ratio: its CPU a round trip
relaying the SIP (the ``relay`` column) over following it, with the
project's target for that.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

#: ``ocsbal-relay`` is ocsbal not following SIP: the SIP rows' ``tcp`` port,
#: and for SIP over TLS a pool with ``[tls] inspect = no``.
PATHS = ("direct", "haproxy", "portforward", "ocsbal-relay", "ocsbal")
HEADINGS = {
    "direct": "direct",
    "haproxy": "HAProxy",
    "portforward": "portfwd",
    "ocsbal-relay": "relay",
    "ocsbal": "ocsbal",
}
Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class Figure:
    """One row of the table.

    :ivar target: the project's bound on ocsbal/HAProxy: at least this when
        higher is better, at most this when lower is.
    """

    key: str
    title: str
    unit: str
    better: Better
    target: float | None = None


#: The SIP tests: a conversation (bench/conversations.py), plain or over
#: TLS.  Each has a row of round trips a second and one of the balancer's
#: CPU seconds per 10,000 round trips.
SIP_CASES = {
    "sip_register": "SIP REGISTER-only",
    "sip_mix": "SIP OCS mix",
    "sips_register": "SIP/TLS REGISTER-only",
    "sips_mix": "SIP/TLS OCS mix",
}
FIGURES = [
    Figure("messages", "HTTP message rate, keep-alive", "req/s", "higher", 0.6),
    Figure("connections", "HTTP connection rate", "conn/s", "higher", 0.5),
    Figure("bulk", "bulk, one download", "MB/s", "higher", 0.9),
    Figure("latency_p50", "latency added, p50", "us", "lower"),
    Figure("latency_p99", "latency added, p99", "us", "lower", 2.0),
    Figure("idle_memory", "memory per idle connection", "KiB", "lower", 1.5),
    Figure("idle_tls_memory", "memory per idle TLS connection", "KiB", "lower", 1.0),
    *(
        figure
        for key, case in SIP_CASES.items()
        for figure in (
            Figure(key, f"{case}, rate", "trips/s", "higher"),
            Figure(f"{key}_cpu", f"{case}, CPU", "s/10k", "lower"),
        )
    ),
    Figure("sipp", "SIPp REGISTER, new conn each", "calls/s", "higher"),
    Figure("sipp_failed", "SIPp failed calls, all runs", "calls", "lower"),
    Figure("tls_handshakes", "TLS handshakes, terminated", "/s", "higher", 0.5),
    Figure("tls_bulk", "TLS bulk, one download", "MB/s", "higher"),
]
#: The project's bound on ocsbal's CPU a round trip relaying SIP over its CPU
#: following it (at least), by CPU figure; ``None``: shown, no target.
FOLLOWING_TARGETS = {
    "sip_register_cpu": 0.6,
    "sip_mix_cpu": 0.9,
    "sips_register_cpu": None,
    "sips_mix_cpu": 0.9,
}
#: The key of a CPU figure's row of relaying over following, after the figure's.
_FOLLOWING = "_relay_over_following"


@dataclass
class Row:
    """A row as shown: values by path, ratios, target and verdicts."""

    key: str
    title: str
    unit: str
    better: Better
    values: dict[str, float]
    vs_haproxy: float | None = None
    vs_portforward: float | None = None
    target: str = ""
    met: bool | None = None
    beats_portforward: bool | None = None
    note: str = ""


@dataclass
class Results:
    """Every run's figure, by figure and path, and what else a run reported."""

    runs: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, figure: str, path: str, value: float) -> None:
        self.runs.setdefault(figure, {}).setdefault(path, []).append(value)

    def median(self, figure: str, path: str) -> float | None:
        values = self.runs.get(figure, {}).get(path)
        return statistics.median(values) if values else None


def rows(results: Results) -> list[Row]:
    """The table's rows, for the figures that were measured."""
    shown: list[Row] = []
    for figure in FIGURES:
        if figure.key not in results.runs:
            continue
        values = _values(results, figure)
        row = Row(figure.key, figure.title, figure.unit, figure.better, values)
        ocsbal = values.get("ocsbal")
        if figure.key == "sipp_failed":
            row.target = "= 0"
            row.met = ocsbal == 0 if ocsbal is not None else None
        elif ocsbal is not None:
            row.vs_haproxy = _ratio(ocsbal, values.get("haproxy"), figure)
            row.vs_portforward = _ratio(ocsbal, values.get("portforward"), figure)
            if figure.target is not None and row.vs_haproxy is not None:
                sign = ">=" if figure.better == "higher" else "<="
                row.target = f"{sign} {figure.target:g}x"
                row.met = _meets(row.vs_haproxy, figure.target, figure.better)
            if row.vs_portforward is not None:
                row.beats_portforward = _meets(row.vs_portforward, 1.0, figure.better)
        if figure.key.startswith("latency"):
            row.note = _latency_note(results, figure.key)
        shown.append(row)
        if figure.key in FOLLOWING_TARGETS:
            following = _following(results, figure.key)
            if following is not None:
                shown.append(following)
    return shown


def _following(results: Results, key: str) -> Row | None:
    """The row of ocsbal's CPU relaying over its CPU following, for ``key``."""
    relay = results.median(key, "ocsbal-relay")
    follow = results.median(key, "ocsbal")
    if not relay or not follow:
        return None
    ratio = relay / follow
    target = FOLLOWING_TARGETS[key]
    return Row(
        key + _FOLLOWING,
        f"{SIP_CASES[key.removesuffix('_cpu')]}, CPU relay/follow",
        "ratio",
        "higher",
        {"ocsbal": ratio},
        target="" if target is None else f">= {target:g}",
        met=None if target is None else ratio >= target,
    )


def _latency_note(results: Results, key: str) -> str:
    """Direct's own latency, and the paths that could not keep up with the rate."""
    base = results.median(key, "direct")
    note = f"direct itself: {base:,.0f} us" if base is not None else ""
    slow = overloaded(results)
    if slow:
        rate = results.extra.get("latency_rate", 0)
        note += f"; could not keep up with {rate:,.0f} req/s: {', '.join(slow)}"
    return note


def overloaded(results: Results) -> list[str]:
    """Paths that fell behind the latency test's fixed rate in most runs.

    A path falls behind when most requests leave over a millisecond after
    they were due, their connection still waiting for an earlier answer.
    """
    slow = []
    for path, runs in results.extra.get("latency_runs", {}).items():
        behind = [r["late"] > r["responses"] / 2 or r["unanswered"] for r in runs]
        if sum(behind) * 2 > len(behind):
            slow.append(path)
    return slow


def _values(results: Results, figure: Figure) -> dict[str, float]:
    """Medians by path; latency rows show what each path adds to direct's."""
    values: dict[str, float] = {}
    for path in PATHS:
        value = results.median(figure.key, path)
        if value is None:
            continue
        if figure.key == "sipp_failed":
            value = sum(results.runs[figure.key][path])
        values[path] = value
    if figure.key.startswith("latency") and "direct" in values:
        base = values.pop("direct")
        values = {path: value - base for path, value in values.items()}
    return values


def _ratio(ocsbal: float, other: float | None, figure: Figure) -> float | None:
    if other is None:
        return None
    if figure.key.startswith("latency"):
        # What a path adds can be measured as 0 or less when it is in the
        # noise; a microsecond is the least a relay adds.
        ocsbal, other = max(ocsbal, 1.0), max(other, 1.0)
    return ocsbal / other if other else None


def _meets(ratio: float, bound: float, better: Better) -> bool:
    return ratio >= bound if better == "higher" else ratio <= bound


# ------------------------------------------------------------------ table


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ratio", "s/10k"):
        return f"{value:.2f}"
    if abs(value) >= 100 or unit in ("calls", "us"):
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _verdict(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "NO")


def table(shown: list[Row]) -> str:
    """The rows as a fixed-width text table, then their notes."""
    columns = [f"{HEADINGS[p]:>9}" for p in PATHS]
    header = (
        f"{'figure':<36}{'unit':>8}{''.join(columns)}"
        f"{'/HAProxy':>10}{'target':>9}{'met':>5}{'/portfwd':>10}{'beats':>6}"
    )
    lines = [header, "-" * len(header)]
    for row in shown:
        cells = "".join(f"{_number(row.values.get(p), row.unit):>9}" for p in PATHS)
        ratios = (
            f"{_ratio_text(row.vs_haproxy):>10}{row.target:>9}{_verdict(row.met):>5}"
            f"{_ratio_text(row.vs_portforward):>10}"
            f"{_verdict(row.beats_portforward):>6}"
        )
        lines.append(f"{row.title:<36}{row.unit:>8}{cells}{ratios}")
    notes = [f"  {row.title}: {row.note}" for row in shown if row.note]
    return "\n".join(lines + ([""] if notes else []) + notes)


def _symbols(text: str) -> str:
    """``>=`` and ``<=`` as printed, not typed."""
    return text.replace(">=", "≥").replace("<=", "≤")


def _ratio_text(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    return "<0.01x" if ratio < 0.005 else f"{ratio:.2f}x"


def markdown(shown: list[Row]) -> str:
    """The rows as a Markdown table, for docs/benchmarks.md."""
    head = ["figure", "unit", *(HEADINGS[p] for p in PATHS)]
    head += ["ocsbal/HAProxy", "target", "met", "ocsbal/portfwd", "beats portfwd"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in shown:
        cells = [row.title, "µs" if row.unit == "us" else row.unit]
        cells += [_number(row.values.get(p), row.unit) for p in PATHS]
        cells += [_ratio_text(row.vs_haproxy), _symbols(row.target)]
        cells += [_verdict(row.met), _ratio_text(row.vs_portforward)]
        cells += [_verdict(row.beats_portforward)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------- files


def write_json(
    path: Path, results: Results, shown: list[Row], header: dict[str, Any]
) -> None:
    """Everything: the header (machine, options), every run, medians and rows."""
    document = {
        **header,
        "runs": results.runs,
        "medians": {
            figure: {p: statistics.median(v) for p, v in by_path.items() if v}
            for figure, by_path in results.runs.items()
        },
        "rows": [asdict(row) for row in shown],
        **results.extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


COLOURS = {
    "direct": "#9e9e9e",
    "haproxy": "#1f77b4",
    "portforward": "#ff7f0e",
    "ocsbal": "#2ca02c",
    "ocsbal-relay": "#98df8a",
}


def chart_title(date: str, host: dict[str, Any], rounds: int) -> str:
    return (
        f"ocsbal benchmark, {date[:10]}: {host['cpu']}, {host['cores']} cores "
        f"(a shared, noisy VM); medians of {rounds} rounds"
    )


def write_chart(path: Path, results: Results, shown: list[Row], title: str) -> bool:
    """One small bar chart a row; ``False`` if matplotlib is not installed."""
    try:
        import matplotlib as mpl
    except ImportError:
        return False
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    panels = [row for row in shown if row.key != "sipp_failed"]
    columns = 4
    lines = -(-len(panels) // columns)
    figure, axes = plt.subplots(
        lines, columns, figsize=(4.2 * columns, 3.3 * lines), squeeze=False
    )
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, row in zip(axes.flat, panels, strict=False):
        heading = f"{row.title} ({row.unit})"
        if row.key.endswith(_FOLLOWING):
            key = row.key.removesuffix(_FOLLOWING)
            labels = ["ocsbal-relay", "ocsbal"]
            heights = [results.median(key, p) or 0.0 for p in labels]
            names = ["ocsbal relaying", "ocsbal following SIP"]
            unit = "s/10k"
            heading = f"{SIP_CASES[key.removesuffix('_cpu')]}: ocsbal CPU (s/10k)"
            verdict = f"relay/following {row.values['ocsbal']:.2f}"
            if row.target:
                verdict += f" (target {row.target})"
        else:
            labels = [p for p in PATHS if p in row.values]
            heights = [row.values[p] for p in labels]
            names = [HEADINGS[p] for p in labels]
            unit = row.unit
            verdict = _panel_verdict(row)
        if row.key.startswith("latency"):
            # An overloaded path adds a thousand times what the others do.
            heights = [max(h, 1.0) for h in heights]
            ax.set_yscale("log")
            slow = overloaded(results)
            names = [
                n + ("\n(overloaded)" if p in slow else "")
                for n, p in zip(names, labels, strict=True)
            ]
        bars = ax.bar(names, heights, color=[COLOURS[p] for p in labels])
        ax.bar_label(bars, [_number(h, unit) for h in heights], fontsize=8)
        verdict = _symbols(verdict)
        ax.set_title(f"{heading}\n{verdict}", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.margins(y=0.18)
        ax.spines[["top", "right"]].set_visible(False)
        if row.met is False:
            ax.set_facecolor("#fff0f0")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.98))  # room for the title
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True


def _panel_verdict(row: Row) -> str:
    if row.vs_haproxy is None:
        return row.note
    text = f"ocsbal/HAProxy {row.vs_haproxy:.2f}x"
    if row.target:
        text += f" (target {row.target}: {'met' if row.met else 'not met'})"
    return text


def load(path: Path) -> tuple[Results, list[Row], dict[str, Any]]:
    """A results file written by :func:`write_json`: results, rows, document."""
    document = json.loads(path.read_text())
    extra = {k: document[k] for k in EXTRA if k in document}
    results = Results(document["runs"], extra)
    return results, [Row(**row) for row in document["rows"]], document


#: What a run reports besides its figures (``Results.extra``).
EXTRA = ("latency_rate", "latency_runs", "errors", "sip_inspected")


def main() -> None:
    """Print the Markdown table of a results file; with ``--chart``, redraw it."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "results",
        nargs="?",
        type=Path,
        default=Path(__file__).parent / "results" / "latest.json",
    )
    parser.add_argument("--chart", action="store_true", help="redraw latest.png")
    options = parser.parse_args()
    results, shown, document = load(options.results)
    print(markdown(shown))
    if options.chart:
        rounds = document["options"]["rounds"]
        title = chart_title(document["date"], document["machine"], rounds)
        write_chart(options.results.with_suffix(".png"), results, shown, title)


if __name__ == "__main__":
    main()
