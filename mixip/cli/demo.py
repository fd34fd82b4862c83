"""`mixip demo` (`make demo`): the main job on the embedded defaults, start to end, offline.

Starts the mesh in a temporary data directory, records consent for one bundled public-domain
face (scikit-image's astronaut, Eileen Collins) and enrolls it, matches a group image with both
bundled faces (plus matplotlib's Grace Hopper), prints the labels, writes the annotated image,
records the producer's review decision on the cleared face (and says where the review page is),
erases the talent, shows that the audit log still verifies and that nothing links to the talent
any more, and stops the mesh.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

import cv2
import grpc
import numpy as np

from mixip.cli.annotate import write_image
from mixip.cli.commands import audit, consent, match, projects, review, talent
from mixip.cli.dev_mesh import start_mesh
from mixip.cli.output import Capture, CliError, Output
from mixip.runtime.connection import DEV_KEY_FILE, Connection
from mixip.runtime.errors import error_details

TALENT, PROJECT = "eileen-collins", "demo-film"


def bundled_faces() -> tuple[Path, Path]:
    """The two public-domain photographs that ship inside scikit-image and matplotlib (found
    without importing either package)."""
    found = []
    for package, relative in (
        ("skimage", "data/astronaut.png"),
        ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ):
        spec = importlib.util.find_spec(package)
        places = spec.submodule_search_locations if spec else None
        path = Path(places[0]) / relative if places else None
        if path is None or not path.exists():
            raise CliError(f"the demo needs {package}'s sample data ({relative}): run `make demo`")
        found.append(path)
    return found[0], found[1]


def group_image(first: Path, second: Path, target: Path, height: int = 600) -> None:
    images = []
    for path in (first, second):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise CliError(f"cannot read {path}")
        images.append(image)
    resized = [cv2.resize(i, (round(i.shape[1] * height / i.shape[0]), height)) for i in images]
    write_image(target, np.hstack(resized))


def write_samples(directory: Path, out: Output) -> int:
    """`mixip demo --samples DIR`: the README's photos, made from the bundled ones: face.jpg
    (the astronaut alone, to enroll) and group.jpg (her beside Grace Hopper, to match)."""
    directory.mkdir(parents=True, exist_ok=True)
    astronaut, hopper = bundled_faces()
    face, group = directory / "face.jpg", directory / "group.jpg"
    image = cv2.imread(str(astronaut), cv2.IMREAD_COLOR)
    if image is None:
        raise CliError(f"cannot read {astronaut}")
    write_image(face, image)
    group_image(astronaut, hopper, group)
    out.result(
        {"face": str(face), "group": str(group)},
        [
            f"wrote {face} (Eileen Collins, the astronaut: one face, to enroll)",
            f"wrote {group} (her beside Grace Hopper: two faces, to match)",
        ],
    )
    return 0


def run_demo(out_dir: Path, out: Output) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    astronaut, hopper = bundled_faces()
    group = out_dir / "group.jpg"
    group_image(astronaut, hopper, group)
    annotated = out_dir / "annotated.png"
    root = Path(tempfile.mkdtemp(prefix="mixip-demo-"))
    data_dir, key_dir = root / "data", root / "keys"  # keys apart from data, both removed after
    shown = Capture(echo=not out.as_json)  # people see each step; --json gets one summary
    say = shown.note if out.as_json else print
    mesh = None
    try:
        say(f"1. starting the mesh in {data_dir} (five services, embedded defaults)")
        mesh = start_mesh(data_dir, web=False, key_dir=key_dir)  # the scenario shows no page
        conn = Connection(data_dir, mesh.addresses["gateway"])

        say(f"\n2. project {PROJECT}, consent and enrollment of {TALENT} (the astronaut photo)")
        projects.create_project(conn, shown, project=PROJECT, name="Demo film")
        for scope, project in (("biometric", None), ("usage", PROJECT)):
            consent.record_consent(
                conn,
                shown,
                action="grant",
                talent=TALENT,
                scope=scope,
                project=project,
                method="demo-release",
                policy_version="2026-11",
                actor="demo",
            )
        talent.enroll_images(conn, shown, talent=TALENT, images=[str(astronaut)])

        say(f"\n3. matching a group photo (astronaut + Grace Hopper) for project {PROJECT}")
        match.match_file(conn, shown, file=str(group), project=PROJECT, annotate=str(annotated))
        before = shown.last["faces"]
        media_id = shown.last["media_id"]

        say("\n4. the producer's review: the cleared face is approved for release")
        cleared = next(i for i, f in enumerate(before) if f["label"] == "cleared")
        review.record_review(
            conn,
            shown,
            media=media_id,
            face=cleared,
            decision="approve",
            note="release form on file",
        )
        decision = shown.last
        say(
            "review in a browser: this demo's mesh and data are removed when it ends, so its "
            "page would be empty; the README's 'Try it' steps start `mixip up` in ./var, match "
            "into a project there and open the page it prints (sign in with the key in "
            f"var/{DEV_KEY_FILE})"
        )

        say(f"\n5. erasing {TALENT}")
        talent.erase_talent(conn, shown, talent=TALENT)
        receipt = shown.last

        say("\n6. after erasure: the log still verifies, nothing links to the talent")
        audit.verify_audit_log(conn, shown)
        verified = shown.last
        audit.list_audit_events(conn, shown, talent=TALENT)
        linked = len(shown.last["events"])
        try:
            talent.export_talent(conn, shown, talent=TALENT)
            raise CliError("the export still found data after erasure")
        except grpc.RpcError as exc:
            say(f"export of {TALENT}: {error_details(exc).one_line()}")
        match.match_file(conn, shown, file=str(group), project=PROJECT)
        after = shown.last["faces"]
        say(f"\nthe annotated image is {annotated}")
    finally:
        if mesh is not None:
            say("\n7. stopping the mesh")
            mesh.stop()
        shutil.rmtree(root, ignore_errors=True)
    out.result(
        {
            "labels_before_erasure": before,
            "review_decision": decision,
            "receipt": receipt,
            "audit": verified,
            "events_linked_after_erasure": linked,
            "labels_after_erasure": after,
            "annotated": str(annotated),
        },
        "demo finished",
    )
    return 0 if verified["ok"] and linked == 0 else 1
