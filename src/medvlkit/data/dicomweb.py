"""Images from a PACS over DICOMweb: QIDO-RS to find instances, WADO-RS to fetch them, STOW-RS to store results.

``--data dicomweb:<root>[/studies/<uid>[/series/<uid>]][/studies|/series|/instances][?<QIDO filters>]``, e.g.
``dicomweb:http://pacs:8042/dicom-web/instances?Modality=CR&StudyDate=20240101-20240131``:

- the query runs at the level the URL names (``/studies?...``, ``/series?...``, ``/instances?...``; instances when it
  names none) and every matching study or series is expanded to its instances; each answer is read in pages
  (``limit`` / ``offset``) until the PACS returns an empty page, so a server that caps its answers silently loses
  nothing; instances are listed in UID order whatever order the PACS answers in;
- each instance becomes the item ``dicomweb:<root>/studies/<S>/series/<E>/instances/<I>``. Its pixels are fetched
  when a task first reads it (:func:`fetch_instance`, called by :func:`medvlkit.data.io.read_image`), in the
  original transfer syntax, into ``$MEDVLKIT_CACHE/dicomweb/`` under its SOP Instance UID (which DICOM makes the
  identity of an instance's content), then read by the same DICOM reader, pixel limit and ``--on-error`` as a local
  file: a failed fetch is an unreadable image naming the instance, and a rerun fetches only what is missing;
- credentials come from the environment, never the command line: ``MEDVLKIT_DICOMWEB_TOKEN`` (a bearer token) or
  ``MEDVLKIT_DICOMWEB_USER`` and ``MEDVLKIT_DICOMWEB_PASSWORD`` (basic authentication); a URL with a user or
  password in it is refused;
- labels come from a CSV keyed by ``SOPInstanceUID``, ``SeriesInstanceUID`` or ``StudyInstanceUID`` (``--labels``),
  read by the same code as a label CSV of files (:mod:`medvlkit.data.adapters.dicomweb` makes the dataset).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from medvlkit.errors import ImageReadError, MedvlkitError

logger = logging.getLogger(__name__)

PREFIX = "dicomweb:"
PAGE_SIZE = 500
LEVELS = ("studies", "series", "instances")
TOKEN_ENV, USER_ENV, PASSWORD_ENV = "MEDVLKIT_DICOMWEB_TOKEN", "MEDVLKIT_DICOMWEB_USER", "MEDVLKIT_DICOMWEB_PASSWORD"
TIMEOUT_S = 60.0
# DICOM JSON tags of what the dataset keeps per instance
STUDY, SERIES, SOP = "0020000D", "0020000E", "00080018"
MODALITY, PATIENT_ID, SOP_CLASS = "00080060", "00100020", "00080016"
# SOP classes that hold no image (structured reports and key objects, presentation states, waveforms, encapsulated
# documents, raw data and registrations, RT plans/doses/structures): listed as not scored, never fetched
NOT_IMAGES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.", "1.2.840.10008.5.1.4.1.1.9.",
              "1.2.840.10008.5.1.4.1.1.104.", "1.2.840.10008.5.1.4.1.1.66", "1.2.840.10008.5.1.4.1.1.481.2",
              "1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.481.8")
_ITEM = re.compile(r"dicomweb:(?P<root>.+)/studies/(?P<study>[^/]+)/series/(?P<series>[^/]+)/instances/(?P<sop>[^/]+)")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


@dataclass(frozen=True)
class InstanceRef:
    """One instance on a PACS: the DICOMweb root it lives under and its three UIDs."""

    root: str
    study: str
    series: str
    sop: str

    @property
    def item(self) -> str:
        """The dataset item id of this instance."""
        return f"{PREFIX}{self.root}/studies/{self.study}/series/{self.series}/instances/{self.sop}"


@dataclass(frozen=True)
class Query:
    """A parsed ``dicomweb:`` data spec: the DICOMweb root, the query level, study/series UIDs the URL fixes, and
    the QIDO filters."""

    root: str
    level: str = "instances"
    study: str | None = None
    series: str | None = None
    filters: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def is_dicomweb(spec: object) -> bool:
    """True for a ``dicomweb:`` data spec or item."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_item(item: str) -> InstanceRef:
    """The instance an item id names.

    Raises:
        MedvlkitError: not a ``dicomweb:`` instance item.
    """
    m = _ITEM.fullmatch(item)
    if not m:
        raise MedvlkitError(f"{item}: not a DICOMweb instance (dicomweb:<root>/studies/<uid>/series/<uid>/instances/"
                            "<uid>)")
    return InstanceRef(m["root"], m["study"], m["series"], m["sop"])


