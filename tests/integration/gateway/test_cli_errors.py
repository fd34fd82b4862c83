"""A refused call reads in the command line's words (a real gateway, the in-process `mixip` of
the `cli` fixture): bad fields are named as the user passed them, not by the contract's field
names, and a typo'd project or talent is an error that says what exists."""

from __future__ import annotations

import json


def test_a_bad_file_is_named_the_file_not_chunk(cli, tmp_path):
    fake = tmp_path / "photo.jpg"
    fake.write_text("not a photo")
    code, out, err = cli("match", str(fake), "--project", "film-1")
    assert code == 1 and out == ""
    assert err.startswith("mixip: invalid argument: the file: ") and "chunk" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_typo_in_a_project_suggests_the_project_and_how_to_create_it(cli, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8 not read: the project is checked before the upload")
    code, _, err = cli("match", str(photo), "--project", "flim-1")
    assert code == 1
    assert "no project 'flim-1'; did you mean 'film-1'?" in err
    assert "mixip projects create flim-1" in err
    code, _, err = cli("consent", "grant", "astronaut", "--scope", "usage", "--project", "x-9")
    assert code == 1 and "no project 'x-9': create it with" in err  # nothing close: no guess
    code, out, _ = cli("projects", "list", "--json")
    assert [p["project_id"] for p in json.loads(out)["projects"]] == ["film-1"]


def test_erasing_a_typo_is_an_error_and_erasing_again_is_not(cli):
    code, _, err = cli("erase", "astronuat", "--yes")
    assert code == 1 and err.startswith("mixip: not found: no talent 'astronuat'")
    assert cli("erase", "astronaut", "--yes")[0] == 0
    assert cli("erase", "astronaut", "--yes")[0] == 0  # idempotent for a talent it knew
