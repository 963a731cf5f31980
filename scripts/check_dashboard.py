#!/usr/bin/env python3
"""The Grafana dashboard parses as JSON, and every gemma_* metric its panels (and the alert rules) query is one
the processes export, as documented in monitoring/METRICS.md.

usage: check_dashboard.py DASHBOARD.json METRICS.md RULES.yml
"""
import json
import re
import sys


def metric_names(expr, histograms):
    names = set()
    for name in re.findall(r"\b(gemma_[a-z0-9_]+)", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(base if base in histograms else name)
    return names


def main():
    dashboard_path, table_path, rules_path = sys.argv[1:4]
    dashboard = json.load(open(dashboard_path))
    rows = re.findall(r"^\| `(gemma_[a-z0-9_]+)` \| (\w+) \|", open(table_path).read(), re.M)
    documented = {name for name, _ in rows}
    histograms = {name for name, kind in rows if kind == "histogram"}
    errors, queried = [], set()
    panels = []
    for panel in dashboard.get("panels", []):
        # A row only groups panels (a collapsed row holds its own); it has no query of its own.
        if panel.get("type") == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    if not panels:
        errors.append("the dashboard has no panels")
    for panel in panels:
        targets = panel.get("targets", [])
        if not targets:
            errors.append(f"panel \"{panel.get('title')}\" has no query")
        for target in targets:
            for name in metric_names(target.get("expr", ""), histograms):
                queried.add(name)
                if name not in documented:
                    errors.append(f"panel \"{panel.get('title')}\" queries {name}, which no process exports")
    for name in metric_names(open(rules_path).read(), histograms):
        if name not in documented:
            errors.append(f"the alert rules query {name}, which no process exports")
    for e in errors:
        print("FAIL:", e)
    print(f"{len(panels)} panels query {len(queried)} metrics of {len(documented)} documented; {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