def parse_spec(spec: str) -> Query:
    """Parse ``dicomweb:<url>`` (see the module docstring).

    Raises:
        MedvlkitError: not an http(s) URL, credentials in the URL, a malformed path or UID, a repeated filter.
    """
    url = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise MedvlkitError(f"--data {spec}: expected dicomweb:http(s)://host[:port]/<DICOMweb root>[?filters], "
                            "e.g. dicomweb:http://pacs:8042/dicom-web/instances?Modality=CR")
    if parts.username or parts.password:
        raise MedvlkitError(f"--data: the URL holds a user name or password; never put credentials on the command "
                            f"line: set {USER_ENV} and {PASSWORD_ENV} (or {TOKEN_ENV}) in the environment")
    segments = [s for s in parts.path.split("/") if s]
    first = next((i for i, s in enumerate(segments) if s in LEVELS), len(segments))
    root = urlunsplit((parts.scheme, parts.netloc, "/" + "/".join(segments[:first]), "", "")).rstrip("/")
    rest, study, series = segments[first:], None, None
    i = 0
    while i < len(rest):
        name = rest[i]
        uid = rest[i + 1] if i + 1 < len(rest) and rest[i + 1] not in LEVELS else None
        if name not in LEVELS or (uid and (name == "instances" or not _UID.fullmatch(uid))):
            raise MedvlkitError(f"--data {spec}: cannot read the path after the DICOMweb root ({'/'.join(rest)}); "
                                "expected [/studies/<uid>[/series/<uid>]][/studies|/series|/instances]")
        if uid:
            study, series = (uid, series) if name == "studies" else (study, uid)
        i += 2 if uid else 1
    level = rest[-1] if rest and rest[-1] in LEVELS else "instances"  # a path ending in a UID: its instances
    filters = tuple(parse_qsl(parts.query, keep_blank_values=True))
    names = [k for k, _ in filters]
    repeated = sorted({k for k in names if names.count(k) > 1})
    if repeated:
        raise MedvlkitError(f"--data {spec}: filter {', '.join(repeated)} given twice (a range is one value: "
                            "StudyDate=20240101-20240131)")
    if any(k.lower() in ("limit", "offset") for k in names):
        raise MedvlkitError(f"--data {spec}: leave out limit/offset; medvlkit reads every page of the answer itself")
    return Query(root, level, study, series, filters)


def credentials() -> dict[str, Any]:
    """The authentication the environment asks for: ``{"token": ...}``, ``{"user": ..., "password": ...}`` or {}.

    Raises:
        MedvlkitError: a user without a password (or the reverse), or both a token and a user.
    """
    token, user, password = (os.environ.get(k) for k in (TOKEN_ENV, USER_ENV, PASSWORD_ENV))
    if token and (user or password):
        raise MedvlkitError(f"set either {TOKEN_ENV} or {USER_ENV}/{PASSWORD_ENV}, not both")
    if bool(user) != bool(password):
        raise MedvlkitError(f"{USER_ENV} and {PASSWORD_ENV} go together; set both (or {TOKEN_ENV} instead)")
    return {"token": token} if token else {"user": user, "password": password} if user else {}


_CLIENTS: dict[tuple[int, str, str], Any] = {}


