"""Resolves a Kconfig tree with kconfiglib, the reference implementation,
for comparison with `kiln kconfig`.

usage: kconfiglib_resolve.py KCONFIG [CONFIG_IN|-] OUT [--min] [--time]
"""
import os
import sys
import time

import kconfiglib

HEADER = "# Kiln configuration, resolved by `kiln`; edit with `kiln menu` or `kiln config`.\n"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    top, config_in, out = args
    t0 = time.perf_counter()
    kconf = kconfiglib.Kconfig(top, warn=False)
    t1 = time.perf_counter()
    if config_in != "-":
        kconf.load_config(config_in)
    if "--min" in sys.argv:
        text = kconf._min_config_contents(HEADER)
    else:
        text = kconf._config_contents(HEADER)
    t2 = time.perf_counter()
    with open(out, "w") as f:
        f.write(text)
    if "--time" in sys.argv:
        print("kconfiglib: %d symbols; parse %.3f ms, resolve and write %.3f ms"
              % (len(kconf.unique_defined_syms), (t1 - t0) * 1e3, (t2 - t1) * 1e3), file=sys.stderr)


if __name__ == "__main__":
    main()
