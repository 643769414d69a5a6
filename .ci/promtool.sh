#!/usr/bin/env bash
# Checks the monitoring in deploy/monitoring/: the Prometheus config, its rules and their unit
# tests (promtool), then the Grafana dashboards (valid JSON, unique uids, and PromQL that names
# only the metrics the services export, deploy/monitoring/metrics.txt, or the recording rules).
# A metric renamed in the code but not here, or a typo in a panel, fails.
set -euo pipefail
cd "$(dirname "$0")/.."
mon=deploy/monitoring
prom=$mon/prometheus

command -v promtool >/dev/null 2>&1 || { echo "promtool not found (apt-get install prometheus, or a Prometheus release)"; exit 1; }
command -v python3 >/dev/null 2>&1 || { echo "python3 not found"; exit 1; }

log() { printf '\n== %s\n' "$*"; }

log "promtool check config"
promtool check config "$prom/prometheus.yml"

log "promtool check rules"
promtool check rules "$prom"/rules/*.yml

log "promtool test rules"
promtool test rules "$prom"/tests/*.yml

log "metric names in rules and dashboards"
python3 - "$mon" <<'PY'
"""Every metric a rule or a dashboard panel reads must be exported by the services or recorded."""
import glob
import json
import os
import re
import sys

mon = sys.argv[1]
problems = []

# The exported series: `name type` per line, `#` comments.
exported, histograms = set(), set()
with open(os.path.join(mon, "metrics.txt")) as f:
    for n, line in enumerate(f, 1):
        line = line.split("#", 1)[0].split()
        if not line:
            continue
        if len(line) != 2 or line[1] not in ("counter", "gauge", "histogram"):
            problems.append(f"metrics.txt:{n}: expected `name counter|gauge|histogram`")
            continue
        exported.add(line[0])
        if line[1] == "histogram":
            histograms.add(line[0])

def rules_text(path):
    with open(path) as f:
        return f.read().splitlines()

# Recording rules: `record: name` (the rule files are block-style YAML, one key a line).
recording_file = os.path.join(mon, "prometheus", "rules", "recording.yml")
recorded = {m.group(1) for line in rules_text(recording_file)
            if (m := re.match(r"\s*(?:-\s+)?record:\s*(\S+)\s*$", line))}
if not recorded:
    problems.append(f"{recording_file}: no recording rules found")

def rule_exprs(path):
    """(line number, expression) of each `expr:`, plain or a block scalar (| or >)."""
    lines = rules_text(path)
    i = 0
    while i < len(lines):
        m = re.match(r"(\s*)(?:-\s+)?expr:\s*(.*?)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, indent, value = i + 1, len(m.group(1)), m.group(2)
        i += 1
        if value[:1] in ("|", ">"):
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i])
                i += 1
            value = "\n".join(block)
        elif value[:1] in ("'", '"') and value[-1:] == value[:1]:
            value = value[1:-1]
        yield start, value

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "offset", "bool", "inf", "nan"}

def metric_names(expr):
    """The metric names a PromQL expression selects (Grafana's $variables allowed)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # strings
    expr = re.sub(r"\{[^{}]*\}", " ", expr)                                         # label matchers
    expr = re.sub(r"\[[^\[\]]*\]", " ", expr)                                       # ranges, subqueries
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", expr)
    expr = re.sub(r"\$\{[^}]*\}|\$\w+", " ", expr)                                  # $variables
    names = set()
    for m in re.finditer(r"(?<![\w:.])[A-Za-z_:][\w:]*", expr):
        rest = expr[m.end():].lstrip()
        if rest.startswith("(") or m.group(0) in KEYWORDS:
            continue  # a function or an aggregation, or a keyword
        names.add(m.group(0))
    return names

# The series Prometheus itself writes for every target and alert.
PROMETHEUS = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
              "scrape_series_added", "ALERTS", "ALERTS_FOR_STATE"}

def known(name):
    if name in exported or name in recorded or name in PROMETHEUS:
        return True
    base, _, suffix = name.rpartition("_")
    return suffix in ("bucket", "sum", "count") and base in histograms

def check(where, expr):
    if not expr.strip():
        problems.append(f"{where}: empty expression")
    for name in sorted(metric_names(expr)):
        if not known(name):
            problems.append(f"{where}: unknown metric {name!r} (not in metrics.txt, not a recording rule)")

for path in sorted(glob.glob(os.path.join(mon, "prometheus", "rules", "*.yml"))):
    for line, expr in rule_exprs(path):
        check(f"{path}:{line}", expr)

def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))  # a collapsed row holds its panels

uids = {}
dashboards = sorted(glob.glob(os.path.join(mon, "grafana", "dashboards", "*.json")))
if not dashboards:
    problems.append("no dashboards in grafana/dashboards/")
for path in dashboards:
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        problems.append(f"{path}: not valid JSON: {e}")
        continue
    uid = d.get("uid")
    if not uid:
        problems.append(f"{path}: no uid")
    elif uid in uids:
        problems.append(f"{path}: uid {uid!r} is also {uids[uid]}'s")
    else:
        uids[uid] = path
    ids = [p.get("id") for p in panels(d.get("panels", []))]
    if len(ids) != len(set(ids)):
        problems.append(f"{path}: panel ids are not unique")
    for p in panels(d.get("panels", [])):
        for t in p.get("targets", []):
            if "expr" in t:
                check(f"{path}: panel {p.get('title')!r} ({t.get('refId')})", t["expr"])
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        # Grafana's own functions: label_values([metric,] label), query_result(expr).
        m = re.fullmatch(r"\s*label_values\(\s*(?:(.*),\s*)?\w+\s*\)\s*", q)
        if m:
            q = m.group(1) or ""
        m = re.fullmatch(r"\s*query_result\((.*)\)\s*", q, re.S)
        if m:
            q = m.group(1)
        if q.strip():
            check(f"{path}: variable {v.get('name')!r}", q)

if problems:
    print("\n".join(problems))
    print(f"\nFAILED: {len(problems)} problem(s) in {mon}")
    sys.exit(1)
print(f"  SUCCESS: {len(dashboards)} dashboards, {len(recorded)} recorded names; every metric is "
      f"exported (metrics.txt: {len(exported)}) or recorded")
PY

log "metrics.txt against the code"
python3 - "$mon/metrics.txt" <<'PY'
"""metrics.txt lists exactly the metrics the code records: none missing, none stale."""
import glob
import re
import sys

listed = set()
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].split()
    if line:
        listed.add(line[0])
recorded = set()
for path in glob.glob("crates/**/*.rs", recursive=True):
    text = open(path).read()
    recorded |= set(re.findall(r'\b(?:counter|gauge|histogram)!\(\s*"([a-z_:]+)"', text))
missing, stale = sorted(recorded - listed), sorted(listed - recorded)
if missing or stale:
    for name in missing:
        print(f"  {name}: recorded by the code, not in metrics.txt")
    for name in stale:
        print(f"  {name}: in metrics.txt, recorded nowhere in the code")
    print("\nFAILED: metrics.txt and the code disagree")
    sys.exit(1)
print(f"  SUCCESS: the code records the {len(recorded)} metrics metrics.txt lists")
PY
