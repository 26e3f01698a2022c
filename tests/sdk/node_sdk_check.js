// Drives the official Node SDK (@mollie/api-client, pinned in scripts/setup) through
// mollie-gateway's HTTPS listener, for tests/sdk_node.rs.
//
// Usage: node node_sdk_check.js GATEWAY_API_ENDPOINT CA_FILE
//   (GATEWAY_API_ENDPOINT like https://localhost:8443/v2/; NODE_PATH must reach the SDK)
//
// Same fixture as python_sdk_check.py: merchants m1/m2 with profiles pfl_m1/pfl_m2, m1's
// methods ideal+creditcard, m2's bancontact, the fake's pages capped at 2 payments, and
// `upstream.public_base_url` = the gateway. Any failure exits non-zero.
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const https = require('node:https');
const { createMollieClient } = require('@mollie/api-client');

// The README recipe. The SDK builds its own https.Agent (trusting only its bundled CA list) and
// has no option that adds a header to every request, so hand it an Agent subclass while the
// client is created: it sends the merchant header and trusts the gateway's CA.
function createGatewayClient({ apiEndpoint, merchantId, ca }) {
  const SdkAgent = https.Agent;
  https.Agent = class GatewayAgent extends SdkAgent {
    constructor(options) {
      super(ca ? { ...options, ca } : options);
    }
    addRequest(req, options) {
      req.setHeader('X-Merchant-Id', merchantId);
      return super.addRequest(req, options);
    }
  };
  try {
    // Passes the SDK's key check; the gateway drops it but reads its test_ prefix.
    return createMollieClient({ apiKey: 'test_gatewaygatewaygatewaygatewayga', apiEndpoint });
  } finally {
    https.Agent = SdkAgent;
  }
}

async function expectApiError(promise, statusCode, what) {
  try {
    await promise;
  } catch (e) {
    assert.equal(e.statusCode, statusCode, `${what}: ${e}`);
    return e;
  }
  throw new Error(`${what}: no error`);
}

async function main() {
  const [apiEndpoint, caFile] = process.argv.slice(2);
  const base = new URL(apiEndpoint).origin;
  const ca = fs.readFileSync(caFile, 'utf8');
  const profiles = { m1: 'pfl_m1', m2: 'pfl_m2' };
  const expectedMethods = { m1: ['ideal', 'creditcard'], m2: ['bancontact'] };
  const clients = {};
  const created = {};
  for (const m of Object.keys(profiles)) {
    clients[m] = createGatewayClient({ apiEndpoint, merchantId: m, ca });
    created[m] = [];
  }

  for (let i = 1; i <= 3; i++) {
    for (const [m, client] of Object.entries(clients)) {
      const p = await client.payments.create({
        amount: { currency: 'EUR', value: `${i}.00` },
        description: `${m} order ${i}`,
        redirectUrl: 'https://shop.example/return',
      });
      assert.match(p.id, /^tr_/);
      assert.equal(p.profileId, profiles[m], `${m}: profileId (gateway default)`);
      assert.equal(p.mode, 'test', `${m}: mode (testmode from the test_ key)`);
      assert.equal(p._links.self.href, `${base}/v2/payments/${p.id}`, `${m}: self link`);
      assert.ok(p.getCheckoutUrl().startsWith('https://www.mollie.com/checkout/'));
      created[m].push(p.id);
    }
  }

  const summary = {};
  for (const [m, client] of Object.entries(clients)) {
    const other = m === 'm1' ? 'm2' : 'm1';
    const got = await client.payments.get(created[m][0]);
    assert.equal(got.description, `${m} order 1`);
    await expectApiError(client.payments.get(created[other][0]), 404, `${m} reads ${other}'s payment`);

    // page(): cursor pagination (Node takes only the query of the `next` link here).
    const page1 = await client.payments.page({ limit: 2 });
    assert.equal(page1.length, 2);
    const page2 = await page1.nextPage();
    assert.equal(page2.length, 1);
    assert.equal(page2.nextPage, undefined);

    // iterate(): follows the absolute `_links.next.href`, so it must point at the gateway.
    const iterated = [];
    for await (const p of client.payments.iterate()) {
      iterated.push(p.id);
      if (iterated.length > 10) break;
    }
    assert.deepEqual(iterated, [...created[m]].reverse(), `${m}: iterate()`);
    assert.deepEqual([...page1, ...page2].map((p) => p.id), iterated, `${m}: page()`);

    const methods = (await client.methods.list()).map((meth) => meth.id);
    assert.deepEqual(methods, expectedMethods[m]);
    summary[m] = { payments: iterated, methods };
  }

  const nobody = createGatewayClient({ apiEndpoint, merchantId: 'nobody', ca });
  const e = await expectApiError(nobody.payments.get(created.m1[0]), 401, 'unknown merchant');
  assert.match(e.message, /nobody/);

  console.log(JSON.stringify({ ok: true, merchants: summary }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
