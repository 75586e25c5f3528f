"""The item-id syntax, in one place. A dataset item is a string:

- ``/abs/path/image.png`` (or ``.jpg``, ``.dcm``...): a file;
- ``/abs/path/data.npz::<array>[<index>]``: one image of an array inside an ``.npz`` file (MedMNIST);
- ``<item>@@<view>``: a derived view of an item (pretraining's greyscale copies of photos);
- ``dicomweb:<root>/studies/<S>/series/<E>/instances/<I>``: an instance on a PACS (:mod:`medvlkit.data.dicomweb`).

:func:`item_stamp` is what identifies an item's content cheaply, for the embedding cache and results' identities:
the size and modification time of its file, or the SOP Instance UID of a DICOMweb instance.
"""

from __future__ import annotations

import os
import re

NPZ_SEP, VIEW_SEP, DICOMWEB = "::", "@@", "dicomweb:"
_NPZ_MEMBER = re.compile(r"(?P<key>[^\[]+)\[(?P<index>\d+)\]")


def npz_item(path: str, key: str, index: int) -> str:
    """The id of image ``index`` of array ``key`` in the ``.npz`` file ``path``."""
    return f"{path}{NPZ_SEP}{key}[{index}]"


def is_npz_item(item: str) -> bool:
    return NPZ_SEP in item and not is_dicomweb_item(item)


def is_dicomweb_item(item: str) -> bool:
    """An instance on a PACS (``dicomweb:...``; its URL may hold ``::``, an IPv6 host)."""
    return item.startswith(DICOMWEB)


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
    """The file an item is read from (before any view or npz member); a DICOMweb item is its own."""
    base = split_view(item)[0]
    return base if is_dicomweb_item(base) else base.split(NPZ_SEP, 1)[0]


def item_stamp(item: str) -> str:
    """What identifies the content behind an item cheaply: ``size|mtime_ns`` of its file (``missing`` when there is
    none), or ``sop-uid`` for a DICOMweb instance, whose SOP Instance UID (in the item) names one content by DICOM's
    rules. The embedding cache's keys and results' dataset identities both use it."""
    if is_dicomweb_item(item):
        return "sop-uid"
    try:
        st = os.stat(item_file(item))
    except OSError:
        return "missing"
    return f"{st.st_size}|{st.st_mtime_ns}"
