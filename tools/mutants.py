"""Classify and summarise mutmut 3's results (``make mutation``): which mutants only change a log call.

mutmut writes each mutated function next to its original (``x<cls>ǁ<fn>__mutmut_orig`` and
``..._mutmut_<n>``) in ``mutants/<path>`` and the exit code of each in ``<path>.meta``. A mutant is
*log-only* when every difference from the original lies inside the arguments of a
``log.debug/info/warning/error`` call (its message text or its ``kv`` fields): it cannot change a
transmit, an event, a deadline or any state, only what an operator reads. The rule is mechanical
(AST comparison), so the rate without them is reproducible.

    python tools/mutants.py summary            # counts and kill rates, with and without log-only
    python tools/mutants.py names [--log-only | --behaviour] [--status STATUS]  # mutant names
    python tools/mutants.py survivors          # each behaviour survivor: name, the changed code
    python tools/mutants.py table [--log-only] # a markdown table of the survivors, with the reasons
                                               # of docs/mutation-survivors.json (mutant -> why)
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import sys
from pathlib import Path

SOURCES = ["connlib/core/allocation.py", "connlib/core/node.py"]
LOG_METHODS = {"debug", "info", "warning", "error", "exception"}
# mutmut's exit codes (mutmut.__main__.status_by_exit_code, the ones a run here produces)
STATUS = {
    1: "killed",
    3: "killed",
    -24: "timeout",
    24: "timeout",
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    35: "suspicious",
    36: "timeout",
    37: "caught by type check",
    -11: "segfault",
    None: "not checked",
}


def _is_log_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in LOG_METHODS
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "log"
    )


def _is_kv_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "kv"


def _diff_inside_log(a: ast.AST, b: ast.AST, where: str = "") -> bool | None:
    """None if ``a`` and ``b`` are equal; True if every difference is log-only; False otherwise.

    ``where`` is "" outside log calls, "log" inside one, "arg" for a whole argument of a log call
    or of its ``kv(...)`` (replacing or removing it changes only the record). Deeper inside an
    argument only string constants count (``hex(None)`` would raise before anything is logged).
    """
    if type(a) is not type(b):
        return where == "arg"
    if isinstance(a, ast.Constant) and isinstance(b, ast.Constant):
        if a.value == b.value and type(a.value) is type(b.value):
            return None
        return where == "arg" or (where == "log" and isinstance(a.value, str) and isinstance(b.value, str))
    call = _is_log_call(a) or (where != "" and _is_kv_call(a))
    inner = "log" if where or call else ""
    result: bool | None = None
    for field, va in ast.iter_fields(a):
        if field in ("ctx", "type_comment"):
            continue
        vb = getattr(b, field, None)
        whole = call and field in ("args", "keywords")  # whole arguments of the log call or kv
        if isinstance(va, list) and isinstance(vb, list):
            if len(va) != len(vb):
                if not whole:
                    return False
                result = True  # an argument removed
                continue
            pairs = list(zip(va, vb, strict=True))
        else:
            pairs = [(va, vb)]
        for x, y in pairs:
            if isinstance(x, ast.keyword) and isinstance(y, ast.keyword) and whole:
                sub = _diff_inside_log(x.value, y.value, "arg") if x.arg == y.arg else False
            elif isinstance(x, ast.AST) and isinstance(y, ast.AST):
                sub = _diff_inside_log(x, y, "arg" if whole else inner)
            elif x == y:
                sub = None
            else:
                sub = False
            if sub is False:
                return False
            if sub:
                result = True
    return result


def load(root: Path) -> dict[str, dict]:
    """mutant name -> {status, log_only, file, function, orig, mutant (AST nodes)}"""
    out: dict[str, dict] = {}
    for src in SOURCES:
        tree = ast.parse((root / src).read_text())
        funcs: dict[str, ast.FunctionDef] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and "__mutmut_" in node.name:
                funcs[node.name] = node
        meta = json.loads((root / (src + ".meta")).read_text())
        module = src.removesuffix(".py").replace("/", ".")
        for key, code in meta["exit_code_by_key"].items():
            fname = key.removeprefix(module + ".")
            base, n = fname.rsplit("__mutmut_", 1)
            orig, mutant = funcs[base + "__mutmut_orig"], funcs[fname]
            orig_body, mutant_body = ast.Module(orig.body, []), ast.Module(mutant.body, [])
            sig_same = ast.dump(orig.args) == ast.dump(mutant.args)
            inside = _diff_inside_log(orig_body, mutant_body) if sig_same else False
            out[key] = {
                "status": STATUS.get(code, f"exit {code}"),
                "log_only": bool(inside),
                "file": src,
                "function": base.replace("ǁ", ".").lstrip("x."),
                "orig": orig,
                "mutant": mutant,
            }
    return out


def changed(orig: ast.FunctionDef, mutant: ast.FunctionDef) -> tuple[int, str, str]:
    """The innermost differing statement: its line offset in the function and each side, one line."""
    a = [s for s in ast.walk(ast.Module(orig.body, [])) if isinstance(s, ast.stmt)]
    b = [s for s in ast.walk(ast.Module(mutant.body, [])) if isinstance(s, ast.stmt)]
    pick = None
    for sa, sb in zip(a, b, strict=False):
        if ast.dump(sa) != ast.dump(sb):
            pick = (sa, sb)  # keep going: the innermost differing statement comes later in the walk
            if not any(isinstance(c, ast.stmt) for c in ast.iter_child_nodes(sa)):
                break
    if pick is None:  # the signature: the default values that differ
        pairs = zip(
            orig.args.defaults + orig.args.kw_defaults, mutant.args.defaults + mutant.args.kw_defaults, strict=False
        )
        diff = [(x, y) for x, y in pairs if x is not None and y is not None and ast.dump(x) != ast.dump(y)]
        if diff:
            return 0, "default " + ast.unparse(diff[0][0]), "default " + ast.unparse(diff[0][1])
        return 0, ast.unparse(orig.args), ast.unparse(mutant.args)
    first = lambda s: ast.unparse(s).splitlines()[0]  # noqa: E731
    return pick[0].lineno - orig.lineno, first(pick[0]), first(pick[1])


def source_lines(root: Path) -> dict[tuple[str, str], int]:
    """(file, mutmut's function name such as ``xǁAllocationǁ_send`` or ``x__is_delete``) -> def line."""
    out: dict[tuple[str, str], int] = {}
    for src in SOURCES:
        tree = ast.parse((root / src).read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                out[(src, "x_" + node.name)] = node.lineno
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        out[(src, f"xǁ{node.name}ǁ{item.name}")] = item.lineno
    return out


def _cell(text: str, width: int = 90) -> str:
    text = text if len(text) <= width else text[: width - 1] + "…"
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def table(mutants: dict[str, dict], reasons: dict[str, str], *, log_only: bool) -> list[str]:
    """Markdown rows (file:line, mutant, original -> mutated, why) for the survivors of one kind."""
    lines = source_lines(Path("."))
    rows = []
    for key, v in mutants.items():
        if v["status"] != "survived" or v["log_only"] != log_only:
            continue
        short = key.rsplit(".", 1)[-1]
        base = short.rsplit("__mutmut_", 1)[0]
        offset, before, after = changed(v["orig"], v["mutant"])
        line = lines.get((v["file"], base), 0) + offset
        why = "log text (rule)" if log_only else reasons.get(short, "UNCLASSIFIED")
        rows.append((v["file"], line, short, before, after, why))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    out = ["| file:line | mutant | original → mutated | why it survives |", "|---|---|---|---|"]
    for file, line, short, before, after, why in rows:
        name = short.replace("xǁ", "").replace("ǁ", ".").removeprefix("x_")
        out.append(f"| {Path(file).name}:{line} | {name} | {_cell(before)} → {_cell(after)} | {why} |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["summary", "names", "survivors", "table"])
    parser.add_argument("--reasons", type=Path, default=Path("docs/mutation-survivors.json"))
    parser.add_argument("--root", type=Path, default=Path("mutants"))
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--log-only", action="store_true")
    kind.add_argument("--behaviour", action="store_true")
    parser.add_argument("--status", action="append")
    args = parser.parse_args(argv)
    mutants = load(args.root)
    if args.command == "summary":
        for label, subset in (
            ("all", mutants),
            ("without log-only", {k: v for k, v in mutants.items() if not v["log_only"]}),
        ):
            counts = collections.Counter(v["status"] for v in subset.values())
            tested = sum(n for s, n in counts.items() if s not in ("not checked",))
            killed = counts["killed"] + counts["timeout"] + counts["caught by type check"]
            rate = 100 * killed / tested if tested else 0.0
            print(
                f"{label}: {len(subset)} mutants, {dict(sorted(counts.items()))}; killed (incl. timeouts) {killed}/{tested} = {rate:.1f} %"
            )
        return 0
    selected = {
        k: v
        for k, v in mutants.items()
        if (not args.log_only or v["log_only"])
        and (not args.behaviour or not v["log_only"])
        and (not args.status or v["status"] in args.status)
    }
    if args.command == "table":
        reasons = json.loads(args.reasons.read_text()) if args.reasons.exists() else {}
        print("\n".join(table(mutants, reasons, log_only=args.log_only)))
        return 0
    if args.command == "names":
        print("\n".join(sorted(selected)))
        return 0
    for k, v in sorted(selected.items()):
        if v["log_only"] or v["status"] != "survived":
            continue
        _, before, after = changed(v["orig"], v["mutant"])
        print(f"{k.rsplit('.', 1)[-1]}\n    - {before}\n    + {after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
