"""The repository root on ``sys.path``, for the harnesses the benches share with the tests.

``python bench/bench_x.py`` puts only ``bench/`` on the path: ``framecdn`` is installed,
but ``tests/nginx_fixtures.py`` and ``tests/orthanc_fixtures.py`` are not. A bench
imports ``ROOT`` from here before it imports those, so the imports stay at the top.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
