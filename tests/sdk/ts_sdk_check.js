// Drives Mollie's TypeScript SDK (mollie-api-typescript, Speakeasy-generated, pinned in
// scripts/setup) through mollie-gateway, for tests/sdk_ts.rs. Plain CommonJS: the package ships
// a CommonJS build next to its ESM one.
//
// Usage:
//   node ts_sdk_check.js flow GATEWAY_BASE_URL
//   node ts_sdk_check.js retry GATEWAY_BASE_URL UNCONFIGURED_GATEWAY_BASE_URL
//   (NODE_PATH must reach the SDK)
//
// Same fixtures as python_new_sdk_check.py. `flow`: merchants m1/m2 with profiles pfl_m1/pfl_m2,
// m1's methods ideal+creditcard, m2's bancontact, `upstream.public_base_url` = the gateway; each
// merchant creates payments, fetches one, pages through its list with the SDK's own pagination
// (`next()` and `for await`, which request `_links.next.href` as is), lists methods, and never
// sees the other's data; the SDK's own `testmode`/`profileId` must be refused with the test_
// dummy key and sent with an access_ one; an unknown merchant must reject with the SDK's
// `ClientDefaultError` carrying the gateway's message. `retry`: the SDK's default retry policy
// (429 and 5xx, backoff 0.5-5 s, 7.5 s in all, waiting `Retry-After`, at most 5 s) retries a
// transient 503 after `Retry-After` and surfaces a lasting one as `ErrorResponse` with the
// gateway's detail.
// Any failure exits non-zero; success prints a JSON summary.
'use strict';

const assert = require('node:assert/strict');
const { Client, HTTPClient } = require('mollie-api-typescript');
const errors = require('mollie-api-typescript/models/errors');

// Any string works: the SDK does not check the key's format. The gateway drops it but reads
// its test_ prefix (testmode = "from_key").
const DUMMY_KEY = 'test_gatewaygatewaygatewaygatewayga';
// A dummy that looks like an OAuth token: only with such a key does the SDK take testmode and
// profileId of its own (and the gateway, seeing no test_ key, adds no testmode).
const ACCESS_DUMMY_KEY = 'access_gatewaygateway';

// The README recipe: server URL, dummy key, an HTTPClient whose beforeRequest hook sets the
// merchant header. `seen`, when an array, receives [ms, status, Retry-After] per response;
// `sdk` holds more Client options (`testmode`, `profileId`).
function gatewayClient(serverURL, merchantId, seen, apiKey = DUMMY_KEY, sdk = {}) {
  const httpClient = new HTTPClient();
  httpClient.addHook('beforeRequest', (request) => {
    request.headers.set('X-Merchant-Id', merchantId);
  });
  if (seen) {
    httpClient.addHook('response', (res) => {
      seen.push([performance.now(), res.status, res.headers.get('retry-after')]);
    });
  }
  return new Client({ serverURL, security: { apiKey }, httpClient, ...sdk });
}

function paymentRequest(m, i) {
  return {
    paymentRequest: {
      amount: { currency: 'EUR', value: `${i}.00` },
      description: `${m} order ${i}`,
      redirectUrl: 'https://shop.example/return',
    },
  };
}

async function rejects(promise, what) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  throw new Error(`${what}: no error`);
}

