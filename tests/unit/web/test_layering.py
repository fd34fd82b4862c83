"""The review page stands beside the command line, not on it (issue 18): what both need (the
gateway connection, the one-line user error) lives in mixip.runtime."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_review_page_imports_nothing_of_the_command_line():
    script = (
        "import json, sys\n"
        "import mixip.web.__main__, mixip.web.app\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    modules = json.loads(done.stdout)
    assert [m for m in modules if m == "mixip.cli" or m.startswith("mixip.cli.")] == []
