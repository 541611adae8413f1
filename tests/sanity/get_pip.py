"""Installs pip into ansible-test's empty sanity virtual environments, from PyPI.

ansible-test bootstraps pip into each sanity venv with a get-pip script it
downloads from ci-files.testing.ansible.com, a host this machine may not reach.
It takes the script from its cache when present, so the sanity stage puts this
file there: it runs pip from the pip wheel beside it (fetched from PyPI by the
stage) to install the pip version ansible-test asked for.

Called the way ansible-test calls get-pip:
  python get_pip.py --disable-pip-version-check pip==24.2 --no-setuptools --no-wheel
"""

import glob
import os
import sys

# get-pip's own options; the pip install below must not see them.
GET_PIP_OPTIONS = {"--no-setuptools", "--no-wheel"}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    wheels = sorted(glob.glob(os.path.join(here, "pip-*.whl")))
    if not wheels:
        sys.exit(f"no pip wheel beside {__file__}; the sanity stage downloads one there")
    # A pip wheel is importable as it is: pip supports running from it.
    sys.path.insert(0, wheels[-1])
    from pip._internal.cli.main import main as pip_main

    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_OPTIONS]
    sys.exit(pip_main(["install", "--find-links", here, *args]))


if __name__ == "__main__":
    main()
