"""Write a comparison's reports: report.md, report.html (self-contained, sortable), results.csv, PNG plots."""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Any

from lowbit.compare.plots import write_plots
from lowbit.compare.table import COLUMNS, fmt, rows, side_by_side
from lowbit.methods import make_config, method_names

SECTIONS = {
    "Overall": ["label", "library", "saving_pct", "decode_speedup", "quality_kept_pct", "calibration", "bits_per_param"],
    "Memory": ["label", "bits_per_param", "weight_mb", "saving_pct", "inference_peak_mb", "quantize_peak_mb"],
    "Quality": ["label", "ppl", "quality_kept_pct", "kl", "top1"],
    "Speed": ["label", "prefill_tps", "decode_tps", "decode_speedup", "kernels", "quantize_s"],
}
TITLES = dict(COLUMNS)


def write_reports(records: list[dict[str, Any]], skipped: list[tuple[str, str]], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    protocol = next((r["protocol"] for r in records), {})
    evals = protocol.get("evals", ["wikitext2"])
    table = rows(records, evals[0])
    plots = write_plots(table, out)
    paths = [_markdown(records, table, skipped, protocol, plots, out / "report.md")]
    paths.append(_html(records, table, skipped, protocol, plots, out / "report.html"))
    paths.append(_csv(records, evals, out / "results.csv"))
    return paths + plots


def _md_table(table: list[dict[str, Any]], keys: list[str]) -> str:
    lines = ["| " + " | ".join(TITLES[k] for k in keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in table if "ppl" in r]
    return "\n".join(lines)


def _markdown(records, table, skipped, protocol, plots, path: Path) -> Path:
    parts = ["# lowbit comparison", "", _protocol_line(protocol), ""]
    for title, keys in SECTIONS.items():
        parts += [f"## {title}", "", _md_table(table, keys), ""]
    evals = protocol.get("evals", [])
    if len(evals) > 1:
        for name in evals[1:]:
            parts += [f"## Quality on {name}", "", _md_table(rows(records, name), SECTIONS["Quality"]), ""]
    parts += ["## Settings", "", "What each setting ran with (options left at their defaults are not listed):", ""]
    parts += [f"- {r['label']}: `{_options(r['config'])}`" for r in side_by_side(records)]
    parts.append("")
    failed = [r for r in table if "ppl" not in r]
    if failed or skipped:
        parts += ["## Not measured", ""]
        parts += [f"- {r['label']}: failed: {r['error']}" for r in failed]
        parts += [f"- {label}: skipped: {reason}" for label, reason in skipped]
        parts.append("")
    parts += [f"![{p.stem}]({p.name})" for p in plots]
    path.write_text("\n".join(parts) + "\n")
    return path


def _options(config: dict[str, Any]) -> str:
    """The config's options that differ from the method's defaults (all of them for a library's setting)."""
    method = config.get("method")
    if "library" in config or method not in method_names():
        return json.dumps(config)
    defaults = make_config(method).to_dict()
    return json.dumps({k: v for k, v in config.items() if k == "method" or v != defaults.get(k)})


def _protocol_line(protocol: dict[str, Any]) -> str:
    if not protocol:
        return "No settings were measured."
    return (
        f"Preset {protocol.get('preset', '-')}. Protocol: eval on {', '.join(protocol['evals'])}, {protocol['windows']} windows of {protocol['seqlen']} tokens; "
        f"calibration {protocol['nsamples']} windows of {protocol['calib_seqlen']} tokens of {protocol['calib']} "
        f"(seed {protocol['seed']}); speed: batch 1, {protocol['prompt_tokens']}-token prefill, "
        f"{protocol['new_tokens']} decoded tokens on {protocol['device']}. Ratios are against the unquantized model "
        "measured in the same run."
    )


def _html(records, table, skipped, protocol, plots, path: Path) -> Path:
    keys = [k for k, _ in COLUMNS]
    head = "".join(f"<th onclick='sortBy({i})'>{html.escape(TITLES[k])}</th>" for i, k in enumerate(keys))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(r.get(k)))}</td>" for k in keys) + "</tr>" for r in table
    )
    images = "".join(
        f"<figure><img alt='{p.stem}' src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'></figure>"
        for p in plots
    )
    notes = "".join(f"<li>{html.escape(r['label'])}: failed: {html.escape(r['error'])}</li>" for r in table if "ppl" not in r)
    notes += "".join(f"<li>{html.escape(label)}: skipped: {html.escape(reason)}</li>" for label, reason in skipped)
    settings = "".join(f"<li>{html.escape(r['label'])}: <code>{html.escape(_options(r['config']))}</code></li>"
                       for r in side_by_side(records))
    page = _HTML.format(protocol=html.escape(_protocol_line(protocol)), head=head, body=body, images=images,
                        notes=f"<h2>Not measured</h2><ul>{notes}</ul>" if notes else "",
                        settings=f"<h2>Settings</h2><ul>{settings}</ul>")
    path.write_text(page)
    return path


def _csv(records: list[dict[str, Any]], evals: list[str], path: Path) -> Path:
    keys = [k for k, _ in COLUMNS]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["eval", *keys])
        for name in evals:
            for r in rows(records, name):
                writer.writerow([name, *[r.get(k, "") for k in keys]])
    return path


_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>lowbit comparison</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f0f0f0; cursor: pointer; position: sticky; top: 0; }}
td:first-child, th:first-child {{ text-align: left; }}
tr:nth-child(even) {{ background: #fafafa; }}
figure {{ display: inline-block; margin: 1em; }}
img {{ max-width: 640px; }}
</style></head><body>
<h1>lowbit comparison</h1>
<p>{protocol}</p>
<p>Click a column title to sort.</p>
<table id="results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{notes}
{settings}
<h2>Plots</h2>{images}
<script>
let order = 1;
function sortBy(col) {{
  const body = document.querySelector('#results tbody');
  const rows = Array.from(body.rows);
  const key = r => {{ const t = r.cells[col].innerText; const n = parseFloat(t); return isNaN(n) ? t : n; }};
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * order);
  order = -order;
  rows.forEach(r => body.appendChild(r));
}}
</script></body></html>
"""
