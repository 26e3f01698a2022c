"""Drives the official mollie-api-python SDK through mollie-gateway, for tests/sdk_python.rs.

Usage: python_sdk_check.py GATEWAY_BASE_URL

Expects the fake Mollie behind the gateway with its resources enabled, merchants m1 and m2
onboarded with profiles pfl_m1/pfl_m2 (`[merchants.defaults.<id>] profile_id`), m1's methods
ideal+creditcard and m2's bancontact, and `upstream.public_base_url` = GATEWAY_BASE_URL.
For each merchant it creates payments, fetches one, lists them over two pages with the SDK's
own pagination (following `_links.next.href` / `_links.previous.href`), lists methods, and
checks the two merchants' data never mix. Any failure raises; success prints a JSON summary.
"""

import json
import sys

import requests
from mollie.api.client import Client
from mollie.api.error import NotFoundError, UnauthorizedError

# Passes the SDK's own key check (`^(live|test)_\w+$`); the gateway drops it but reads its
# `test_` prefix (testmode = "from_key").
DUMMY_KEY = "test_gatewaygatewaygatewaygatewayga"


def gateway_client(base_url: str, merchant: str) -> Client:
    """The README recipe: base URL, dummy key, and a session that sends the merchant header."""
    client = Client(api_endpoint=base_url, timeout=(2, 10), retry=0)
    client.set_api_key(DUMMY_KEY)
    session = requests.Session()
    session.headers["X-Merchant-Id"] = merchant
    client._client = session  # used instead of the session the SDK would create itself
    return client


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main() -> None:
    base = sys.argv[1].rstrip("/")
    merchants = {"m1": "pfl_m1", "m2": "pfl_m2"}
    expected_methods = {"m1": ["ideal", "creditcard"], "m2": ["bancontact"]}
    clients = {m: gateway_client(base, m) for m in merchants}
    created = {m: [] for m in merchants}

    # Interleaved creates, so the fake holds both merchants' payments side by side.
    for i in range(1, 4):
        for m, client in clients.items():
            p = client.payments.create(
                {
                    "amount": {"currency": "EUR", "value": f"{i}.00"},
                    "description": f"{m} order {i}",
                    "redirectUrl": "https://shop.example/return",
                }
            )
            check(p.id.startswith("tr_"), f"payment id {p.id}")
            check(p.profile_id == merchants[m], f"{m}: profileId {p.profile_id} (gateway default)")
            check(p.mode == "test", f"{m}: mode {p.mode} (testmode from the test_ key)")
            check(p.description == f"{m} order {i}", f"{m}: description {p.description}")
            check(
                p["_links"]["self"]["href"] == f"{base}/v2/payments/{p.id}",
                f"{m}: self link not on the gateway: {p['_links']['self']['href']}",
            )
            check(
                p.checkout_url.startswith("https://www.mollie.com/checkout/"),
                f"{m}: checkout link must stay on Mollie: {p.checkout_url}",
            )
            created[m].append(p.id)

    summary = {}
    for m, client in clients.items():
        other = "m2" if m == "m1" else "m1"
        # Fetch one.
        got = client.payments.get(created[m][0])
        check(got.id == created[m][0] and got.description == f"{m} order 1", f"{m}: get {got}")
        # Another merchant's payment does not exist for this one.
        try:
            client.payments.get(created[other][0])
            raise AssertionError(f"{m} could read {other}'s payment")
        except NotFoundError:
            pass

        # Two pages through the SDK's own pagination (absolute `next`/`previous` hrefs).
        page1 = client.payments.list(limit=2)
        ids1 = [p.id for p in page1]
        check(len(ids1) == 2 and page1.has_next(), f"{m}: page 1 {ids1}")
        check(page1.has_previous() is False, f"{m}: page 1 has no previous")
        page2 = page1.get_next()
        ids2 = [p.id for p in page2]
        check(len(ids2) == 1 and not page2.has_next(), f"{m}: page 2 {ids2}")
        check(ids1 + ids2 == list(reversed(created[m])), f"{m}: pages {ids1 + ids2}")
        back = page2.get_previous()
        check([p.id for p in back] == ids1, f"{m}: previous page {[p.id for p in back]}")
        for page in (page1, page2):
            for p in page:
                check(p.description.startswith(f"{m} "), f"{m} listed {p.description}")

        methods = [meth.id for meth in client.methods.list()]
        check(methods == expected_methods[m], f"{m}: methods {methods}")
        summary[m] = {"payments": ids1 + ids2, "methods": methods}

    # A merchant the gateway does not know: the SDK raises with the gateway's own message.
    try:
        gateway_client(base, "nobody").payments.get(created["m1"][0])
        raise AssertionError("an unknown merchant was served")
    except UnauthorizedError as e:
        check(e.status == 401 and "nobody" in str(e), f"unknown merchant error: {e}")

    print(json.dumps({"ok": True, "merchants": summary}))


if __name__ == "__main__":
    main()
