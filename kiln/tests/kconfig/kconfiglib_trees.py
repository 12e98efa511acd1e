"""Reference outputs of kconfiglib for one Kconfig tree: the .config and the
minimal config with no input (alldefconfig) and for N random configurations,
for comparison with `kiln kconfig`.

usage: kconfiglib_trees.py KCONFIG OUTDIR N SEED

Writes OUTDIR/refused (kconfiglib's error) when kconfiglib refuses the tree;
otherwise OUTDIR/alldef.{out,min} and, for each i < N, OUTDIR/random-i.config
(random values for every bool and tristate it can take, m included, and a
random member of some choices) with OUTDIR/random-i.{out,min}.
"""
import os
import random
import sys

import kconfiglib

from kconfiglib_resolve import HEADER


def outputs(kconf, base):
    with open(base + ".out", "w") as f:
        f.write(kconf._config_contents(HEADER))
    with open(base + ".min", "w") as f:
        f.write(kconf._min_config_contents(HEADER))


def main():
    top, outdir, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    try:
        kconf = kconfiglib.Kconfig(top, warn=False)
    except Exception as e:  # KconfigError, or an OSError from a sourced path
        with open(os.path.join(outdir, "refused"), "w") as f:
            f.write(str(e))
        return
    outputs(kconf, os.path.join(outdir, "alldef"))
    rng = random.Random(seed)
    for i in range(n):
        for sym in kconf.unique_defined_syms:
            if sym.orig_type in (kconfiglib.BOOL, kconfiglib.TRISTATE) and sym.assignable:
                sym.set_value(rng.choice(sym.assignable))
        for choice in kconf.unique_choices:
            if choice.syms and rng.random() < 0.5:
                choice.syms[rng.randrange(len(choice.syms))].set_value(2)
        base = os.path.join(outdir, "random-%d" % i)
        kconf.write_config(base + ".config", header="")
        kconf.load_config(base + ".config")
        outputs(kconf, base)


if __name__ == "__main__":
    main()
