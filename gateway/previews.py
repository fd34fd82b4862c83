"""Previews: a stored media, decrypted and drawn in memory with its faces boxed and labelled.

A photo is turned upright by its EXIF orientation (the boxes the matcher reported are in the
upright picture) and scaled to the requested size before its labels are drawn, so they stay
readable on a thumbnail; a video gives a contact sheet, one tile per face track at the frame
that decided its label. Faces are drawn as the caller's role sees them (gateway/role_views.py:
an uploader's preview boxes a photo's faces in grey, with no label). Every preview carries the
advisory legend. Nothing is written: the decrypted bytes and the picture live in memory for the
call only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.media_store import MediaStore, StorageError
from gateway.projects import Scope
from gateway.store import MediaRow
from gateway.uploads import StoredMedia, Uploads
from mixip.common.v1 import common_pb2
from mixip.runtime import logs
from mixip.runtime.annotate import Face, fit, jpeg, preview_photo, video_contact_sheet
from mixip.runtime.db import Database
from mixip.runtime.errors import NotFound

logger = logging.getLogger("mixip.gateway")

DEFAULT_MAX_SIDE = 640
MIN_MAX_SIDE = 64
MAX_MAX_SIDE = 2048
_LABELS = {
    common_pb2.FACE_LABEL_CLEARED: "cleared",
    common_pb2.FACE_LABEL_POSSIBLE: "possible",
    common_pb2.FACE_LABEL_UNKNOWN: "unknown",
}


@dataclass(frozen=True)
class Preview:
    image: bytes
    content_type: str
    width: int
    height: int


class Previews:
    def __init__(self, db: Database, uploads: Uploads, media_store: MediaStore) -> None:
        self.db = db
        self.uploads = uploads
        self.media_store = media_store

    def preview(self, scope: Scope, max_side: int, *, legend: bool = True) -> Preview:
        """The annotated JPEG of the media in the caller's scope (Projects.media_scope, READ),
        its longest side at most `max_side` pixels; without the legend for a page that shows it
        once itself."""
        stored = self.uploads.results(scope)
        with self.db.read() as session:
            row = session.get(MediaRow, scope.media_id)
            if row is None:  # purged since the results were read
                raise NotFound("no such media")
            owner, storage_key = row.account_id, row.storage_key
        try:
            data = self.media_store.get(owner, storage_key)
        except StorageError:
            raise NotFound(
                "the media's content is no longer stored", reason="MEDIA_CONTENT_MISSING"
            ) from None
        faces = [_face(f) for f in stored.faces]
        try:
            if _is_video(stored):
                picture = video_contact_sheet(data, faces, legend=legend)
            else:
                picture = preview_photo(data, faces, max_side, legend=legend)
        except ValueError:
            raise NotFound(
                "the stored media cannot be decoded", reason="MEDIA_UNDECODABLE"
            ) from None
        picture = fit(picture, max_side)
        logs.log(
            logger,
            "media previewed",
            account=scope.owner_account_id,
            media=scope.media_id,
            faces=len(faces),
        )
        height, width = picture.shape[:2]
        return Preview(jpeg(picture), "image/jpeg", int(width), int(height))


def _is_video(stored: StoredMedia) -> bool:
    return stored.media.kind == common_pb2.MEDIA_KIND_VIDEO


def _face(face: common_pb2.FaceResult) -> Face:
    return {
        "index": face.face_index,
        "label": _LABELS.get(face.label, "withheld"),  # UNSPECIFIED: withheld from the role
        "talent_id": face.talent_id or None,
        "similarity": face.similarity,
        "box": [face.box.x, face.box.y, face.box.width, face.box.height],
        "best_frame_seconds": face.best_frame_seconds,
        "ranges": [[r.start_seconds, r.end_seconds] for r in face.ranges],
    }
