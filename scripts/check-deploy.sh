#!/usr/bin/env bash
# Checks the monitoring that docker-compose.yml runs, offline:
# - deploy/prometheus: `promtool check config` (with the rule files it names),
#   `promtool check rules`, and the alert rules' unit tests
#   (`promtool test rules alerts.test.yml`);
# - scripts/check-deploy-promql.py: the Grafana dashboard is valid and every
#   query of the dashboard and of the alert rules uses PulseHub's metric and
#   label names;
# - every alert rule's `runbook_url` points at its section of docs/runbooks.md;
# - `docker compose config -q`, when Docker's compose plugin is installed.
#
# promtool: $PROMTOOL if set, else the one on PATH, else the one of Debian's
# `prometheus` package: the package is downloaded with `apt-get download` and
# only promtool is unpacked, to target/promtool/ (nothing is installed; the
# next run reuses it). `apt-get install -y prometheus` installs it for good.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check-deploy: $*" >&2; exit 1; }

unpack_debian_promtool() {
    local dir=target/promtool log
    log=$(mktemp)
    mkdir -p "$dir"
    rm -f "$dir"/prometheus_*.deb
    echo "check-deploy: no promtool on PATH; unpacking it from Debian's prometheus package into $dir" >&2
    if ! (cd "$dir" && apt-get download prometheus) > "$log" 2>&1; then
        # A machine whose package lists were never fetched knows no candidate.
        if [ "$(id -u)" = 0 ] && apt-get update -qq >> "$log" 2>&1 \
            && (cd "$dir" && apt-get download prometheus) >> "$log" 2>&1; then
            :
        else
            cat "$log" >&2
            fail "could not download Debian's prometheus package for promtool" \
                "(try: apt-get update && apt-get install -y prometheus, or set PROMTOOL)"
        fi
    fi
    dpkg-deb --fsys-tarfile "$dir"/prometheus_*.deb | tar -x -C "$dir" --strip-components=3 ./usr/bin/promtool \
        || fail "Debian's prometheus package has no ./usr/bin/promtool"
    rm -f "$dir"/prometheus_*.deb "$log"
}

if [ -n "${PROMTOOL:-}" ]; then
    promtool=$PROMTOOL
elif command -v promtool > /dev/null; then
    promtool=$(command -v promtool)
else
    promtool=target/promtool/promtool
    [ -x "$promtool" ] || unpack_debian_promtool
fi
"$promtool" --version > /dev/null 2>&1 || fail "$promtool does not run"
echo "check-deploy: using $promtool ($("$promtool" --version 2>&1 | head -n1))"

"$promtool" check config deploy/prometheus/prometheus.yml
"$promtool" check rules deploy/prometheus/alerts.yml
"$promtool" test rules deploy/prometheus/alerts.test.yml

if ! python3 -c 'import yaml' 2> /dev/null; then
    echo "check-deploy: installing PyYAML for the dashboard check (pip)" >&2
    python3 -m pip install --quiet pyyaml || fail "PyYAML is missing and pip could not install it"
fi
python3 scripts/check-deploy-promql.py

# Every alert rule names its runbook, and the runbook has that section.
python3 - <<'PY' || fail "an alert rule's runbook_url has no section in docs/runbooks.md"
import re, sys, yaml
rules = [r for g in yaml.safe_load(open("deploy/prometheus/alerts.yml"))["groups"] for r in g["rules"]]
anchors = {h.strip().lower().replace(" ", "-")
           for h in re.findall(r"^## (.+)$", open("docs/runbooks.md").read(), re.M)}
missing = [r["alert"] for r in rules
           if r.get("annotations", {}).get("runbook_url") != f"docs/runbooks.md#{r['alert'].lower()}"
           or r["alert"].lower() not in anchors]
if missing:
    print("check-deploy: without a runbook section:", ", ".join(missing), file=sys.stderr)
    sys.exit(1)
print(f"check-deploy: all {len(rules)} alert rules link their runbook section")
PY

if docker compose version > /dev/null 2>&1; then
    docker compose config -q
    echo "check-deploy: docker compose config: docker-compose.yml is valid"
else
    echo "check-deploy: docker compose is not available here: skipped \`docker compose config -q\`"
fi
echo "check-deploy: all checks passed"
