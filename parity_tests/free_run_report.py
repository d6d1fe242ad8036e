"""The free-running curve as a section of the parity report (`python -m parity_tests.report CKPT
OUT_DIR --free_run N`): parity_tests/free_run.py trained from the report's checkpoint, its
per-iteration worst differences appended to parity_report.md and parity_report.html, the curve
itself written as free_run.json beside them."""
from __future__ import annotations

import html
import os

from parity_tests.free_run_compare import CATEGORIES

TITLE = "Free-running float64 training"


def prepare_from_checkpoint(ckpt: str, iterations: int, overrides: dict, seed: int = 0):
    """(args, prepared) of a free run from `ckpt` for `iterations` ({"img_size": 64, ...}: the
    report's flags; None: not given): its bad input fails here, before the report's work."""
    from parity_tests import free_run
    argv = ["--checkpoint", ckpt, "--iterations", str(iterations), "--seed", str(seed), "--quiet"]
    for key, value in overrides.items():
        if value is not None:
            argv += [f"--{key}", str(value)]
    args = free_run.build_parser().parse_args(argv)
    return args, free_run.prepare(args)


def run(prepared_run) -> dict:
    from parity_tests import free_run
    return free_run.run(*prepared_run)


def _intro(result: dict) -> str:
    from parity_tests.free_run import JUDGED
    from parity_tests.free_run import summary_lines
    lines = summary_lines(result)
    return (f"{result['candidate']} and {result['reference']} trained side by side from {result['start']}, "
            f"{result['iterations']} iterations of the official loop, never re-synchronised, the same batches and "
            f"random draws fed to both (python -m parity_tests.free_run). Budget {result['budget']:g}; {JUDGED}. "
            + lines[0] + ("; " + lines[-1].strip() if result["first_over"] else "") + ".")


def _rows(result: dict) -> list[list[str]]:
    rows = []
    for r in result["curve"]:
        worst = max(CATEGORIES, key=lambda c: r[c]["value"])
        rows.append([str(r["iteration"]), r["runs"], f"{r['lr']:.3g}"]
                    + [f"{r[c]['value']:.2e}" for c in CATEGORIES] + [r[worst]["name"]])
    return rows


HEADER = ["iteration", "runs", "lr"] + list(CATEGORIES) + ["worst tensor"]


def section(result: dict) -> tuple[str, str]:
    """The section as (Markdown, HTML), for harness.write_report's `appendix`."""
    rows, intro = _rows(result), _intro(result)
    md = (f"\n## {TITLE}\n\n{intro}\n\n| " + " | ".join(HEADER) + " |\n|" + "---|" * len(HEADER) + "\n"
          + "".join("| " + " | ".join(r[:-1] + [f"`{r[-1]}`"]) + " |\n" for r in rows))
    table = ("<table border=1><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in HEADER) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
    return md, f"<h2>{TITLE}</h2><p>{html.escape(intro)}</p>{table}"


def write_json(out_dir: str, result: dict) -> str:
    from ugatit_common.results import write_text_atomic
    return write_text_atomic(os.path.join(out_dir, "free_run.json"), json_text(result))


def json_text(result: dict) -> str:
    """free_run.json's text (the parity report writes it with its own files): strict JSON, NaN /
    inf of a blown-up run as null, named in `non_finite` (ugatit_common.strict_json)."""
    from ugatit_common import strict_json
    return strict_json.dumps(result, indent=1)


def append_section(out_dir: str, result: dict) -> None:
    """Add the section to OUT_DIR's parity_report.md / .html and write free_run.json (as one write).
    (`python -m parity_tests.report` writes the section with the table instead: harness.write_report.)"""
    from parity_tests.harness import printable
    from ugatit_common.atomic import write_files_atomic
    md, section_html = section(result)
    md, section_html = printable(md), printable(section_html)
    md_path, page_path = os.path.join(out_dir, "parity_report.md"), os.path.join(out_dir, "parity_report.html")
    with open(md_path, encoding="utf-8") as f:
        md = f.read() + md
    with open(page_path, encoding="utf-8") as f:
        page = f.read()
    at = page.rfind("</body>")
    page = page[:at] + section_html + page[at:] if at >= 0 else page + section_html
    write_files_atomic({os.path.join(out_dir, "free_run.json"): json_text(result).encode("utf-8"),
                        md_path: md.encode("utf-8"), page_path: page.encode("utf-8")})  # all three or none
