"""Drives Mollie's newer Python SDK (mollie-api-py, Speakeasy-generated, `from mollie import
ClientSDK`) through mollie-gateway, for tests/sdk_python_new.rs.

Usage:
  python_new_sdk_check.py flow GATEWAY_BASE_URL
  python_new_sdk_check.py retry GATEWAY_BASE_URL UNCONFIGURED_GATEWAY_BASE_URL

`flow` expects the fake Mollie behind the gateway with its resources enabled, merchants m1 and
m2 onboarded with profiles pfl_m1/pfl_m2 (`[merchants.defaults.<id>] profile_id`), m1's methods
ideal+creditcard and m2's bancontact, and `upstream.public_base_url` = GATEWAY_BASE_URL. For each
merchant it creates payments, fetches one, lists them over two pages with the SDK's own
pagination (`ListPaymentsResponse.next()`, which requests `_links.next.href` as is), lists
methods, and checks the two merchants' data never mix; the SDK's own `testmode`/`profile_id`
must be refused with the `test_` dummy key and sent with an `access_` one; an unknown merchant
must raise the SDK's `APIError` carrying the gateway's message.

`retry` expects m1 onboarded at both gateways, the first one's token endpoint answering 503 to
the first refresh only (the test turns it back on), and the second gateway without an OAuth app.
It checks the SDK's default retry policy (429 and 5xx, backoff 0.5-5 s, 7.5 s in all, honouring
`Retry-After`): a 503 is retried after `Retry-After` and succeeds; a 503 that persists for 7.5 s
is surfaced as `ErrorResponse` with the gateway's detail.

Any failure raises; success prints a JSON summary.
"""

import json
import sys
import time

import httpx
from mollie import ClientSDK, models

# Any string works: the SDK does not check the key's format. The gateway drops it but reads
# its `test_` prefix (testmode = "from_key").
DUMMY_KEY = "test_gatewaygatewaygatewaygatewayga"
# A dummy that looks like an OAuth token: only with such a key does the SDK take `testmode` and
# `profile_id` of its own (and the gateway, seeing no `test_` key, adds no testmode).
ACCESS_DUMMY_KEY = "access_gatewaygateway"


def gateway_client(base_url: str, merchant: str, seen=None, key=DUMMY_KEY, **sdk) -> ClientSDK:
    """The README recipe: server URL, dummy key, an httpx client that sends the merchant header.

    `seen`, when a list, receives (time, status, Retry-After) for every HTTP response; `sdk`
    holds more ClientSDK options (`testmode`, `profile_id`).
    """
    hooks = {}
    if seen is not None:
        hooks["response"] = [
            lambda r: seen.append((time.monotonic(), r.status_code, r.headers.get("retry-after")))
        ]
    http = httpx.Client(
        headers={"X-Merchant-Id": merchant}, timeout=10, event_hooks=hooks
    )
    return ClientSDK(
        server_url=base_url,
        security=models.Security(api_key=key),
        client=http,
        **sdk,
    )


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def payment_request(m: str, i: int) -> models.PaymentRequest:
    return models.PaymentRequest(
        amount=models.Amount(currency="EUR", value=f"{i}.00"),
        description=f"{m} order {i}",
        redirect_url="https://shop.example/return",
    )


