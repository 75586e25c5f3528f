"""The item-id syntax, in one place. A dataset item is a string:

- ``/abs/path/image.png`` (or ``.jpg``, ``.dcm``...): a file;
- ``/abs/path/data.npz::<array>[<index>]``: one image of an array inside an ``.npz`` file (MedMNIST);
- ``<item>@@<view>``: a derived view of an item (pretraining's greyscale copies of photos).

The file part of any item is what the embedding cache fingerprints (size and modification time).
"""

from __future__ import annotations

import re

NPZ_SEP, VIEW_SEP = "::", "@@"
_NPZ_MEMBER = re.compile(r"(?P<key>[^\[]+)\[(?P<index>\d+)\]")


def npz_item(path: str, key: str, index: int) -> str:
    """The id of image ``index`` of array ``key`` in the ``.npz`` file ``path``."""
    return f"{path}{NPZ_SEP}{key}[{index}]"


def is_npz_item(item: str) -> bool:
    return NPZ_SEP in item


def parse_npz_item(item: str) -> tuple[str, str, int] | None:
    """(npz path, array key, index) of an npz item; None when the part after ``::`` is malformed."""
    path, member = item.split(NPZ_SEP, 1)
    m = _NPZ_MEMBER.fullmatch(member)
    return (path, m["key"], int(m["index"])) if m else None


def view_item(item: str, view: str) -> str:
    """The id of ``view`` (a name in ``pretrain.towers.VIEWS``) of ``item``."""
    return f"{item}{VIEW_SEP}{view}"


def split_view(item: str) -> tuple[str, str]:
    """(the underlying item, the view name or '')."""
    base, _, view = item.partition(VIEW_SEP)
    return base, view


def item_file(item: str) -> str:
    """The file an item is read from (before any view or npz member)."""
    return split_view(item)[0].split(NPZ_SEP, 1)[0]
