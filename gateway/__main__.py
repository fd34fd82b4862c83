"""`python -m gateway`: the client-facing gateway, configured from MIXIP_* variables."""

from mixip.runtime.media import cap_image_decoders
from mixip.runtime.server import serve


def main() -> int:
    cap_image_decoders()  # previews decode photos; OpenCV reads its pixel limit on loading
    from gateway.app import build

    return serve("gateway", build)


raise SystemExit(main())