def flow(base: str) -> dict:
    merchants = {"m1": "pfl_m1", "m2": "pfl_m2"}
    expected_methods = {"m1": ["ideal", "creditcard"], "m2": ["bancontact"]}
    clients = {m: gateway_client(base, m) for m in merchants}
    created = {m: [] for m in merchants}

    # The SDK's own testmode/profile_id: refused with the `test_` dummy, taken with an `access_`
    # one, and then sent by the SDK itself (on creates and lists below).
    for m in merchants:
        try:
            gateway_client(base, m, testmode=True)
            raise AssertionError("ClientSDK took testmode with a test_ key")
        except AttributeError as e:
            check("access" in str(e).lower(), f"{m}: {e}")
    own = {
        m: gateway_client(base, m, key=ACCESS_DUMMY_KEY, testmode=True, profile_id=profile)
        for m, profile in merchants.items()
    }

    # Interleaved creates, so the fake holds both merchants' payments side by side; the third
    # with the SDK's own testmode (a test payment shows the SDK put it in the body).
    for i in range(1, 4):
        for m, client in clients.items():
            client = own[m] if i == 3 else client
            p = client.payments.create(payment_request=payment_request(m, i))
            check(p.id.startswith("tr_"), f"payment id {p.id}")
            check(p.profile_id == merchants[m], f"{m}: profileId {p.profile_id} (gateway default)")
            check(p.mode == "test", f"{m}: mode {p.mode} (from the test_ key, or the SDK's own)")
            check(p.description == f"{m} order {i}", f"{m}: description {p.description}")
            check(
                p.links.self_.href == f"{base}/v2/payments/{p.id}",
                f"{m}: self link not on the gateway: {p.links.self_.href}",
            )
            check(
                p.links.checkout.href.startswith("https://www.mollie.com/checkout/"),
                f"{m}: checkout link must stay on Mollie: {p.links.checkout.href}",
            )
            created[m].append(p.id)

    summary = {}
    for m, client in clients.items():
        other = "m2" if m == "m1" else "m1"
        # Fetch one.
        got = client.payments.get(payment_id=created[m][0])
        check(got.id == created[m][0] and got.description == f"{m} order 1", f"{m}: get {got}")
        # Another merchant's payment does not exist for this one: the SDK's typed 404.
        try:
            client.payments.get(payment_id=created[other][0])
            raise AssertionError(f"{m} could read {other}'s payment")
        except models.ErrorResponse as e:
            check(e.status_code == 404 and e.data.status == 404, f"{m}: {e}")

        # Two pages through the SDK's own pagination (`next()` requests the absolute href).
        page1 = client.payments.list(limit=2)
        ids1 = [p.id for p in page1.result.embedded.payments]
        check(len(ids1) == 2 and page1.result.links.next is not None, f"{m}: page 1 {ids1}")
        check(
            page1.result.links.next.href.startswith(f"{base}/v2/payments?"),
            f"{m}: next link not on the gateway: {page1.result.links.next.href}",
        )
        page2 = page1.next()
        check(page2 is not None, f"{m}: no second page")
        ids2 = [p.id for p in page2.result.embedded.payments]
        check(len(ids2) == 1 and page2.next() is None, f"{m}: page 2 {ids2}")
        check(ids1 + ids2 == list(reversed(created[m])), f"{m}: pages {ids1 + ids2}")
        for page in (page1, page2):
            for p in page.result.embedded.payments:
                check(p.description.startswith(f"{m} "), f"{m} listed {p.description}")
                check(p.profile_id == merchants[m], f"{m} listed profile {p.profile_id}")

        # A list with the SDK's own testmode and profileId in the query.
        listed = [p.id for p in own[m].payments.list(limit=10).result.embedded.payments]
        check(listed == list(reversed(created[m])), f"{m}: SDK testmode listed {listed}")

        methods = [meth.id for meth in client.methods.list().embedded.methods]
        check(methods == expected_methods[m], f"{m}: methods {methods}")
        summary[m] = {"payments": ids1 + ids2, "methods": methods}

    # A merchant the gateway does not know: a 401 the operations do not model, so the SDK's
    # catch-all `APIError`, with the gateway's own message in it.
    try:
        gateway_client(base, "nobody").payments.get(payment_id=created["m1"][0])
        raise AssertionError("an unknown merchant was served")
    except models.APIError as e:
        check(e.status_code == 401, f"unknown merchant status: {e}")
        check("no credentials are stored for merchant nobody" in str(e), f"unknown merchant: {e}")
    return summary


def retry(base: str, unconfigured: str) -> dict:
    # 1. A transient 503 (the token endpoint failed once): retried after Retry-After, succeeds.
    seen = []
    start = time.monotonic()
    p = gateway_client(base, "m1", seen).payments.create(payment_request=payment_request("m1", 1))
    check(p.id.startswith("tr_") and p.profile_id == "pfl_m1", f"created {p}")
    statuses = [s for _, s, _ in seen]
    check(statuses == [503, 201], f"statuses {statuses}")
    retry_after = int(seen[0][2])
    gap = seen[1][0] - seen[0][0]
    # The SDK's own first backoff is at most 1.5 s; the test's gateway says 2-4 s.
    check(retry_after >= 2, f"Retry-After {retry_after}")
    check(gap >= retry_after - 0.1, f"retried after {gap:.2f} s, Retry-After {retry_after}")
    transient = {"statuses": statuses, "retry_after": retry_after, "gap_s": round(gap, 2)}

    # 2. A 503 that persists (no OAuth app): retried until 7.5 s have passed, then raised as
    # the SDK's ErrorResponse (create-payment models a 503) with the gateway's detail.
    seen = []
    start = time.monotonic()
    try:
        gateway_client(unconfigured, "m1", seen).payments.create(
            payment_request=payment_request("m1", 2)
        )
        raise AssertionError("a misconfigured gateway created a payment")
    except models.ErrorResponse as e:
        took = time.monotonic() - start
        check(e.status_code == 503 and e.data.status == 503, f"status: {e}")
        check(e.data.detail.startswith("mollie-gateway: "), f"detail: {e.data.detail}")
        check("oauth.client_id" in e.data.detail, f"detail: {e.data.detail}")
        check(e.headers.get("retry-after") is not None, f"headers: {e.headers}")
    statuses = [s for _, s, _ in seen]
    check(len(statuses) >= 3 and set(statuses) == {503}, f"statuses {statuses}")
    check(7.5 <= took < 15, f"gave up after {took:.1f} s")
    persistent = {"attempts": len(statuses), "gave_up_after_s": round(took, 1)}
    return {"transient": transient, "persistent": persistent}


def main() -> None:
    mode, base = sys.argv[1], sys.argv[2].rstrip("/")
    if mode == "flow":
        summary = {"merchants": flow(base)}
    elif mode == "retry":
        summary = retry(base, sys.argv[3].rstrip("/"))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps({"ok": True, **summary}))


if __name__ == "__main__":
    main()
