"""Make sure Debian's Chromium is on this machine for the real-browser test of the app.

Installs the `chromium` package with apt-get when /usr/bin/chromium is missing and we can
(root, or passwordless sudo). The browser test then drives it through Playwright; it is
never downloaded by Playwright itself (that needs a host this machine cannot reach).
"""

import os
import shutil
import subprocess
import sys

CHROMIUM = "/usr/bin/chromium"


def main() -> int:
    if os.path.exists(CHROMIUM):
        return 0
    if shutil.which("apt-get") is None:
        print(f"{CHROMIUM} is missing and there is no apt-get; install Chromium by hand", file=sys.stderr)
        return 1
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("installing Debian's chromium for the browser test (apt-get)...", flush=True)
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
    ):
        done = subprocess.run(prefix + cmd, env=env, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            print(f"'{' '.join(cmd)}' failed with exit code {done.returncode}", file=sys.stderr)
            return 1
    return 0 if os.path.exists(CHROMIUM) else 1


if __name__ == "__main__":
    sys.exit(main())