async function flow(base) {
  const profiles = { m1: 'pfl_m1', m2: 'pfl_m2' };
  const expectedMethods = { m1: ['ideal', 'creditcard'], m2: ['bancontact'] };
  const clients = {};
  const own = {};
  const created = {};
  for (const [m, profileId] of Object.entries(profiles)) {
    clients[m] = gatewayClient(base, m);
    // The SDK's own testmode/profileId: refused with the test_ dummy, taken with an access_
    // one, and then sent by the SDK itself (on creates and lists below).
    assert.throws(
      () => gatewayClient(base, m, null, DUMMY_KEY, { testmode: true }),
      (err) => err instanceof errors.ClientCreationError,
    );
    own[m] = gatewayClient(base, m, null, ACCESS_DUMMY_KEY, { testmode: true, profileId });
    created[m] = [];
  }

  // Interleaved creates, so the fake holds both merchants' payments side by side; the third
  // with the SDK's own testmode (a test payment shows the SDK put it in the body).
  for (let i = 1; i <= 3; i++) {
    for (const m of Object.keys(clients)) {
      const client = i === 3 ? own[m] : clients[m];
      const p = await client.payments.create(paymentRequest(m, i));
      assert.match(p.id, /^tr_/);
      assert.equal(p.profileId, profiles[m], `${m}: profileId (gateway default)`);
      assert.equal(p.mode, 'test', `${m}: mode (testmode from the test_ key, or the SDK's own)`);
      assert.equal(p.description, `${m} order ${i}`);
      assert.equal(p.links.self.href, `${base}/v2/payments/${p.id}`, `${m}: self link`);
      assert.ok(p.links.checkout.href.startsWith('https://www.mollie.com/checkout/'));
      created[m].push(p.id);
    }
  }

  const summary = {};
  for (const [m, client] of Object.entries(clients)) {
    const other = m === 'm1' ? 'm2' : 'm1';
    const got = await client.payments.get({ paymentId: created[m][0] });
    assert.equal(got.description, `${m} order 1`);
    // Another merchant's payment does not exist for this one: the SDK's typed 404.
    const e = await rejects(
      client.payments.get({ paymentId: created[other][0] }),
      `${m} reads ${other}'s payment`,
    );
    assert.ok(e instanceof errors.ErrorResponse, `${m}: ${e}`);
    assert.equal(e.statusCode, 404);

    // next(): the absolute `_links.next.href`, so it must point at the gateway.
    const page1 = await client.payments.list({ limit: 2 });
    const ids1 = page1.result.embedded.payments.map((p) => p.id);
    assert.equal(ids1.length, 2, `${m}: page 1`);
    assert.ok(page1.result.links.next.href.startsWith(`${base}/v2/payments?`), `${m}: next link`);
    const page2 = await page1.next();
    assert.ok(page2, `${m}: no second page`);
    const ids2 = page2.result.embedded.payments.map((p) => p.id);
    assert.equal(ids2.length, 1, `${m}: page 2`);
    assert.equal(page2.next(), null, `${m}: a third page`);
    assert.deepEqual([...ids1, ...ids2], [...created[m]].reverse(), `${m}: next()`);

    // for await: the same pages through the SDK's page iterator.
    const iterated = [];
    for await (const page of await client.payments.list({ limit: 2 })) {
      for (const p of page.result.embedded.payments) {
        assert.ok(p.description.startsWith(`${m} `), `${m} listed ${p.description}`);
        assert.equal(p.profileId, profiles[m]);
        iterated.push(p.id);
      }
      if (iterated.length > 10) break;
    }
    assert.deepEqual(iterated, [...created[m]].reverse(), `${m}: for await`);

    // A list with the SDK's own testmode and profileId in the query.
    const ownPage = await own[m].payments.list({ limit: 10 });
    const listed = ownPage.result.embedded.payments.map((p) => p.id);
    assert.deepEqual(listed, [...created[m]].reverse(), `${m}: SDK testmode`);

    const methods = (await client.methods.list()).embedded.methods.map((meth) => meth.id);
    assert.deepEqual(methods, expectedMethods[m]);
    summary[m] = { payments: iterated, methods };
  }

  // A merchant the gateway does not know: a 401 the operations do not model, so the SDK's
  // catch-all ClientDefaultError, with the gateway's own message in it.
  const nobody = gatewayClient(base, 'nobody');
  const e = await rejects(nobody.payments.get({ paymentId: created.m1[0] }), 'unknown merchant');
  assert.ok(e instanceof errors.ClientDefaultError, `unknown merchant: ${e}`);
  assert.equal(e.statusCode, 401);
  assert.match(e.message, /no credentials are stored for merchant nobody/);
  return { merchants: summary };
}

async function retry(base, unconfigured) {
  // 1. A transient 503 (the token endpoint failed once): retried after Retry-After, succeeds.
  let seen = [];
  const p = await gatewayClient(base, 'm1', seen).payments.create(paymentRequest('m1', 1));
  assert.match(p.id, /^tr_/);
  assert.equal(p.profileId, 'pfl_m1');
  let statuses = seen.map((s) => s[1]);
  assert.deepEqual(statuses, [503, 201]);
  const retryAfter = Number(seen[0][2]);
  const gap = (seen[1][0] - seen[0][0]) / 1000;
  // The SDK's own first backoff is at most 1 s; the test's gateway says 2-4 s.
  assert.ok(retryAfter >= 2, `Retry-After ${retryAfter}`);
  assert.ok(gap >= retryAfter - 0.1, `retried after ${gap} s, Retry-After ${retryAfter}`);
  const transient = { statuses, retry_after: retryAfter, gap_s: Math.round(gap * 100) / 100 };

  // 2. A 503 that persists (no OAuth app): retried until 7.5 s have passed, then rejected with
  // the SDK's ErrorResponse (create-payment models a 503) carrying the gateway's detail.
  seen = [];
  const start = performance.now();
  const e = await rejects(
    gatewayClient(unconfigured, 'm1', seen).payments.create(paymentRequest('m1', 2)),
    'a misconfigured gateway',
  );
  const took = (performance.now() - start) / 1000;
  assert.ok(e instanceof errors.ErrorResponse, `${e}`);
  assert.equal(e.statusCode, 503);
  assert.equal(e.status, 503);
  assert.ok(e.detail.startsWith('mollie-gateway: '), e.detail);
  assert.match(e.detail, /oauth\.client_id/);
  assert.ok(e.headers.get('retry-after'), 'Retry-After');
  statuses = seen.map((s) => s[1]);
  assert.ok(statuses.length >= 3 && statuses.every((s) => s === 503), `statuses ${statuses}`);
  assert.ok(took >= 7.5 && took < 15, `gave up after ${took} s`);
  const persistent = { attempts: statuses.length, gave_up_after_s: Math.round(took * 10) / 10 };
  return { transient, persistent };
}

async function main() {
  const [mode, base, unconfigured] = process.argv.slice(2);
  const trim = (u) => u.replace(/\/+$/, '');
  let summary;
  if (mode === 'flow') {
    summary = await flow(trim(base));
  } else if (mode === 'retry') {
    summary = await retry(trim(base), trim(unconfigured));
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  console.log(JSON.stringify({ ok: true, ...summary }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
