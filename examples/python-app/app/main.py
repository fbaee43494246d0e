"""The sample application of examples/python-app."""

import acme.plugin
import greeting
import tinyutil
from acme.core import REGISTRY


def main():
    print(greeting.greet("blocks"))
    print(tinyutil.shout("greeting " + greeting.__version__))
    print("acme plugins:", ", ".join(sorted(REGISTRY)), "via", acme.plugin.NAME)


if __name__ == "__main__":
    main()
