#!/usr/bin/env bash
# A realistic data-service environment of 24 distributions (numpy, pandas,
# pydantic-core, SQLAlchemy, Flask and what they need), in two versions, each
# a separate `pip install --target`:
#   OUT/v1/site-packages
#   OUT/v2/site-packages   the same with requests 2.31.0 bumped to 2.32.3
# Usage: python-large-env.sh OUT. Needs pip and, once, the network (PyPI).
set -euo pipefail
out=${1:?usage: python-large-env.sh OUT}
v1=(numpy==1.26.4 pandas==2.2.2 python-dateutil==2.9.0.post0 pytz==2024.1 tzdata==2024.1
    six==1.16.0 pydantic==2.7.1 pydantic-core==2.18.2 typing-extensions==4.11.0
    annotated-types==0.6.0 sqlalchemy==2.0.30 greenlet==3.0.3 flask==3.0.3
    werkzeug==3.0.3 jinja2==3.1.4 markupsafe==2.1.5 itsdangerous==2.2.0 click==8.1.7
    blinker==1.8.2 requests==2.31.0 urllib3==2.2.1 idna==3.7 charset-normalizer==3.3.2
    certifi==2024.2.2)
v2=("${v1[@]/requests==2.31.0/requests==2.32.3}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
install() { python3 -m pip install -q --no-deps --only-binary=:all: --target "$work/$1/site-packages" "${@:2}"; }
install v1 "${v1[@]}"
sleep 1
install v2 "${v2[@]}"
rm -rf "$out"
mkdir -p "$(dirname "$out")"
mkdir "$out"
mv "$work/v1" "$work/v2" "$out/"
echo "python-large set: ${#v1[@]} distributions, $(du -sh "$out/v1/site-packages" | cut -f1); v2 bumps requests"
