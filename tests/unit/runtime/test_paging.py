"""The paging helpers every List RPC and every whole-listing caller share."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mixip.runtime.errors import InvalidArgument
from mixip.runtime.paging import (
    decode_page_token,
    every_page,
    fetch_limit,
    next_page_token,
    page_of,
)


def test_a_page_query_fetches_one_row_beyond_the_page():
    assert fetch_limit(3) == 4


def test_more_rows_than_the_page_cut_it_and_continue_after_its_last_row():
    page, position = page_of([10, 20, 30, 40], 3, lambda row: row)
    assert (page, position) == ([10, 20, 30], 30)


@pytest.mark.parametrize("rows", [[], [10], [10, 20, 30]])
def test_rows_that_fit_the_page_are_the_last_page(rows):
    assert page_of(rows, 3, lambda row: row) == (rows, None)


def test_the_next_token_is_empty_at_the_end_and_decodes_to_the_position_otherwise():
    assert next_page_token(None, {"a": "acct"}) == ""
    token = next_page_token(30, {"a": "acct"})
    assert decode_page_token(token, {"a": "acct"}) == 30
    with pytest.raises(InvalidArgument):
        decode_page_token(token, {"a": "another"})


@dataclass
class _Page:
    items: list[int]
    next_page_token: str


def test_every_page_follows_the_tokens_until_an_empty_one():
    pages = {"": _Page([1, 2], "b"), "b": _Page([3], "c"), "c": _Page([], "")}
    asked: list[str] = []

    def fetch(token: str) -> _Page:
        asked.append(token)
        return pages[token]

    assert [i for page in every_page(fetch) for i in page.items] == [1, 2, 3]
    assert asked == ["", "b", "c"]