def client(root: str) -> Any:
    """A ``dicomweb_client.DICOMwebClient`` for ``root`` with the environment's credentials (one per process and
    root; loader worker processes make their own).

    Raises:
        MedvlkitError: the ``dicomweb`` extra is not installed, or the credentials are incomplete.
    """
    try:
        import requests
        from dicomweb_client.api import DICOMwebClient
    except ImportError:
        raise MedvlkitError("DICOMweb needs the dicomweb extra: pip install 'medvlkit[dicomweb]'") from None
    auth = credentials()
    key = (os.getpid(), root, repr(sorted(auth.items())))
    if key not in _CLIENTS:
        session = requests.Session()
        if "token" in auth:
            session.headers["Authorization"] = f"Bearer {auth['token']}"
        elif auth:
            session.auth = (auth["user"], auth["password"])
        logging.getLogger("retrying").setLevel(logging.ERROR)  # it logs each retried failure with a traceback
        c = DICOMwebClient(root, session=session, timeout=TIMEOUT_S)
        c.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=250)
        _CLIENTS[key] = c
    return _CLIENTS[key]


def pacs_error(root: str, what: str, err: BaseException) -> MedvlkitError:
    """One line saying what went wrong talking to the PACS at ``root`` and what to do about it."""
    import requests

    where = f"DICOMweb {what} at {root}"
    if isinstance(err, requests.HTTPError) and err.response is not None:
        code = err.response.status_code
        if code in (401, 403):
            how = f"set {USER_ENV} and {PASSWORD_ENV}, or {TOKEN_ENV}" if not credentials() else \
                "check the credentials in the environment"
            return MedvlkitError(f"{where}: the PACS refused access (HTTP {code}); {how}")
        if code == 404:
            return MedvlkitError(f"{where}: not found (HTTP 404); check the DICOMweb root (Orthanc: /dicom-web) and "
                                 "the UIDs")
        return MedvlkitError(f"{where}: HTTP {code} {err.response.reason}")
    if isinstance(err, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)) or \
            "IncompleteRead" in repr(err) or "RemoteDisconnected" in repr(err):
        return MedvlkitError(f"{where}: the connection dropped mid-answer ({type(err).__name__}); run again: what "
                             "was fetched is kept")
    if isinstance(err, requests.Timeout):
        return MedvlkitError(f"{where}: no answer within {TIMEOUT_S:.0f} s")
    if isinstance(err, requests.ConnectionError):
        return MedvlkitError(f"{where}: cannot connect ({type(err).__name__}); is the PACS running and the URL right?")
    if isinstance(err, ValueError):  # JSON or multipart that does not parse
        return MedvlkitError(f"{where}: the answer is not DICOMweb ({type(err).__name__}: {str(err)[:120]})")
    return MedvlkitError(f"{where}: {type(err).__name__}: {str(err)[:200]}")


