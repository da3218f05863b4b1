"""Every compiled file in the packaged venv must still load after the dh_* steps that
rewrite ELF files (a broken .so otherwise only shows on the target).

Run with the venv's python, the site-packages folder as the argument. Extension
modules (those exporting PyInit_<name>) are imported; plain shared libraries, such
as the ones pycryptodomex loads itself through ctypes, are opened with dlopen.
"""

import ctypes
import importlib
import sys
from pathlib import Path

site = Path(sys.argv[1])
sys.path.insert(0, str(site))
count = 0
for library in sorted(site.rglob("*.so")):
    relative = library.relative_to(site)
    name = relative.name.split(".")[0]
    if name == "_testcapi":  # multidict's test helper needs CPython's test module
        continue
    loaded = ctypes.CDLL(str(library))
    if hasattr(loaded, f"PyInit_{name}"):
        importlib.import_module(".".join([*relative.parent.parts, name]))
    count += 1
print(count, "compiled files load")
