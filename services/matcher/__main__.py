"""`python -m services.matcher`: the matcher alone, configured from MIXIP_* variables."""

import os

# One BLAS thread: the inference pool already keeps every core busy, and numpy's and faiss's
# BLAS thread pools would fight over them (a 10^4-face exact search went from 0.25 ms to
# 6-12 ms with faiss loaded). Set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from mixip.runtime.media import cap_image_decoders
from mixip.runtime.server import serve


def main() -> int:
    cap_image_decoders()  # before cv2 is imported: OpenCV reads its pixel limit on loading
    from services.matcher.app import build

    return serve("matcher", build)


raise SystemExit(main())
