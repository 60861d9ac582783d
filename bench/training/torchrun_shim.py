#!/usr/bin/env python3
"""torchrun for Debian's torch 1.13 on Python 3.11: patches Std.from_str, then runs torch.distributed.run.

On Python 3.11, iterating an IntFlag yields only its canonical single-bit members, so torch
1.13's Std.from_str ("for s in Std: if s == v") finds no member for 0 (NONE) or 3 (ALL) and
returns None; torchrun then fails in to_map with "'NoneType' object has no attribute 'get'"
for the default `--redirects 0`. The patch converts with Std(int(v)), as later torch does.
Usage: python3 torchrun_shim.py [torchrun arguments...]
"""

import re
import sys

from torch.distributed.elastic.multiprocessing import api


def _from_str(cls, vm):
    if re.match(api._VALUE_REGEX, vm):
        return cls(int(vm))
    if re.match(api._MAPPING_REGEX, vm):
        return {int(i): cls(int(v)) for i, v in (m.split(":") for m in vm.split(","))}
    raise ValueError("%s does not match: <%s> or <%s>" % (vm, api._VALUE_REGEX, api._MAPPING_REGEX))


api.Std.from_str = classmethod(_from_str)

from torch.distributed.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