def _paged(search: Callable[..., list[dict[str, Any]]], what: str, root: str, page_size: int,
           **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every answer of a QIDO search, page by page until an empty page (a page shorter than asked is not the end:
    servers cap pages below the ``limit`` asked for)."""
    offset, seen = 0, set[str]()
    while True:
        try:
            page = search(limit=page_size, offset=offset, **kwargs)
        except MedvlkitError:
            raise
        except Exception as err:  # noqa: BLE001 - requests and the client raise many types
            raise pacs_error(root, what, err) from None
        if not isinstance(page, list) or any(not isinstance(r, dict) for r in page):
            raise MedvlkitError(f"DICOMweb {what} at {root}: the answer is not a list of DICOM JSON objects")
        if not page:
            return
        keys = {json.dumps(r, sort_keys=True) for r in page}
        if offset and keys <= seen:  # the same answer again: it would never end
            raise MedvlkitError(f"DICOMweb {what} at {root}: the PACS answers the next page (offset {offset}) with "
                                "entries it already gave; it does not page its answers (QIDO 'offset')")
        seen |= keys
        yield from page
        offset += len(page)


def _value(record: dict[str, Any], tag: str) -> str | None:
    values = (record.get(tag) or {}).get("Value") or []
    return str(values[0]) if values and values[0] is not None else None


# QIDO matching keys of the study and series levels (keyword and tag): a query filtered by these alone can be checked
# for completeness against the PACS's own counts; a filter on an instance attribute cannot
STUDY_KEYS = {"StudyDate": "00080020", "StudyTime": "00080030", "AccessionNumber": "00080050",
              "ModalitiesInStudy": "00080061", "ReferringPhysicianName": "00080090", "PatientName": "00100010",
              "PatientID": "00100020", "PatientBirthDate": "00100030", "PatientSex": "00100040",
              "StudyInstanceUID": "0020000D", "StudyID": "00200010", "StudyDescription": "00081030"}
SERIES_KEYS = {"Modality": "00080060", "SeriesInstanceUID": "0020000E", "SeriesNumber": "00200011",
               "SeriesDescription": "0008103E", "BodyPartExamined": "00180015",
               "PerformedProcedureStepStartDate": "00400244", "PerformedProcedureStepStartTime": "00400245"}
NOT_FILTERS = ("fuzzymatching", "includefield")
SERIES_COUNT = "00201209"  # NumberOfSeriesRelatedInstances


def _level_of(key: str) -> str:
    """``study``, ``series``, ``none`` (not a filter) or ``instance`` for a QIDO query key."""
    if key in NOT_FILTERS:
        return "none"
    for level, keys in (("study", STUDY_KEYS), ("series", SERIES_KEYS)):
        if key in keys or key.upper() in keys.values():
            return level
    return "instance"


def _instance_filters(query: Query) -> list[str]:
    """The query's filters on instance attributes (sorted): they keep its answer from being checked."""
    return [k for k in sorted(dict(query.filters)) if _level_of(k) == "instance"]


def query_instances(query: Query, page_size: int = PAGE_SIZE) -> list[dict[str, str | None]]:
    """Every instance the query matches: ``{"study", "series", "sop", "modality", "patient", "sop_class"}`` per
    instance, sorted by UIDs, each SOP Instance UID once.

    Completeness is checked against the PACS's own counts where the query allows it (filters on study and series
    attributes only): for each study found, its matching series are listed with their Number of Series Related
    Instances, a series answered short (a server's limit on query answers, e.g. Orthanc's ``LimitFindInstances``,
    cuts answers without saying so) is read again on its own, and one still short is an error. The list of
    studies itself is taken as the PACS gives it. :func:`completeness_check` says whether the check can run.

    Raises:
        MedvlkitError: the PACS cannot be reached, refuses access, answers something that is not DICOM JSON, lists
            an instance without its UIDs, or answers fewer instances of a series than it says the series holds.
    """
    c = client(query.root)
    filters = dict(query.filters)
    if query.level == "instances":
        parents: list[tuple[str | None, str | None]] = [(query.study, query.series)]
        instance_filters = filters
    else:
        search = c.search_for_studies if query.level == "studies" else c.search_for_series
        kwargs = {"study_instance_uid": query.study} if query.level == "series" and query.study else {}
        parents = [(_value(r, STUDY), _value(r, SERIES) if query.level == "series" else None)
                   for r in _paged(search, f"search for {query.level}", query.root, page_size,
                                   search_filters=filters, **kwargs)]
        instance_filters = {}
    found: dict[str, dict[str, str | None]] = {}
    for study, series in parents:
        _collect(c, query.root, study, series, instance_filters, page_size, found)
    unverifiable = _instance_filters(query)
    if found and not unverifiable:
        _complete(c, query, filters, page_size, found)
    elif unverifiable:
        logger.info("%s: a filter on instance attributes (%s): the answer's completeness cannot be checked against "
                    "the PACS's series counts", query.root, ", ".join(unverifiable))
    return sorted(found.values(), key=lambda r: (r["study"], r["series"], r["sop"]))


def completeness_check(query: Query) -> str:
    """How :func:`query_instances` checks that the answer is whole, in words (recorded with the dataset)."""
    unverifiable = _instance_filters(query)
    if unverifiable:
        return f"not checked: a filter on instance attributes ({', '.join(unverifiable)})"
    return "checked against the PACS's instance count of every matching series of each study found"


def _collect(c: Any, root: str, study: str | None, series: str | None, filters: dict[str, str], page_size: int,
             found: dict[str, dict[str, str | None]]) -> None:
    """Add every instance a paged instance-level search returns to ``found`` (by SOP Instance UID)."""
    if series and not study:  # a series named without its study: matched as a filter (no /series/<uid> route)
        filters, series = {**filters, "SeriesInstanceUID": series}, None
    for r in _paged(c.search_for_instances, "search for instances", root, page_size, study_instance_uid=study,
                    series_instance_uid=series, search_filters=filters,
                    fields=[MODALITY, PATIENT_ID, SOP_CLASS]):
        row = {"study": _value(r, STUDY) or study, "series": _value(r, SERIES) or series, "sop": _value(r, SOP),
               "modality": _value(r, MODALITY), "patient": _value(r, PATIENT_ID), "sop_class": _value(r, SOP_CLASS)}
        if not (row["study"] and row["series"] and row["sop"]):
            raise MedvlkitError(f"DICOMweb search at {root}: an instance without its Study, Series or SOP Instance "
                                f"UID in the answer ({sorted(r)[:6]}...)")
        bad = next((u for u in (row["study"], row["series"], row["sop"]) if not _UID.fullmatch(str(u))), None)
        if bad is not None:  # it names a cache file and a URL path: digits and dots only
            raise MedvlkitError(f"DICOMweb search at {root}: the PACS listed an instance with a malformed UID "
                                f"{str(bad)[:80]!r}")
        found.setdefault(str(row["sop"]), row)


def _complete(c: Any, query: Query, filters: dict[str, str], page_size: int,
              found: dict[str, dict[str, str | None]]) -> None:
    """Check ``found`` against each found study's matching series and their instance counts; read a short series
    again on its own; raise for one still short (see :func:`query_instances`)."""
    from collections import Counter

    def counts() -> Counter[tuple[str | None, str | None]]:
        return Counter((r["study"], r["series"]) for r in found.values())

    have = counts()
    series_filters = {k: v for k, v in filters.items() if _level_of(k) == "series"}
    expected: dict[tuple[str | None, str | None], int] = {}

    def listing(study_uid: str) -> list[dict[str, Any]]:
        return list(_paged(c.search_for_series, "search for series", query.root, page_size,
                           study_instance_uid=study_uid, search_filters=series_filters, fields=[SERIES_COUNT]))

    studies = sorted({str(s) for s, _ in have})
    with concurrent.futures.ThreadPoolExecutor(min(8, len(studies))) as pool:  # one small request per study
        for study_uid, rows in zip(studies, pool.map(listing, studies)):
            for r in rows:
                count = _value(r, SERIES_COUNT)
                if count is not None and count.isdigit() and (not query.series or _value(r, SERIES) == query.series):
                    expected[(study_uid, _value(r, SERIES))] = int(count)
    short = [key for key, n in expected.items() if have.get(key, 0) < n]
    for study, series in short:
        _collect(c, query.root, study, series, {}, page_size, found)
    have = counts()
    still = [(key, have.get(key, 0), expected[key]) for key in short if have.get(key, 0) < expected[key]]
    if still:
        (_, cut), got, n = still[0]
        raise MedvlkitError(f"DICOMweb search at {query.root}: the PACS answered {got} of the {n} instances of series "
                            f"{cut} (and {len(still) - 1} other series short): a limit on its query answers (e.g. "
                            "Orthanc's LimitFindInstances) cuts them without saying so; raise that limit or narrow "
                            "the query. Nothing was read")


def cache_path(ref: InstanceRef) -> Path:
    """Where a fetched instance is kept: ``$MEDVLKIT_CACHE/dicomweb/<hash of the root>/<SOP Instance UID>.dcm``."""
    from medvlkit.files import default_cache_dir

    server = hashlib.sha256(ref.root.encode()).hexdigest()[:16]
    return default_cache_dir() / "dicomweb" / server / f"{ref.sop}.dcm"


def fetch_instance(item: str) -> Path:
    """The local copy of a ``dicomweb:`` item, fetched with WADO-RS (original transfer syntax) on first use and
    written under a temporary name then renamed, so an interrupted fetch leaves nothing behind. A failed fetch is
    answered with its error for :data:`FAILED_TTL_S` seconds without asking the PACS again (a run reads each image
    twice: its check against the model's training data, then the embedding); each request is tried twice.

    Raises:
        ImageReadError: the fetch failed (naming the instance and why: access, not found, dropped connection, not
            DICOM, another instance than asked for).
    """
    ref = parse_item(item)
    path = cache_path(ref)
    if path.is_file():
        return path
    failed = _FAILED.get(item)
    if failed and time.monotonic() - failed[0] < FAILED_TTL_S:  # a run reads an image twice (seen check, embedding)
        raise ImageReadError(item, failed[1])
    try:
        return _fetch(ref, item, path)
    except ImageReadError as err:
        _FAILED[item] = (time.monotonic(), err.reason)
        raise


_FAILED: dict[str, tuple[float, str]] = {}
FAILED_TTL_S = 120.0  # how long this process answers a failed fetch with its error instead of asking again


def _fetch(ref: InstanceRef, item: str, path: Path) -> Path:
    try:
        ds = client(ref.root).retrieve_instance(ref.study, ref.series, ref.sop,
                                                media_types=(("application/dicom", "*"),))
    except MedvlkitError as err:
        raise ImageReadError(item, str(err)) from None
    except Exception as err:  # noqa: BLE001 - requests, the client and pydicom raise many types
        if "InvalidDicomError" in type(err).__name__ or "DICM" in str(err) or "File Meta" in str(err):
            raise ImageReadError(item, "the PACS answered with something that is not a DICOM file") from None
        raise ImageReadError(item, str(pacs_error(ref.root, "retrieve", err))) from None
    got = str(getattr(ds, "SOPInstanceUID", ""))
    if got != ref.sop:
        raise ImageReadError(item, f"the PACS answered with another instance (SOP Instance UID {got or 'missing'})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # concurrent fetches of one
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _part10(ds: Any) -> Any:
    """``ds`` as a DICOM Part 10 file (preamble, ``DICM``, file meta): the client sends a dataset as it would write
    it, and a dataset built in memory would go without them (readers then refuse it)."""
    import io

    import pydicom

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def store(root: str, datasets: list[Any]) -> None:
    """Store DICOM datasets on the PACS with STOW-RS (in one request per 50).

    Raises:
        MedvlkitError: the PACS refused them or could not be reached.
    """
    c = client(root)
    datasets = [_part10(ds) for ds in datasets]
    for i in range(0, len(datasets), 50):
        try:
            c.store_instances(datasets[i:i + 50])
        except Exception as err:  # noqa: BLE001
            raise pacs_error(root, "store (STOW-RS)", err) from None


def is_image_class(sop_class: str | None) -> bool:
    """False for SOP classes that hold no image (:data:`NOT_IMAGES`); True for the rest and for an unknown one."""
    return not (sop_class and sop_class.startswith(NOT_IMAGES))


def row_ref(query: Query, row: dict[str, str | None]) -> InstanceRef:
    """The instance a row of :func:`query_instances` names."""
    return InstanceRef(query.root, str(row["study"]), str(row["series"]), str(row["sop"]))


def split_images(query: Query, rows: list[dict[str, str | None]]) -> tuple[list[dict[str, str | None]],
                                                                             list[tuple[str, str]]]:
    """(the rows of :func:`query_instances` that are images, (item, why) of those that are not)."""
    return [r for r in rows if is_image_class(r["sop_class"])], \
        [(row_ref(query, r).item, f"not an image (SOP class {r['sop_class']}: a report, presentation state or "
                                  "document)") for r in rows if not is_image_class(r["sop_class"])]


def check_uid(name: str, uid: str | None) -> None:
    """Refuse a UID that is not digits and dots (``name``: what it is, in the message).

    Raises:
        MedvlkitError: a malformed UID.
    """
    if uid is not None and not _UID.fullmatch(uid):
        raise MedvlkitError(f"{name} UID '{uid}' is not a DICOM UID (digits and dots)")


def study_images(root: str, study: str | None = None, series: str | None = None,
                 page_size: int = PAGE_SIZE) -> tuple[list[str], list[tuple[str, str]]]:
    """The image instances of one study and/or series on the PACS at ``root`` (items, in UID order), and the
    instances left out as not images (item, why); both empty when the PACS holds none.

    Raises:
        MedvlkitError: neither UID given, a malformed UID, a PACS error.
    """
    check_uid("study", study)
    check_uid("series", series)
    if not (study or series):
        raise MedvlkitError("name a study or a series (its Instance UID)")
    query = Query(root, "instances", study, None, (("SeriesInstanceUID", series),) if series else ())
    images, not_images = split_images(query, query_instances(query, page_size))
    return [row_ref(query, r).item for r in images], not_images
