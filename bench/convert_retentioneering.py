"""Convert retentioneering's e-commerce clickstream to XDM ExperienceEvents (JSONL).

The PyPI package ``retentioneering`` ships ``retentioneering/datasets/ecom.csv.gz``: six
months of sessions of 600 users of a consumer-electronics shop (about 31,000 events,
470 purchases), with columns ``user_id, session_id, event, timestamp, platform,
acquisition_channel, user_cohort, user_lifecycle``.

Source: ``--source`` may be the ``.csv.gz`` itself, a downloaded wheel
(``pip download --no-deps retentioneering``) or, by default, the installed package
(located without importing it, so its heavy dependencies are not needed).

Event mapping (the dataset has no prices, so purchases carry no ``priceTotal``):

===================================================  ===================================
retentioneering ``event``                            XDM ``eventType``
===================================================  ===================================
``product_view``                                     ``commerce.productViews``
``add_to_cart``                                      ``commerce.productListAdds``
``purchase``                                         ``commerce.purchases``
``cart``                                             ``commerce.productListViews``
``shipping_details``, ``payment_details``            ``commerce.checkouts``
``wishlist_add``                                     ``commerce.saveForLaters``
``home``, ``catalog``, ``search``,                   ``web.webpagedetails.pageViews``
``filter_results``, ``promo_page``,                  (page name in
``account_page``, ``review_page``, ``compare``,      ``web.webPageDetails.name``)
``support_chat``, ``error_page``, ``payment_error``,
``checkout_bug``
===================================================  ===================================

Other columns: ``user_id`` is the primary ``ECID`` identity, ``session_id`` goes to
``_retentioneering.sessionId``, ``platform`` to ``device.type`` and
``acquisition_channel`` to ``marketing.trackingCode``. The timestamps are naive and
taken as UTC. ``user_cohort`` and ``user_lifecycle`` are profile attributes computed by
the data set's author over the whole period, so they are left out (they would leak the
future into a replay).

Usage::

    python bench/convert_retentioneering.py --out ecom.jsonl [--source PATH]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import io
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

DATASET = "retentioneering/datasets/ecom.csv.gz"

PAGE_VIEW = "web.webpagedetails.pageViews"
EVENT_TYPES: dict[str, str] = {
    "product_view": "commerce.productViews",
    "add_to_cart": "commerce.productListAdds",
    "purchase": "commerce.purchases",
    "cart": "commerce.productListViews",
    "shipping_details": "commerce.checkouts",
    "payment_details": "commerce.checkouts",
    "wishlist_add": "commerce.saveForLaters",
}
"""retentioneering event -> XDM eventType; anything else is a page view."""


def event_type(name: str) -> str:
    """XDM eventType of a retentioneering event name.

    >>> event_type("purchase"), event_type("catalog")
    ('commerce.purchases', 'web.webpagedetails.pageViews')
    """
    return EVENT_TYPES.get(name, PAGE_VIEW)


def to_xdm(row: dict[str, str], index: int) -> dict[str, Any]:
    """One CSV row -> one XDM ExperienceEvent dict.

    >>> ev = to_xdm({"user_id": "user_0001", "session_id": "sess_000007", "event": "search",
    ...              "timestamp": "2024-03-13 10:21:14", "platform": "mobile",
    ...              "acquisition_channel": "email"}, 5)
    >>> ev["_id"], ev["timestamp"], ev["eventType"], ev["web"]["webPageDetails"]["name"]
    ('rete-5', '2024-03-13T10:21:14Z', 'web.webpagedetails.pageViews', 'search')
    >>> ev["identityMap"]["ECID"][0]["id"], ev["device"]["type"]
    ('user_0001', 'mobile')
    """
    name = row["event"]
    kind = event_type(name)
    event: dict[str, Any] = {
        "_id": f"rete-{index}",
        "timestamp": row["timestamp"].strip().replace(" ", "T") + "Z",
        "eventType": kind,
        "identityMap": {"ECID": [{"id": row["user_id"], "primary": True}]},
        "web": {"webPageDetails": {"name": name, "pageViews": {"value": 1}}},
        "_retentioneering": {"event": name, "sessionId": row.get("session_id", "")},
    }
    if kind == "commerce.purchases":
        event["commerce"] = {"purchases": {"value": 1}, "order": {"currencyCode": "USD"}}
    elif kind.startswith("commerce."):
        event["commerce"] = {kind.split(".", 1)[1]: {"value": 1}}
    if row.get("platform"):
        event["device"] = {"type": row["platform"]}
    if row.get("acquisition_channel"):
        event["marketing"] = {"trackingCode": row["acquisition_channel"]}
    return event


def read_dataset(source: Path | None = None) -> bytes:
    """The gzip bytes of ``ecom.csv.gz`` from a csv.gz, a wheel, or the installed package."""
    if source is None:
        spec = importlib.util.find_spec("retentioneering")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(
                "retentioneering is not installed: pip install retentioneering, or pass "
                "--source with the wheel (pip download --no-deps retentioneering) or ecom.csv.gz"
            )
        source = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "ecom.csv.gz"
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(DATASET)
    return source.read_bytes()


def iter_events(gz: bytes) -> Iterator[dict[str, Any]]:
    """XDM events of the dataset, in file order."""
    text = io.TextIOWrapper(gzip.GzipFile(fileobj=io.BytesIO(gz)), encoding="utf-8")
    for index, row in enumerate(csv.DictReader(text), 1):
        yield to_xdm(row, index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="ecom.csv.gz or a retentioneering wheel")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    n = 0
    with args.out.open("wb") as fh:
        for event in iter_events(read_dataset(args.source)):
            fh.write(orjson.dumps(event) + b"\n")
            n += 1
    print(f"wrote {n} events to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
