"""The report as one self-contained HTML page (`render_page`): styles, script, charts (SVG) and
plots (PNG as data URLs) inline, the sample rows as JSON that the page's script browses. The
page's frame is `template.html` beside this module."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from selflengthen.report.charts import box_plots, line_chart
from selflengthen.train.roles import ROLES

TEMPLATE = Path(__file__).with_name("template.html")
NOT_YET_RUN = '<span class="missing">not yet run</span>'
_SECTIONS = ("funnel", "lengths", "training", "samples", "evaluation", "config")


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(rows_cell for rows_cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _number(value: object) -> str:
    return f'<td class="number">{escape(f"{value:,}" if isinstance(value, int) else str(value))}</td>'


def _funnel(iteration: dict[str, Any]) -> str:
    """The stages with their rows, each as a share of the stage before and as a bar."""
    rows, previous = [], None
    top = next((stage["count"] for stage in iteration["funnel"] if stage["count"]), None)
    for stage in iteration["funnel"]:
        count, label = stage["count"], f"<td>{escape(stage['stage'])}</td>"
        if not iteration["finished"][stage["step"]] or count is None:
            missing = NOT_YET_RUN if not iteration["finished"][stage["step"]] else "not recorded"
            rows.append([label, f"<td>{missing}</td>", "<td></td>", "<td></td>"])
            continue
        share = f"{count / previous:.0%}" if previous else ""
        width = 300 * count / top if top else 0
        bar = f'<td><span class="bar" style="width:{width:.0f}px"></span></td>'
        rows.append([label, _number(count), _number(share), bar])
        previous = count
    return _table(["stage", "rows", "of the stage before", ""], rows)


def _reasons(iteration: dict[str, Any]) -> str:
    parts = []
    for step, reasons in iteration["reasons"].items():
        rows = []
        for kind, value in reasons.items():
            if kind == "stopped_early":
                for reason, counts in value.items():
                    stopped = (
                        f"{counts['requests']:,} requests, {counts['completion_tokens']:,} tokens generated"
                    )
                    rows.append([f"<td>stopped early</td><td>{escape(reason)}</td>", f"<td>{stopped}</td>"])
            elif isinstance(value, dict):
                label = kind.replace("_", " ")
                rows += [[f"<td>{label}</td><td>{escape(k)}</td>", _number(v)] for k, v in value.items() if v]
            else:
                rows.append(["<td>dropped by the sampler</td><td></td>", _number(value)])
        if rows:
            parts.append(
                f"<div><h4>{escape(step)}</h4>" + _table(["what", "reason", "count"], rows) + "</div>"
            )
    return (
        f'<div class="reasons">{"".join(parts)}</div>'
        if parts
        else '<p class="missing">no drops recorded yet</p>'
    )


def _lengths(report: dict[str, Any]) -> str:
    words, growth = [], []
    for iteration in report["iterations"]:
        k = iteration["iteration"]
        initial_label = "iteration 1 initial (base model)" if k == 1 else f"iteration {k} initial"
        words.append((initial_label, iteration["words"].get("initial", [])))
        words.append((f"iteration {k} extended", iteration["words"].get("extended", [])))
        growth.append((f"iteration {k}", iteration["growth"]))
    return (
        "<h3>Words per answer</h3>"
        + box_plots(words, "words")
        + "<h3>Growth of kept extended rows (extended ÷ initial words)</h3>"
        + box_plots(growth, "× initial")
    )


def _training(report: dict[str, Any]) -> str:
    parts = []
    for role in ROLES:
        series = [(f"iteration {it['iteration']}", it["losses"].get(role, [])) for it in report["iterations"]]
        parts.append(f"<h3>{role.capitalize()}</h3>" + line_chart(series, "logged steps"))
    return "".join(parts)


def _evaluation(report: dict[str, Any]) -> str:
    evaluation = report["evaluation"]
    if evaluation is None:
        return f"<p>{NOT_YET_RUN} (<code>selflengthen eval --compare …</code> writes it)</p>"
    html = MarkdownIt("commonmark", {"html": False}).enable("table").render(evaluation["results_md"])
    plots = "".join(
        f'<figure><img class="plot" alt="{escape(name)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(name)}</figcaption></figure>"
        for name, data in evaluation["plots"].items()
    )
    return html + plots


def _iterations_line(report: dict[str, Any]) -> str:
    done = len(report["iterations"])
    planned = report["planned_iterations"]
    missing = range(done + 1, planned + 1) if planned else range(0)
    later = f"; iterations {', '.join(map(str, missing))}: not yet run" if missing else ""
    return f"<p>{done} iteration(s) with data{f' of {planned} planned' if planned else ''}{later}.</p>"


def render_page(report: dict[str, Any]) -> str:
    """The page of `report` (what `collect_run` read)."""
    sections = [
        f"<h1>selflengthen report: {escape(report['name'])}</h1>",
        _iterations_line(report),
        "<nav>" + "".join(f'<a href="#{anchor}">{anchor}</a>' for anchor in _SECTIONS) + "</nav>",
        '<h2 id="funnel">What each iteration made and dropped</h2>',
    ]
    for iteration in report["iterations"]:
        sections += [f"<h3>Iteration {iteration['iteration']}</h3>", _funnel(iteration), _reasons(iteration)]
    sections += [
        '<h2 id="lengths">Lengths</h2>',
        _lengths(report),
        '<h2 id="training">Training loss</h2>',
        _training(report),
        '<h2 id="samples">Samples</h2>',
        '<p class="legend">In extended answers: <mark class="expanded">stage 1 (expansion)</mark> '
        '<mark class="continued">stage 2 (continuation)</mark>, unmarked text is the initial answer\'s; '
        'in rejected attempts: <mark class="found">what the filter found</mark>.</p>',
        '<div class="controls">'
        + "".join(
            f'<label>{name} <select id="filter-{name}"><option value="">all</option></select></label>'
            for name in ("iteration", "step", "status")
        )
        + '<label>instruction contains <input id="filter-text" type="search"></label></div>',
        '<p id="sample-count"></p><div id="sample-list"></div>',
        '<h2 id="evaluation">Evaluation</h2>',
        _evaluation(report),
        '<h2 id="config">Config and recipe</h2>',
    ]
    for title, text in (("config.yaml", report["config"]), ("train_recipe.yaml", report["recipe"])):
        sections.append(
            f"<h3>{title}</h3>" + (f"<pre>{escape(text)}</pre>" if text else f"<p>{NOT_YET_RUN}</p>")
        )
    samples = json.dumps(report["samples"], ensure_ascii=False).replace("</", "<\\/")
    page = TEMPLATE.read_text(encoding="utf-8")
    return (
        page.replace("@TITLE@", escape(report["name"]))
        .replace("@BODY@", "\n".join(sections))
        .replace("@SAMPLES@", samples)
    )
