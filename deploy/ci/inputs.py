"""Turns deploy/ files into what the validators in deploy/check.sh read.

  inputs.py yaml-to-json FILE...      every YAML document of the files, as one JSON array
  inputs.py dashboard-rules FILE      the PromQL of a Grafana dashboard's panels as a Prometheus
                                      rules file, so `promtool check rules` parses every query
  inputs.py scrape-config FILE        a Prometheus config with kubernetes_sd_configs replaced by
                                      an empty static_configs: Debian's promtool is built without
                                      Kubernetes discovery and refuses the field; the rest (jobs,
                                      relabelling rules and their regexes) is still checked

Output is JSON, which promtool reads as YAML. Needs PyYAML (a kubernetes-validate dependency).
"""

import json
import re
import sys

import yaml


def yaml_docs(paths):
    docs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    return docs


def panels(dashboard):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)  # rows hold their panels when collapsed


def dashboard_rules(path):
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    rules = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if not expr:
                continue
            # Grafana's interval variables become a duration, template variables a regex
            # (every one of ours is used in a =~ matcher).
            expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
            expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
            record = f"dashboard:panel_{panel['id']}_{target.get('refId', 'A')}"
            rules.append({"record": record, "expr": expr})
    if not rules:
        sys.exit(f"{path}: no PromQL found")
    return {"groups": [{"name": "dashboard", "rules": rules}]}


def scrape_config(path):
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    for job in config.get("scrape_configs", []):
        if job.pop("kubernetes_sd_configs", None) is not None:
            job.setdefault("static_configs", [])
    return config


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "yaml-to-json":
        out = yaml_docs(args)
    elif command == "dashboard-rules":
        out = dashboard_rules(args[0])
    elif command == "scrape-config":
        out = scrape_config(args[0])
    else:
        sys.exit(f"unknown command {command!r}")
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
